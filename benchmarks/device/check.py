"""The prepared GPU check: stages a-g, each in its own process under its own time cap, one JSON line per figure.

    python benchmarks/device/check.py --out DIR          # on the GPU machine (see benchmarks/device/README.md)
    python benchmarks/device/check.py --plan             # the stages and their caps, nothing run
    python benchmarks/device/check.py --tiny --out DIR   # the CPU twin: every stage, tiny settings (CI runs it)

Each stage runs as ``check.py --stage X`` in a new process session; past its cap the whole session (its own
subprocesses too) is killed, the stage is recorded as ``timeout`` and the next stage runs. Figures are JSON objects
``{"stage", "figure", "value", "unit", "goal", ...}`` on stdout, as the stage prints them; after each stage one
``{"stage", "status", "seconds", "cap_s", ...}`` line. ``DIR/check.jsonl`` gets every line and ``DIR/summary.md``
a table of both. Goals are reported beside the figures, never enforced: the exit status is 0 unless the script
itself breaks. This file imports only the standard library, so ``--plan`` works anywhere.
"""
import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Stage:
    """One stage of the check: its letter, time cap in seconds and what it measures."""

    key: str
    cap_s: int
    title: str


STAGES = (
    Stage("a", 60, "CUDA tests (tests/cuda): autocast bf16/fp16+GradScaler, channels_last, GPU loader, compile vs "
                   "eager, EMA, TTA, LR finder under autocast"),
    Stage("b", 90, "every notebook's code cells in order, smoke mode, on the check's device"),
    Stage("c", 90, "S10 recipe, full JPEG copy, 24 epochs, fast path: wall s from process start, s/epoch, "
                   "final/best/TTA acc"),
    Stage("d", 60, "one S10 epoch: DataLoader (2 workers) on 2 CPUs vs fast path on 2 and on all CPUs"),
    Stage("e", 60, "WRN-28-10 training img/s (fast path, bf16, channels_last, batch 128) + WRN recipe across "
                   "its phase boundaries"),
    Stage("f", 90, "Strixbee levels 1-3, full data, 50 epochs, fast path: final and best acc"),
    Stage("g", 30, "S8 recipe on a synthetic 100-class set across its phase boundary"),
)
TINY_NOTE = "tiny CPU twin: settings shrunk to seconds; figures prove the stage runs, not speed or accuracy"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for check.jsonl and summary.md")
    parser.add_argument("--plan", action="store_true", help="print the stages with their caps and exit")
    parser.add_argument("--tiny", action="store_true", help="every stage on the CPU with tiny settings")
    parser.add_argument("--stages", default="abcdefg", help="which stages to run, e.g. 'ac' (default all)")
    parser.add_argument("--device", default=None, help="device of the stages (default: cuda, or cpu with --tiny)")
    parser.add_argument("--cap-scale", type=float, default=1.0, help="multiply every cap (slow machines)")
    # Internal: the process of one stage, or one probe a stage starts (see stages.py).
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_plan(stages) -> None:
    """One JSON line per stage: key, cap, title; then the total of the caps."""
    for s in stages:
        print(json.dumps({"plan": True, "stage": s.key, "cap_s": s.cap_s, "title": s.title}))
    print(json.dumps({"plan": True, "total_cap_s": sum(s.cap_s for s in stages)}))


