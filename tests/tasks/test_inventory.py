"""`lmms_var.tasks.inventory`: a data root's sources read as the tasks read them, and what they add up to."""

from lmms_var.tasks.data_root import BLINK_SUBTASKS, open_data_root
from lmms_var.tasks.inventory import take_inventory
from lmms_var.testing.spatial_data import write_hub_blink_root, write_spatial_root


def test_the_hub_export_shadows_the_blink_file_and_the_docs_add_up(tmp_path):
    write_spatial_root(tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=1, sat2_docs=3)
    write_hub_blink_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2)
    inventory = take_inventory(open_data_root(tmp_path))
    assert list(inventory.hub) == ["Counting"] and len(inventory.hub["Counting"].docs) == 2
    assert inventory.blink_jsonl_subtasks() == {"Counting": 1, "Jigsaw": 1}
    assert inventory.shadowed("Counting") and not inventory.shadowed("Jigsaw")
    assert inventory.usable_docs() == 2 + 1 + 3  # the Hub's Counting, the file's Jigsaw, SAT-2
    assert inventory.missing_subtasks() == [s for s in BLINK_SUBTASKS if s not in ("Counting", "Jigsaw")]
    assert inventory.problems == ()


def test_an_empty_source_is_a_problem_and_adds_no_docs(tmp_path):
    root = write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2)
    (root / "spatial_reasoning/blink/images/Counting_0_1.png").unlink()
    root.joinpath("spatial_reasoning/sat2_test").mkdir(parents=True, exist_ok=True)
    sat2 = open_data_root(root).sat2_jsonl
    sat2.write_text("")
    inventory = take_inventory(open_data_root(root))
    assert inventory.has_sat2 and inventory.sat2 is None
    assert inventory.usable_docs() == 1
    assert len(inventory.problems) == 2 and inventory.problems[-1] == f"{sat2} holds no records"
