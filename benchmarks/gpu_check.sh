#!/usr/bin/env bash
# One device session: versions, `lmms-var doctor`, the core and GPU tests (CUDA, the compiled Triton kernel, layers
# spread over two devices), then the GPU benchmark and the row kernel's cost per call.
# Usage: OUT=results_dir bash benchmarks/gpu_check.sh   (runs from the repository root, no install)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
# First, in under two minutes: every kernel variant a 3B/7B model uses, compiled and checked on this GPU.
python3 -m lmms_var.tools.cli doctor --output "$OUT/doctor.json" 2>&1 | tee "$OUT/doctor.log"
python3 -m pytest -q -p no:cacheprovider tests/core tests/patch/test_cuda.py tests/attention_maps/test_cuda.py tests/patch/test_row_kernels.py 2>&1 | tail -n 40 | tee "$OUT/tests.log"
python3 benchmarks/bench_var.py --preset gpu-3b --repeats "${REPEATS:-5}" ${BENCH_ARGS:-} --json "$OUT/bench_gpu_3b.json" 2>&1 | tee "$OUT/bench_gpu_3b.log"
python3 benchmarks/bench_row_kernels.py 2>&1 | tee "$OUT/row_kernels.log"
