"""`lmms-var doctor`: is this machine ready to run VAR fast and exactly? (`lmms_var.patch.doctor`)

Prints versions, the GPU, and for every Triton kernel specialisation a 3B- and a 7B-shaped model
uses: whether it compiles, agrees with the PyTorch path on the device and never synchronises it;
whether SDPA's log-sum-exp shortcut is bit-identical there; VAR's cost on a random 3B-shaped model;
then a one-line verdict. Without a GPU it checks the CPU parts and compiles the kernels for A100
and H100, and says what it could not check.
"""

import argparse
import json
from pathlib import Path

from lmms_var.checks import check_output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that VAR's GPU kernels build and agree here, and what VAR costs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--device", help="torch device to check (default: the GPU, or the CPU without one)")
    parser.add_argument("--bench-repeats", type=int, default=2, help="timed repeats of the cost benchmark")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_file(args.output, "--output")
    from lmms_var.patch.doctor import NOT_CHECKED, OK, diagnose

    report = diagnose(args.device, bench_repeats=args.bench_repeats)
    print(
        "versions: "
        + ", ".join(f"{name} {version or 'not installed'}" for name, version in report.versions.items())
    )
    print(f"device: {report.device}")
    marks = {OK: "ok  ", NOT_CHECKED: "--  "}
    for finding in report.findings:
        print(f"{marks.get(finding.status, 'FAIL')} {finding.check}: {finding.detail}")
    print(f"({report.seconds:.0f} s)")
    print(report.verdict())
    if args.output is not None:
        args.output.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 1 if report.verdict().startswith("NOT READY") else 0