def parse_record(line: str) -> Optional[dict]:
    """The JSON object on an output line, or None (other text, or a printed dict that is not JSON)."""
    text = line.strip()
    try:
        record = json.loads(text) if text.startswith("{") else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _relay(stream, sink: List[dict], stage: str) -> None:
    """Echo a stage's stdout: JSON records are collected (tagged with the stage), other lines go to stderr."""
    for line in stream:
        text, record = line.strip(), parse_record(line)
        if record is not None:
            record.setdefault("stage", stage)
            sink.append(record)
            print(json.dumps(record), flush=True)
        elif text:
            print(f"[{stage}] {text}", file=sys.stderr, flush=True)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``: a stage (started as its session's leader) and its children, which
    it puts in process groups of their own so that it can stop them itself (Linux /proc; else the stage's group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            session = int(stat.read_text().rsplit(")", 1)[1].split()[3])  # after "pid (name)": state ppid pgrp sid
        except (OSError, IndexError, ValueError):
            continue
        if session == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)


def run_stage(stage: Stage, args: argparse.Namespace, cap_s: float) -> List[dict]:
    """Run one stage in a new process session under ``cap_s``; return its records plus the status record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage.key, "--device", args.device,
           "--t0", repr(time.time()), "--deadline", repr(time.time() + cap_s)] + (["--tiny"] if args.tiny else []) \
        + ["--out", str(args.out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    records: List[dict] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    reader = threading.Thread(target=_relay, args=(proc.stdout, records, stage.key), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=cap_s)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)  # the stage's own subprocesses (probes, notebooks, pytest) too
        rc, status = proc.wait(), "timeout"
    reader.join(timeout=5)
    errors = [r["error"] for r in records if r.get("error")]
    if status == "ok" and errors:
        status = "failed"
    status_record = {"stage": stage.key, "status": status, "seconds": round(time.perf_counter() - start, 2),
                     "cap_s": cap_s, "returncode": rc,
                     "figures": sum(r.get("figure", "environment") != "environment" for r in records),
                     "errors": errors[:5]}
    print(json.dumps(status_record), flush=True)
    return records + [status_record]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return "" if value is None else str(value)


def write_summary(path: Path, records: List[dict], args: argparse.Namespace) -> None:
    """The Markdown summary: environment, one row per stage (status, time, cap), one row per figure."""
    env = next((r for r in records if r.get("figure") == "environment"), {})
    lines = [f"# GPU check {'(--tiny: CPU twin)' if args.tiny else ''}".rstrip(), "",
             f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
             f"- device: {env.get('device', args.device)}; torch {env.get('torch', '?')}; "
             f"git {env.get('git', '?')}; cpus {env.get('cpus', '?')}",
             f"- data: {env.get('data', '?')}"]
    if args.tiny:
        lines.append(f"- {TINY_NOTE}")
    lines += ["", "| stage | status | seconds | cap s | figures | errors |", "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if "status" in r:
            errs = "; ".join(str(e).replace("|", "/")[:120] for e in r.get("errors") or [])
            lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['cap_s']} | {r['figures']} | {errs} |")
    lines += ["", "| stage | figure | value | unit | goal | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if "figure" in r and r["figure"] != "environment":
            lines.append(f"| {r['stage']} | {r['figure']} | {_fmt(r.get('value'))} | {r.get('unit') or ''} | "
                         f"{r.get('goal') or ''} | {str(r.get('note') or '').replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: ``--plan``, a stage/probe process, or the whole check (returns the exit status)."""
    args = parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    chosen = [s for s in STAGES if s.key in args.stages]
    if args.plan:
        print_plan(chosen)
        return 0
    if args.stage or args.probe:
        sys.path.insert(0, str(REPO))
        from benchmarks.device import stages  # torch and the package are imported here, not by the orchestrator

        return stages.child_main(args)
    args.out = (args.out or REPO / "runs" / "device-check").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    records: List[dict] = []
    for stage in chosen:
        records += run_stage(stage, args, stage.cap_s * args.cap_scale)
        with open(args.out / "check.jsonl", "w") as fh:  # rewritten after every stage: a killed run keeps the rest
            fh.writelines(json.dumps(r) + "\n" for r in records)
        write_summary(args.out / "summary.md", records, args)
    statuses: Dict[str, str] = {r["stage"]: r["status"] for r in records if "status" in r}
    print(json.dumps({"check": "done", "statuses": statuses, "out": str(args.out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
