"""`lmms_var.checks`: outputs, devices and layers checked before any work, each error naming the argument."""

import os
from pathlib import Path

import pytest
import torch

from lmms_var.checks import (
    check_device,
    check_layers,
    check_output_file,
    check_output_folder,
    device_or_default,
    probe_output_file,
    probe_output_folder,
)

# Where no one can create anything, not even root, whom permission bits let through (/proc's own
# entries are made by the kernel): the checks by permission pass it, only creating a file shows it.
UNCREATABLE = Path("/proc/nonexistent/out.jsonl")


def test_an_output_file_may_be_new_in_new_folders_which_are_not_created(tmp_path, a_file):
    deep = tmp_path / "x" / "y" / "out.json"
    assert check_output_file(deep, "--output") == deep and not (tmp_path / "x").exists()
    assert check_output_file(a_file, "--output") == a_file  # an existing file is overwritten


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("{tmp}", "--output {tmp} is a folder; give a file path"),
        ("{file}/x/out.json", "--output {file}/x/out.json cannot be created: {file} is a file, not a folder"),
    ],
)
def test_an_output_file_that_cannot_be_written_is_named(tmp_path, a_file, where, message):
    with pytest.raises(ValueError) as error:
        check_output_file(where.format(tmp=tmp_path, file=a_file), "--output")
    assert str(error.value) == message.format(tmp=tmp_path, file=a_file)


def test_an_output_folder(tmp_path, a_file):
    assert (
        check_output_folder(tmp_path / "new", "folder") == tmp_path / "new"
        and not (tmp_path / "new").exists()
    )
    with pytest.raises(ValueError, match=f"^folder {a_file} is a file; give a folder$"):
        check_output_folder(a_file, "folder")
    with pytest.raises(ValueError, match=f"^folder {a_file}/sub cannot be created: {a_file} is a file"):
        check_output_folder(a_file / "sub", "folder")


def test_probing_an_output_file_or_folder_makes_its_folders_and_keeps_what_is_there(tmp_path, a_file):
    deep = tmp_path / "x" / "y" / "out.jsonl"
    assert probe_output_file(deep, "diagnostics_path") == deep
    assert deep.parent.is_dir() and not deep.exists()  # made to see it can be, then removed
    a_file.write_text("kept")
    assert probe_output_file(a_file, "diagnostics_path") == a_file and a_file.read_text() == "kept"
    folder = tmp_path / "maps" / "run"
    assert probe_output_folder(folder, "attention_maps_path") == folder
    assert folder.is_dir() and list(folder.iterdir()) == []  # the scratch file is gone
    with pytest.raises(ValueError, match=f"^attention_maps_path {a_file} is a file; give a folder$"):
        probe_output_folder(a_file, "attention_maps_path")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_paths_no_one_can_create_fail_the_probes_naming_the_argument():
    if os.geteuid() == 0:  # root passes the permission-bit checks everywhere
        check_output_file(UNCREATABLE, "diagnostics_path")
    with pytest.raises(ValueError, match=f"^diagnostics_path {UNCREATABLE} cannot be"):
        probe_output_file(UNCREATABLE, "diagnostics_path")
    with pytest.raises(ValueError, match=f"^attention_maps_path {UNCREATABLE.parent} cannot be"):
        probe_output_folder(UNCREATABLE.parent, "attention_maps_path")


def test_devices(monkeypatch):
    assert check_device("cpu", "device") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a device; give cpu, cuda or cuda:N$"):
        check_device("gpu", "device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device 'cuda:0': this machine has no CUDA device; give cpu$"):
        check_device("cuda:0", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1", "device") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1$"):
        check_device("cuda:2", "device")


def test_a_device_left_out_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_or_default(None, "--device") == "cpu"
    assert device_or_default("auto", "--device") == "auto"  # accelerate's to spread
    with pytest.raises(ValueError, match=r"^--device 'cuda': this machine has no CUDA device; give cpu$"):
        device_or_default("cuda", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_or_default(None, "--device") == "cuda"
    assert device_or_default("cuda:0", "--device") == "cuda:0"


def test_layers_are_sorted_unique_decoder_layers():
    assert check_layers([3, 1, 3], 4) == [1, 3]
    for layers in ([], [4], [-1], [True], [1.0]):
        with pytest.raises(ValueError, match=r"layers must be decoder layers in \[0, 4\)"):
            check_layers(layers, 4)
