"""The GPU check's CPU twin: ``check.py --plan`` and ``check.py --tiny`` as a subprocess, as on the GPU machine.

``--tiny`` runs every stage (tiny models, subsets of the zip beside the repo or synthetic data, one epoch) so the
script cannot rot between GPU runs. Caps are scaled: this asserts the stages' records, not the CPU's speed.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "benchmarks" / "device" / "check.py"
STAGES = "abcdefg"


def _records(stdout: str):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_plan_lists_every_stage_with_its_cap():
    proc = subprocess.run([sys.executable, str(CHECK), "--plan"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = _records(proc.stdout)
    caps = {r["stage"]: r["cap_s"] for r in records if "stage" in r}
    assert caps == {"a": 60, "b": 90, "c": 90, "d": 60, "e": 60, "f": 90, "g": 30}
    assert records[-1]["total_cap_s"] == 480


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("check")
    proc = subprocess.run([sys.executable, str(CHECK), "--tiny", "--cap-scale", "4", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    return proc, _records(proc.stdout), out


def _figures(records, stage):
    return {r["figure"]: r for r in records if r.get("stage") == stage and "figure" in r}


def test_tiny_runs_every_stage_ok(tiny):
    proc, records, _ = tiny
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = {r["stage"]: r for r in records if "status" in r}
    assert list(status) == list(STAGES)
    assert {k: s["status"] for k, s in status.items()} == dict.fromkeys(STAGES, "ok"), proc.stderr[-3000:]
    for stage in STAGES:
        env = _figures(records, stage)["environment"]
        assert env["device"].startswith("CPU") and env["data_source"] in ("zip", "npy", "synthetic")
        assert status[stage]["seconds"] <= status[stage]["cap_s"]


def test_tiny_stage_figures(tiny):
    _, records, _ = tiny
    a = _figures(records, "a")
    assert a["cuda_tests_failed"]["value"] == 0 and a["cuda_tests_skipped"]["value"] > 0  # no CUDA here
    assert _figures(records, "b")["notebook_strixbee_level1_s"]["note"] == "ok"
    c = _figures(records, "c")
    for key in ("s10_final_acc_tta", "s10_best_acc_tta", "s10_final_acc_no_tta"):
        assert 0.0 <= c[key]["value"] <= 100.0 and c[key]["unit"] == "%"
    assert c["s10_wall_s_from_process_start"]["value"] > c["s10_s_per_epoch"]["value"] > 0
    assert c["s10_peak_memory_gib"]["value"] is None and c["s10_peak_memory_gib"]["unit"] == "GiB"  # CPU
    d = _figures(records, "d")
    assert d["ratio_fast_2cpu_over_allcpu"]["value"] > 0 and d["ratio_fast_2cpu_over_allcpu"]["goal"] == "<= 1.05"
    assert d["epoch_train_s_dataloader_2cpu"]["note"] == "2 CPUs"
    e = _figures(records, "e")
    assert e["wrn_train_images_per_s"]["value"] > 0
    assert e["wrn_peak_memory_gib"]["value"] is None  # measured on CUDA only
    assert [e[f"wrn_epoch{i}_train_loss"]["note"].split(",")[0] for i in (1, 2, 3)] == \
        ["phase cyclic 32px", "phase cosine 36px", "phase cosine 40px"]
    f = _figures(records, "f")
    assert all(0.0 <= f[f"strixbee_l{n}_{k}_acc"]["value"] <= 100.0 for n in (1, 2, 3) for k in ("final", "best"))
    g = _figures(records, "g")
    assert g["s8_epochs_run"]["value"] == 2 and g["s8_epochs_run"]["note"] == "finite losses"
    assert g["s8_epoch2_train_loss"]["note"].startswith("phase reduced")


def test_tiny_writes_jsonl_and_markdown(tiny):
    _, records, out = tiny
    lines = [json.loads(x) for x in (out / "check.jsonl").read_text().splitlines()]
    assert lines == records[:-1]  # everything but the final "done" line
    summary = (out / "summary.md").read_text()
    assert "CPU twin" in summary and "| stage | status |" in summary
    for stage in STAGES:
        assert f"| {stage} | ok |" in summary
    assert "| c | s10_final_acc_tta |" in summary


def test_tiny_zips_the_s10_report_for_assets(tiny):
    _, records, out = tiny
    import zipfile

    with zipfile.ZipFile(out / "s10_report.zip") as archive:
        names = set(archive.namelist())
        run = json.loads(archive.read("run.json"))
    assert {"curves.png", "confusion_matrix.png", "misclassified.png", "per_class.md", "index.md"} <= names
    assert run["figures"]["epochs"] == 1 and "tiny CPU twin" in run["title"] and run["device"].startswith("CPU")
    assert _figures(records, "c")["s10_report_s"]["value"] > 0
    assert len(list(out.iterdir())) <= 7  # with check.log: within the 8 files the GPU machine returns


def test_fast_path_needs_no_albumentations():
    """The GPU machine's call 1 carries no albumentations: a GPU-loader recipe run must not import it."""
    code = ("import sys, tempfile\nfrom pytorch_utils.recipes import run_recipe\n"
            "run_recipe('s10', data='synthetic', out_dir=tempfile.mkdtemp(), device='cpu', progress=False,"
            " model='strixbee_l1', model_kwargs={}, train_limit=64, test_limit=32, epochs=1, batch_size=32,"
            " loader='gpu', lr_finder=None, tta=None,"
            " scheduler={'name': 'one_cycle_linear', 'params': {'peak_epoch': 0.2, 'max_lr': 1e-3, 'min_lr': 1e-4}})\n"
            "print(sorted(m for m in ('albumentations', 'torchsummary', 'pytorch_grad_cam') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _stages_module():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.device import stages

    return stages


def test_a_probe_still_running_at_the_cap_is_killed_and_keeps_what_it_printed(tmp_path):
    import time

    stages = _stages_module()
    ctx = stages.Context("f", True, "cpu", tmp_path, stages.resolve_data(), None, deadline=time.time() + 9.5)
    # The slow child starts a worker that inherits its stdout, as DataLoader workers do: stopping the child must
    # stop the worker too, else the wait would last as long as the worker.
    code = ("import json, subprocess, sys, time; print(json.dumps({'epoch': 1}), flush=True); print('{not json}');"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            "print(json.dumps({'worker': w.pid}), flush=True); time.sleep(120)")
    slow = stages._start([sys.executable, "-c", code])
    quick = stages._start([sys.executable, "-c", "print('{\"done\": true}')"])
    broken = stages._start([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.time()
    results = stages._wait_for(ctx, {"slow": slow, "quick": quick, "broken": broken})  # until 8 s before the cap
    assert time.time() - start < 5  # the worker holding the output open did not keep us waiting
    worker = results["slow"][0].pop()["worker"]
    assert results == {"slow": ([{"epoch": 1}], "stopped"), "quick": ([{"done": True}], "ok"),
                       "broken": ([], "failed")}
    _assert_gone(worker)  # stopped with its parent's process group


def test_kill_session_stops_a_stage_and_the_children_in_their_own_groups():
    sys.path.insert(0, str(CHECK.parent))
    import check

    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(120)'], process_group=0); print(p.pid, flush=True); time.sleep(120)")
    stage = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(stage.stdout.readline())
    check.kill_session(stage.pid)
    assert stage.wait(timeout=10) == -9
    _assert_gone(child)


def _assert_gone(pid: int) -> None:
    """``pid`` (not our child, so not ours to wait for) ends within 10 s: its /proc entry goes or turns zombie."""
    import time

    for _ in range(100):
        state = Path(f"/proc/{pid}/stat")
        try:
            if state.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} survived")


def test_history_so_far_reads_the_epochs_a_stopped_run_finished(tmp_path):
    from pytorch_utils.train.history import write_history

    stages = _stages_module()
    assert stages._history_so_far(str(tmp_path)) == {"epochs": 0, "test_acc": None, "best_acc": None,
                                                     "seconds": 0}
    write_history([{"epoch": 1, "test_acc": 40.0, "seconds": 2.25}, {"epoch": 2, "test_acc": 38.5, "seconds": 2.0}],
                  tmp_path)
    assert stages._history_so_far(str(tmp_path)) == {"epochs": 2, "test_acc": 38.5, "best_acc": 40.0,
                                                     "seconds": 4.2}


def test_stage_a_stopped_at_the_cap_reports_the_tests_it_finished(tmp_path, monkeypatch, capsys):
    import time

    stages = _stages_module()
    fake_repo = tmp_path / "repo"
    (fake_repo / "tests" / "cuda").mkdir(parents=True)
    (fake_repo / "tests" / "cuda" / "test_x.py").write_text(
        "import time\n\ndef test_quick():\n    assert True\n\ndef test_hangs():\n    time.sleep(120)\n\n"
        "def test_never_reached():\n    pass\n")
    monkeypatch.setattr(stages, "REPO", fake_repo)
    ctx = stages.Context("a", True, "cpu", tmp_path, stages.resolve_data(), None, deadline=time.time() + 8 + 6)
    stages.stage_a(ctx)
    figures = {r["figure"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert figures["cuda_tests_passed"]["value"] == 1 and figures["cuda_tests_failed"]["value"] == 0
    assert figures["cuda_tests_not_finished"]["value"] == 2
    assert figures["cuda_tests_not_finished"]["error"] == "pytest stopped at the stage cap after 1 tests"
