"""model_cost and the benchmark script that prints it for every model."""
from benchmarks.model_costs import cost_rows, main


def test_cost_rows_hold_the_seed_counts():
    rows = {(r["model"], r["classes"]): r for r in cost_rows(["strixbee_l1", "s8_resnet"], [10, 100], images=10)}
    assert rows[("strixbee_l1", 10)]["params"] == 83_368
    assert rows[("s8_resnet", 100)]["params"] == 30_032_292
    s8 = rows[("s8_resnet", 100)]
    assert s8["train_macs_per_epoch"] == 3 * 10 * s8["macs"]
    assert rows[("s8_resnet", 10)]["macs"] < s8["macs"]  # only the head shrinks


def test_script_prints_one_line_per_model_and_class_count(capsys):
    assert main(["--models", "strixbee_l1", "strixbee_l2", "--num-classes", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "83,368" in lines[1] and "88,040" in lines[2]
