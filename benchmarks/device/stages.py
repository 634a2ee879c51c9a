"""The stages of ``check.py``, one function each, run in their own process (``check.py --stage X``).

Each stage touches the package only through ``run_recipe`` (and ``evaluate`` / ``bench_wrn_throughput.main``),
inside one small function per call (``s10_run``, ``one_epoch`` ...), so that a change of those APIs is adapted in
one place. ``FULL`` and ``TINY`` hold every size a stage uses: the GPU run and its CPU twin differ only there.
"""
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.device.check import parse_record
from benchmarks.device.data import DataChoice, arrays_as_data, npy_used, resolve_data

REPO = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).resolve().parent / "check.py"

# Sizes per mode. Tiny: small models and subsets on the CPU, one epoch (two where a phase boundary is crossed).
# One S10 epoch with fixed LRs (LR_max of a typical finder run on this data) instead of a sweep: stage d times
# the epoch, not the finder. The peak where the recipe has it, 5 of 24 epochs, scaled to the one epoch.
_S10_FIXED = dict(lr_finder=None, tta=None, epochs=1, scheduler={
    "name": "one_cycle_linear", "params": {"peak_epoch": 5 / 24, "max_lr": 4e-3, "min_lr": 4e-4}})
FULL: Dict[str, Dict[str, Any]] = {
    "c": {},
    "d": dict(_S10_FIXED),
    "e_bench": ["--model", "wrn28_10", "--batch-size", "128", "--amp", "bf16", "--steps", "150", "--warmup", "25",
                "--train-limit", "8192"],
    "e": dict(train_limit=5000, test_limit=2000),
    "f": dict(),
    "g": dict(train_limit=4096, test_limit=1024),
    "notebooks": None,  # all of them
}
_SMALL = dict(model="strixbee_l1", model_kwargs={}, train_limit=256, test_limit=128, batch_size=64, epochs=1)
TINY: Dict[str, Dict[str, Any]] = {
    "c": dict(_SMALL, lr_sweep=20),  # the smoke profile's sweep: the recipe's 100 batches would be most of the stage
    "d": dict(_SMALL, **_S10_FIXED),
    "e_bench": ["--model", "wrn16_2", "--batch-size", "16", "--amp", "none", "--steps", "3", "--warmup", "1",
                "--train-limit", "256"],
    "e": dict(model="wrn16_2", model_kwargs={}, train_limit=64, test_limit=32, batch_size=32, tta="flip"),
    "f": dict(train_limit=128, test_limit=64, batch_size=64, epochs=1),
    "g": dict(model="wrn16_2", model_kwargs={}, train_limit=64, test_limit=32, batch_size=32),
    "notebooks": ["strixbee_level1.ipynb"],
}


@dataclasses.dataclass
class Context:
    """What every stage gets: mode, device, output folder, data choice and the record writer."""

    stage: str
    tiny: bool
    device: str
    out: Path
    data: DataChoice
    t0: Optional[float]
    deadline: Optional[float] = None  # time.time() at which the orchestrator kills this stage (its cap)

    def sizes(self, key: str):
        return (TINY if self.tiny else FULL)[key]

    def emit(self, figure: str, value, unit: Optional[str] = None, goal: Optional[str] = None,
             note: Optional[str] = None, **extra) -> None:
        """Print one figure as a JSON line (the orchestrator collects it)."""
        record = {"stage": self.stage, "figure": figure, "value": value, "unit": unit, "goal": goal, "note": note,
                  "tiny": self.tiny, **extra}
        print(json.dumps(record, default=str), flush=True)

    def recipe_kwargs(self, **overrides) -> Dict[str, Any]:
        """``run_recipe`` keyword arguments shared by the stages (out_dir: default a fresh temporary folder)."""
        # Not under self.out: that folder comes back from the GPU machine, checkpoints must not.
        out_dir = overrides.pop("out_dir", None) or tempfile.mkdtemp(prefix=f"check_{self.stage}_")
        return dict(data=self.data.data, out_dir=out_dir, device=self.device, progress=False, **overrides)


