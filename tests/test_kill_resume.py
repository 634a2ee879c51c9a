"""A CLI run killed with SIGKILL at random moments resumes with --resume to exactly the uninterrupted result."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

ARGS = ["-m", "pytorch_utils", "train", "--recipe", "strixbee_l3", "--data", "synthetic", "--epochs", "3",
        "--train-limit", "128", "--test-limit", "64", "--batch-size", "32", "--num-workers", "0", "--no-progress",
        "--quiet", "--device", "cpu"]


def _run(out_dir, *extra):
    return subprocess.run([sys.executable, *ARGS, "--out-dir", str(out_dir), *extra], capture_output=True, text=True,
                          timeout=300)


def _strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    ref = _run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    ref_history = json.loads((tmp_path / "ref" / "history.json").read_text())
    ref_weights = torch.load(tmp_path / "ref" / "checkpoints" / "epoch-0003.pt", weights_only=True)["model"]

    rng = random.Random(1234)
    out = tmp_path / "killed"
    ckpts = out / "checkpoints"
    kills = 0
    for _ in range(2):  # kill twice at random moments after some progress
        proc = subprocess.Popen([sys.executable, *ARGS, "--out-dir", str(out),
                                 *(["--resume"] if any(ckpts.glob("epoch-*.pt")) else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = set(ckpts.glob("epoch-*.pt")) if ckpts.exists() else set()
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            now = set(ckpts.glob("epoch-*.pt")) if ckpts.exists() else set()
            if now - before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next epoch, maybe mid-write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
    assert kills >= 1, "the runs finished before any kill: the test would prove nothing"

    # A run killed while writing leaves at most a temporary file; an epoch file cut short (a disk that filled up)
    # is reported by name and the previous one is used.
    files = sorted(ckpts.glob("epoch-*.pt"))
    newest = files[-1]
    truncated = len(files) >= 2 and newest.name != "epoch-0003.pt"
    if truncated:
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    if truncated:
        assert "corrupt or truncated" in resumed.stderr and newest.name in resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert _strip(history) == _strip(ref_history)
    weights = torch.load(ckpts / "epoch-0003.pt", weights_only=True)["model"]
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert not list(ckpts.glob(".*.tmp"))  # no half-written leftovers