def environment(ctx: Context) -> Dict[str, Any]:
    """Device, versions, CPUs and data of this process (the first record of every stage)."""
    import torch

    from benchmarks import common

    device = torch.device(ctx.device)
    name = common.device_name(device) if device.type != "cuda" or torch.cuda.is_available() else "no CUDA device"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "git": common.git_commit(),
            "cpus": common.usable_cpus(), "data": ctx.data.description, "data_source": ctx.data.source,
            "decode_s": ctx.data.decode_s}


def _pct(value: Optional[float]) -> str:
    return "none yet" if value is None else f"{value:.2f} %"


def _acc_note(ctx: Context) -> str:
    return ctx.data.description if ctx.data.source != "synthetic" else "synthetic data: accuracy means nothing"


# ------------------------------------------------------------------------------------------------ child processes


def _start(cmd: List[str], **kwargs) -> subprocess.Popen:
    """Start a child in its own process group (so stopping it stops its workers too) with its stdout in a temporary
    file: no pipe to fill up while other children are waited for, or to be held open by a worker."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, text=True, process_group=0, **kwargs)
    proc.log = log
    return proc


def _communicate(ctx: Context, proc: subprocess.Popen, margin_s: float = 8.0) -> Tuple[str, str]:
    """``(stdout, status)`` of a :func:`_start` child: status "ok" or "failed" by its exit code, or "stopped" when
    it was still running ``margin_s`` before the stage's cap and was killed with its process group (what it printed
    until then is kept). Children waited for one after another share that one deadline."""
    try:
        proc.wait(timeout=max(0.0, ctx.deadline - margin_s - time.time()) if ctx.deadline else None)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "stopped"
    proc.log.seek(0)
    return proc.log.read(), status


def _json_lines(out: str) -> List[Dict[str, Any]]:
    """The JSON objects among a child's output lines (as the orchestrator reads a stage's)."""
    return [r for r in map(parse_record, out.splitlines()) if r is not None]


def _wait_for(ctx: Context, procs: Dict[Any, subprocess.Popen]) -> Dict[Any, Tuple[List[Dict[str, Any]], str]]:
    """``{name: (JSON records printed, status)}`` of children run side by side (status as :func:`_communicate`)."""
    results = {}
    for name, proc in procs.items():
        out, status = _communicate(ctx, proc)
        results[name] = (_json_lines(out), status)
    return results


# ------------------------------------------------------------------------------------------------ a: CUDA tests


def stage_a(ctx: Context) -> None:
    """Run tests/cuda with pytest; figures: passed / failed / skipped counts and the failing test ids. Counted from
    pytest's verbose lines, so a run stopped at the cap still reports the tests it finished (and which did not)."""
    import re

    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--junitxml={ctx.out / 'cuda_tests.xml'}",
           "tests/cuda"]
    proc = _start(cmd, cwd=REPO, stderr=subprocess.STDOUT)
    out, status = _communicate(ctx, proc)
    sys.stderr.write(out[-6000:])
    outcomes = dict(re.findall(r"^(tests/cuda/\S+?(?:\[.*?\])?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", out, re.M))
    failing = [test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")]
    counts = {"passed": sum(o in ("PASSED", "XPASS") for o in outcomes.values()), "failed": len(failing),
              "skipped": sum(o in ("SKIPPED", "XFAIL") for o in outcomes.values())}
    for key, n in counts.items():
        ctx.emit(f"cuda_tests_{key}", n, "tests", goal="0 failed" if key == "failed" else None,
                 note="; ".join(failing)[:500] if key == "failed" and failing else None)
    collected = re.search(r"collected (\d+) item", out)
    if status == "stopped":
        ctx.emit("cuda_tests_not_finished", int(collected.group(1)) - len(outcomes) if collected else None, "tests",
                 error=f"pytest stopped at the stage cap after {len(outcomes)} tests")
    elif proc.returncode not in (0, 5) and not (proc.returncode == 1 and failing):  # 5: nothing collected
        raise RuntimeError(f"pytest exited {proc.returncode}: {out[-300:]}")


# ------------------------------------------------------------------------------------------------ b: notebooks


def stage_b(ctx: Context) -> None:
    """Every notebook (tiny: one) run cell by cell by ``nbrun.py`` in smoke mode, all at once (one GPU, 16 CPUs);
    a notebook still running at the cap is reported with the cells it finished."""
    names = ctx.sizes("notebooks") or sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    env = dict(os.environ, PYTORCH_UTILS_SMOKE="1", MPLBACKEND="Agg")
    if ctx.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU twin: the notebooks must not find a GPU either
    procs = {name: _start([sys.executable, str(Path(__file__).parent / "nbrun.py"), name], cwd=REPO / "notebooks",
                          env=env) for name in names}
    for name, (lines, status) in _wait_for(ctx, procs).items():
        result = next((r for r in reversed(lines) if "status" in r), None)
        if result is None:  # stopped (or died) before its end: the last cell it finished
            done = next((r for r in reversed(lines) if "nbrun_cell" in r), {"nbrun_cell": 0, "seconds": None})
            result = {"status": status, "cells": done["nbrun_cell"], "cell": done["nbrun_cell"] + 1,
                      "seconds": done["seconds"], "error": f"{status} in this cell"}
        ctx.emit(f"notebook_{Path(name).stem}_s", result.get("seconds"), "s", goal="ok",
                 note=result["status"] if result["status"] == "ok" else
                 f"cell {result.get('cell')}: {result.get('error')}", cells=result.get("cells"),
                 error=None if result["status"] == "ok" else f"{name} cell {result.get('cell')}: {result.get('error')}")


# ------------------------------------------------------------------------------------------------ c: S10


def s10_run(ctx: Context, **overrides):
    """One S10 recipe run on the check's data (the fast path: loader="gpu"); ``epochs`` below the recipe's 24 scale
    its One Cycle peak as the smoke profile does (``common.shortened``, with ``lr_sweep`` batches of LR sweep if
    given), 24 (stage c on the GPU) run the recipe unchanged."""
    from benchmarks import common
    from pytorch_utils.recipes import get_recipe, run_recipe

    recipe = get_recipe("s10")
    recipe = common.shortened(recipe, overrides.pop("epochs", recipe.epochs), overrides.pop("lr_sweep", None))
    with arrays_as_data(ctx.data):
        return run_recipe(recipe, **ctx.recipe_kwargs(**dict({"loader": "gpu"}, **overrides)))


def accuracy_without_tta(result) -> float:
    """Test accuracy of the run's final model without test-time augmentation (the run's own figures use it)."""
    from pytorch_utils.train.loop import evaluate

    device = result.device
    metrics = evaluate(result.eval_model, result.test_loader, device=device, amp=result.recipe.amp,
                       channels_last=result.recipe.channels_last and device.type == "cuda", tta=None)
    return metrics["acc"]


def s10_report(ctx: Context, result, figures: Dict[str, Any]) -> Path:
    """The S10 run's ``viz.report`` (PNGs, per-class table, index) and a ``run.json`` of the stage's figures, zipped
    into ``<out>/s10_report.zip``: one file, as the GPU machine returns at most 8 (unzip it under ``assets/``)."""
    import shutil

    from benchmarks import common
    from pytorch_utils import viz
    from pytorch_utils.recipes import report_data

    folder = Path(tempfile.mkdtemp(prefix="s10_report_"))
    title = (f"s10: {ctx.data.description}, {len(result.history)} epochs, {common.device_name(result.device)}"
             f"{' (tiny CPU twin)' if ctx.tiny else ''}")
    viz.report(report_data(result, model=result.model), folder, title=title)
    record = {"title": title, "figures": figures, "recipe_fields": result.recipe.to_dict(), **environment(ctx)}
    (folder / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    # Zipped beside its final name, then renamed: a run killed while zipping leaves no truncated s10_report.zip.
    partial = Path(shutil.make_archive(str(ctx.out / "s10_report.partial"), "zip", folder))
    shutil.rmtree(folder, ignore_errors=True)
    return partial.replace(ctx.out / "s10_report.zip")


def probe_c(ctx: Context, spec: str) -> None:
    """``c:<out_dir>``: the S10 run; prints its figures as one JSON line, then writes the report and prints its
    seconds (figures first, so a report still running at the cap cannot lose them)."""
    import statistics

    from benchmarks import common

    result = s10_run(ctx, out_dir=spec.split(":", 1)[1], **ctx.sizes("c"))
    seconds = [r["seconds"] for r in result.history]
    figures = {"wall_s": time.time() - ctx.t0, "s_per_epoch": statistics.median(seconds), "epochs": len(seconds),
               "final_acc_tta": result.final["test_acc"], "best_acc_tta": result.final["best_test_acc"],
               "final_acc_no_tta": accuracy_without_tta(result), "npy_loads": npy_used(),
               "lr_max": result.lr_finder.lr_max if result.lr_finder else None,
               "peak_memory_gib": common.peak_memory_gib(result.device)}
    print(json.dumps({"figures": figures}), flush=True)
    start = time.perf_counter()
    archive = s10_report(ctx, result, dict(figures, data=_acc_note(ctx)))
    print(json.dumps({"report_s": time.perf_counter() - start, "report": archive.name}), flush=True)


def stage_c(ctx: Context) -> None:
    """S10, 24 epochs in a fresh process: wall seconds from its start, seconds per epoch, final / best (TTA) and
    no-TTA accuracy, then its report (``s10_report.zip``); a run stopped at the cap reports the epochs it finished."""
    out_dir = tempfile.mkdtemp(prefix="check_c_")
    lines, status = _wait_for(ctx, {"s10": _probe(ctx, f"c:{out_dir}")})["s10"]
    figures = next((r["figures"] for r in lines if "figures" in r), None)
    note = _acc_note(ctx)
    if figures is None and status == "failed":
        raise RuntimeError(next((r["error"] for r in lines if r.get("error")), "the S10 probe failed"))
    if figures is None:
        done = _history_so_far(out_dir)
        ctx.emit("s10_epochs_before_cap", done["epochs"], "epochs", goal=f"{ctx.sizes('c').get('epochs', 24)}",
                 note=f"last test acc {_pct(done['test_acc'])}, {done['seconds']} s of epochs; {note}",
                 error=f"S10 stopped at the stage cap after {done['epochs']} epochs")
        return
    decode = f"; call 1 decode {ctx.data.decode_s} s" if ctx.data.decode_s else ""
    ctx.emit("s10_wall_s_from_process_start", figures["wall_s"], "s", goal="<= 10 s on an H100" +
             (" (decode excluded: npy)" if ctx.data.source == "npy" else ""),
             note=f"data from {ctx.data.source}{decode}")
    ctx.emit("s10_s_per_epoch", figures["s_per_epoch"], "s", goal="seed: ~21 s on Colab",
             note=f"median of {figures['epochs']} epochs (train + test)")
    ctx.emit("s10_final_acc_tta", figures["final_acc_tta"], "%", goal=">= 91 % (JPEG copy)", note=note)
    ctx.emit("s10_best_acc_tta", figures["best_acc_tta"], "%", note=note)
    ctx.emit("s10_final_acc_no_tta", figures["final_acc_no_tta"], "%",
             goal="seed 90.98-92.63 % on CIFAR-10 (JPEG copy runs 3-4 points lower)", note=note)
    ctx.emit("s10_lr_max", figures["lr_max"], "lr", note="LR finder")
    ctx.emit("s10_peak_memory_gib", figures["peak_memory_gib"], "GiB", goal="fits Colab's T4 (15 GiB)",
             note="batch 512, tensors only, data on the GPU included (None off CUDA)")
    ctx.emit("s10_npy_loads", figures["npy_loads"], "loads",
             note="arrays decoded by call 1" if figures["npy_loads"] else "the zip was decoded in this process")
    report = next((r for r in lines if "report_s" in r), None)
    ctx.emit("s10_report_s", report and report["report_s"], "s",
             note=f"{report['report']}: unzip into assets/" if report else "not written",
             error=None if report else next((f"report: {r['error']}" for r in lines if r.get("error")),
                                            "the S10 report was not finished by the stage cap"))


# ------------------------------------------------------------------------------------------------ d: CPU count


def one_epoch(ctx: Context, loader: str, workers: Optional[int]) -> Dict[str, Any]:
    """One S10 epoch on ``loader`` (no LR finder, no TTA); its train seconds and whole-epoch seconds."""
    result = s10_run(ctx, **dict(ctx.sizes("d"), loader=loader, num_workers=workers))
    record = result.history[0]
    return {"train_s": record["train_seconds"], "epoch_s": record["seconds"], "test_acc": record["test_acc"]}


def probe_d(ctx: Context, spec: str) -> None:
    """``d:<loader>:<cpus>``: pin this process to the first ``cpus`` CPUs (0: all), then time one epoch."""
    _, loader, cpus = spec.split(":")
    allowed = sorted(os.sched_getaffinity(0))
    if int(cpus):
        os.sched_setaffinity(0, allowed[:int(cpus)])
    figures = one_epoch(ctx, loader, 2 if loader == "dataloader" else None)
    print(json.dumps(dict(figures, cpus=len(os.sched_getaffinity(0)), loader=loader)), flush=True)


def _probe(ctx: Context, spec: str) -> subprocess.Popen:
    """Start ``check.py --probe spec`` (a fresh process, so pinning happens before torch starts its threads)."""
    cmd = [sys.executable, str(CHECK), "--probe", spec, "--device", ctx.device, "--out", str(ctx.out),
           "--t0", repr(time.time())]
    return _start(cmd + (["--tiny"] if ctx.tiny else []), cwd=REPO)


def _history_so_far(out_dir: str) -> Dict[str, Any]:
    """Epochs, last test accuracy and seconds of a run stopped early, from the history.json it writes every epoch."""
    from pytorch_utils.train.history import read_history

    try:
        records = read_history(out_dir)
    except (OSError, ValueError):  # stopped before its first epoch ended
        records = []
    accs = [r["test_acc"] for r in records if r.get("test_acc") is not None]
    return {"epochs": len(records), "test_acc": accs[-1] if accs else None, "best_acc": max(accs, default=None),
            "seconds": round(sum(r["seconds"] for r in records), 1)}


def _probe_result(ctx: Context, proc: subprocess.Popen) -> Dict[str, Any]:
    out, status = _communicate(ctx, proc)
    lines = _json_lines(out)
    if status != "ok" or not lines:
        raise RuntimeError(f"probe {status} (exit code {proc.returncode})")
    return lines[-1]


def stage_d(ctx: Context) -> None:
    """The three epochs one after the other (not at once: they would share the GPU); epoch-time ratios."""
    runs = {}
    for name, spec in (("dataloader_2cpu", "d:dataloader:2"), ("fast_2cpu", "d:gpu:2"), ("fast_allcpu", "d:gpu:0")):
        runs[name] = _probe_result(ctx, _probe(ctx, spec))
        ctx.emit(f"epoch_train_s_{name}", runs[name]["train_s"], "s", note=f"{runs[name]['cpus']} CPUs")
    ctx.emit("ratio_fast_2cpu_over_allcpu", runs["fast_2cpu"]["train_s"] / runs["fast_allcpu"]["train_s"], "x",
             goal="<= 1.05", note=f"all = {runs['fast_allcpu']['cpus']} CPUs")
    ctx.emit("ratio_dataloader_over_fast_2cpu", runs["dataloader_2cpu"]["train_s"] / runs["fast_2cpu"]["train_s"],
             "x", note="how much the GPU pipeline saves on a Colab-sized CPU")


# ------------------------------------------------------------------------------------------------ e: WRN


def wrn_throughput(ctx: Context) -> Dict[str, Any]:
    """WRN training images/s of the fast path through ``benchmarks/bench_wrn_throughput.py`` (synthetic images)."""
    from benchmarks import bench_wrn_throughput

    argv = ctx.sizes("e_bench") + ["--variants", "fast", "--device", ctx.device]
    return bench_wrn_throughput.main(argv)[0]


def wrn_phases(ctx: Context):
    """The WRN recipe with its phases squeezed to one epoch each: every boundary (32 -> 36 -> 40 px) is crossed."""
    from pytorch_utils.recipes import get_recipe, run_recipe

    recipe = get_recipe("wrn_c10")
    phases = [dataclasses.replace(p, start=i + 1, end=i + 1) for i, p in enumerate(recipe.phases)]
    with arrays_as_data(ctx.data):
        return run_recipe(recipe, **ctx.recipe_kwargs(loader="gpu", phases=phases, epochs=len(phases),
                                                      **ctx.sizes("e")))


def stage_e(ctx: Context) -> None:
    """WRN-28-10 images/s, then the recipe across its phase boundaries (MixUp/CutMix, progressive resizing)."""
    bench = wrn_throughput(ctx)
    if bench.get("error"):
        raise RuntimeError(f"throughput: {bench['error']}")
    ctx.emit("wrn_train_images_per_s", bench["images_per_s"], "img/s", goal=">= 9,000 img/s on an H100",
             note=f"{bench.get('variant')}, batch {bench.get('batch_size')}, loader dtype {bench.get('loader_dtype')}")
    ctx.emit("wrn_peak_memory_gib", bench.get("peak_memory_gib"), "GiB", goal="fits Colab's T4 (15 GiB)",
             note="training at batch 128, tensors only (None off CUDA)")
    result = wrn_phases(ctx)
    for record in result.history:
        ctx.emit(f"wrn_epoch{record['epoch']}_train_loss", record["train_loss"], "loss",
                 note=f"phase {record.get('phase')}, {record['seconds']:.1f} s")
    ctx.emit("wrn_phases_test_acc", result.final["test_acc"], "%", note=_acc_note(ctx) + " (subset, 3 epochs)")


# ------------------------------------------------------------------------------------------------ f: Strixbee


def probe_f(ctx: Context, spec: str) -> None:
    """``f:<recipe>:<out_dir>``: one Strixbee recipe run on the fast path; its final/best accuracy and seconds."""
    from pytorch_utils.recipes import run_recipe

    _, name, out_dir = spec.split(":", 2)
    with arrays_as_data(ctx.data):
        result = run_recipe(name, **ctx.recipe_kwargs(loader="gpu", out_dir=out_dir, **ctx.sizes("f")))
    print(json.dumps({k: result.final[k] for k in ("test_acc", "best_test_acc", "best_epoch", "epochs_run",
                                                    "seconds", "parameters")}), flush=True)


def stage_f(ctx: Context) -> None:
    """The three levels at once (each is tiny for a GPU: run side by side they share it); a level still running at
    the cap reports the epochs it finished and its accuracy so far."""
    out_dirs = {level: tempfile.mkdtemp(prefix=f"check_f{level}_") for level in (1, 2, 3)}
    results = _wait_for(ctx, {level: _probe(ctx, f"f:strixbee_l{level}:{out_dirs[level]}") for level in out_dirs})
    goals = {1: "seed L1: 78 % test (original CIFAR-10)", 2: None, 3: None}
    for level, (lines, status) in results.items():
        if status == "failed" or (status == "ok" and not lines):
            error = next((r["error"] for r in lines if r.get("error")), "probe failed")
            ctx.emit(f"strixbee_l{level}_final_acc", None, "%", goal=goals[level], error=f"strixbee_l{level}: {error}")
            continue
        if status == "stopped":
            done = _history_so_far(out_dirs[level])
            ctx.emit(f"strixbee_l{level}_final_acc", done["test_acc"], "%", goal=goals[level],
                     note=f"STOPPED at the cap after {done['epochs']} epochs ({done['seconds']} s); {_acc_note(ctx)}",
                     error=f"strixbee_l{level} stopped at the stage cap after {done['epochs']} epochs")
            ctx.emit(f"strixbee_l{level}_best_acc", done["best_acc"], "%", note="so far")
            continue
        res = lines[-1]
        note = f"{_acc_note(ctx)}; {res['epochs_run']} epochs, {res['parameters']:,} params, {res['seconds']:.0f} s"
        ctx.emit(f"strixbee_l{level}_final_acc", res["test_acc"], "%", goal=goals[level], note=note)
        ctx.emit(f"strixbee_l{level}_best_acc", res["best_test_acc"], "%", note=f"epoch {res['best_epoch']}")


# ------------------------------------------------------------------------------------------------ g: S8


def s8_phases(ctx: Context):
    """The S8 recipe on synthetic 100-class data with its two phases squeezed to one epoch each."""
    from pytorch_utils.recipes import get_recipe, run_recipe

    recipe = get_recipe("s8_c100")
    phases = [dataclasses.replace(p, start=i + 1, end=i + 1) for i, p in enumerate(recipe.phases)]
    return run_recipe(recipe, **dict(ctx.recipe_kwargs(loader="gpu", phases=phases, epochs=len(phases),
                                                       early_stopping_start=None, num_classes=100,
                                                       **ctx.sizes("g")), data="synthetic"))


def stage_g(ctx: Context) -> None:
    """Both S8 phases ran, with finite losses (synthetic data: the accuracy is no CIFAR-100 figure)."""
    import math

    result = s8_phases(ctx)
    for record in result.history:
        ctx.emit(f"s8_epoch{record['epoch']}_train_loss", record["train_loss"], "loss",
                 note=f"phase {record.get('phase')}, {record['seconds']:.1f} s")
    losses = [r["train_loss"] for r in result.history]
    ctx.emit("s8_epochs_run", len(result.history), "epochs", goal="2 (both phases)",
             note="finite losses" if all(map(math.isfinite, losses)) else "NON-FINITE loss")


STAGE_FUNCTIONS = {"a": stage_a, "b": stage_b, "c": stage_c, "d": stage_d, "e": stage_e, "f": stage_f,
                   "g": stage_g}
PROBES = {"c": probe_c, "d": probe_d, "f": probe_f}


def child_main(args) -> int:
    """A stage's (or a probe's) process: emit the environment, run, emit an ``error`` record on failure."""
    import logging

    logging.getLogger("pytorch_utils").setLevel(logging.WARNING)  # stdout is for JSON records
    out = Path(args.out or tempfile.mkdtemp(prefix="check_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key = args.stage or args.probe.split(":")[0]
    ctx = Context(key, args.tiny, args.device, out, resolve_data(), args.t0, args.deadline)
    try:
        if args.probe:
            PROBES[key](ctx, args.probe)
        else:
            ctx.emit("environment", None, **environment(ctx))
            STAGE_FUNCTIONS[key](ctx)
    except Exception as exc:  # recorded, then the next stage runs (the orchestrator reads the error field)
        traceback.print_exc()
        print(json.dumps({"stage": key, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
        return 1
    return 0
