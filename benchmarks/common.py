"""What the benchmark scripts share: device description, CUDA-synchronized timing, the JSON-line output and the
command-line options every script takes.

Every result is one JSON object on one line of stdout (and, with ``--out``, appended to a JSONL file), so a run's
output can be grepped, diffed and loaded with ``pandas.read_json(path, lines=True)``. The keys every record carries
are ``REQUIRED_KEYS``; a key that does not apply to a benchmark (e.g. ``test_acc`` of a throughput run) is null.
"""
import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]

# Keys present in every record, in this order at the start of the line (then the script's extras).
REQUIRED_KEYS = ("bench", "variant", "device", "data", "epochs", "wall_s", "wall_s_without_startup", "startup_s",
                 "test_acc")

# Variant names shared by the scripts: the GPU-resident pipeline, optionally compiled, or the albumentations
# DataLoader with N worker processes.
VARIANT_RE = re.compile(r"^(fast(?:-compile)?|dataloader-(\d+)w)$")


# --------------------------------------------------------------------------------------------- devices and timing


def usable_cpus() -> int:
    """CPUs this process may run on (respects ``taskset``/cgroup affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human name for ``device``: the GPU's name on CUDA, else the CPU with its usable core count."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    return f"CPU ({_cpu_model()}, {usable_cpus()} cores)"


def git_commit() -> Optional[str]:
    """The checkout's HEAD commit (with ``+dirty`` when tracked files differ, outside ``assets/``: a run's own plots
    are written there before this is read), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!assets"],
                               cwd=REPO, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> Dict[str, Any]:
    """Fields describing where a number was measured (added to every record of a run)."""
    env: Dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "cpus": usable_cpus(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "torch_threads": torch.get_num_threads(),
        "git": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
    return env


def process_age_s() -> Optional[float]:
    """Seconds since this process started (interpreter start-up and imports included), or None where it cannot be
    read. Linux: the start time in ``/proc/self/stat`` (clock ticks since boot, 10 ms resolution) against
    ``CLOCK_BOOTTIME``."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the line; 20th after "(comm)"
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if 0 <= age < 86400 else None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock read after it covers that work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` after synchronizing ``device``."""
    sync(device)
    return time.perf_counter()


@contextlib.contextmanager
def timed(device: torch.device, into: Dict[str, float], key: str) -> Iterator[None]:
    """Add the synchronized wall time of the ``with`` body to ``into[key]``."""
    start = clock(device)
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + clock(device) - start


def init_device(device: torch.device) -> float:
    """Create the CUDA context (and cuBLAS handle) before anything is timed; returns the seconds it took.

    A fresh notebook pays this once; it is reported separately (``cuda_init_s``) so that only the first variant of a
    run does not look slower because of it.
    """
    if device.type != "cuda":
        return 0.0
    start = time.perf_counter()
    torch.cuda.init()
    a = torch.ones(64, 64, device=device)
    (a @ a).sum().item()
    return time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory count (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated by tensors since the last reset, in GiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def release_memory(device: torch.device) -> None:
    """Collect garbage and return cached GPU blocks, so the next variant starts from a clean device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def amp_label(dtype: Optional[torch.dtype]) -> str:
    """"bf16" / "fp16" / "fp32" for an autocast dtype."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def median(values: List[float]) -> Optional[float]:
    """Median of a list of numbers (None when empty)."""
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


# --------------------------------------------------------------------------------------------- variants


def parse_variant(name: str) -> Tuple[str, Optional[int], bool]:
    """``"fast"`` / ``"fast-compile"`` / ``"dataloader-<N>w"`` -> ``(loader, num_workers, compile)``.

    Raises:
        SystemExit: an unknown name (argparse-style message listing the valid forms).
    """
    match = VARIANT_RE.match(name.strip())
    if not match:
        raise SystemExit(f"unknown variant {name!r}; use fast, fast-compile or dataloader-<N>w (e.g. dataloader-8w)")
    if match.group(2) is not None:
        return "dataloader", int(match.group(2)), False
    return "gpu", None, name.strip() == "fast-compile"


def split_variants(text: str) -> List[str]:
    """A comma-separated ``--variants`` value, validated."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise SystemExit("--variants is empty")
    for name in names:
        parse_variant(name)
    return names


# --------------------------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser, *, epochs: Optional[int], batch_size: Optional[int],
                    variants: str, cudnn_toggle: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark script takes (defaults per script).

    ``cudnn_toggle``: ``--cudnn-benchmark/--no-cudnn-benchmark`` with default None (the script decides: see
    :func:`apply_cudnn_benchmark`) instead of a plain ``--cudnn-benchmark`` switch.
    """
    parser.add_argument("--data", default="synthetic",
                        help="synthetic | cifar10 | cifar100 | path to a folder or zip laid out as "
                             "train|test/<class>/*.jpg (e.g. the JPEG CIFAR-10 zip); default %(default)s")
    parser.add_argument("--root", default="./data", help="torchvision CIFAR folder (for --data cifar10/cifar100)")
    if epochs is not None:
        parser.add_argument("--epochs", type=int, default=epochs, help="epochs per variant (default %(default)s)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="stratified subset of the training set (synthetic: its size, default 2000)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="stratified subset of the test set (synthetic: its size, default 500)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help="default %(default)s" if batch_size is not None else "default: the recipe's")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (default %(default)s)")
    parser.add_argument("--variants", default=variants,
                        help="comma-separated: fast, fast-compile, dataloader-<N>w (default %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the 'fast' variant")
    if cudnn_toggle:
        parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                            help="cuDNN autotuning (torch.backends.cudnn.benchmark) from the start; default on on "
                                 "CUDA, as the training engine (fit) does; --no-cudnn-benchmark measures without it")
    else:
        parser.add_argument("--cudnn-benchmark", action="store_true",
                            help="set torch.backends.cudnn.benchmark = True before anything runs (a recipe run "
                                 "turns it on anyway when training starts on CUDA)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every variant (default %(default)s)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return parser


def apply_cudnn_benchmark(option: Optional[bool], device: torch.device) -> str:
    """Set ``torch.backends.cudnn.benchmark`` from a ``--cudnn-benchmark`` option; returns the setting's label.

    None (no flag) means what the package's ``fit`` does: on for CUDA (label ``"auto-on"``), untouched elsewhere
    (``"auto-off"``, cuDNN is not used). True/False force it (``"on"``/``"off"``).
    """
    if option is None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            return "auto-on"
        return "auto-off"
    torch.backends.cudnn.benchmark = bool(option)
    return "on" if option else "off"


def resolve_bench_device(text: str) -> torch.device:
    """The device a benchmark runs on; a missing GPU is an error (a silent CPU fallback would give wrong numbers)."""
    from pytorch_utils.utils import resolve_device

    return resolve_device(None if text == "auto" else text, fallback=False)


def shortened(recipe, epochs: int, lr_sweep: Optional[int] = None):
    """``recipe`` (a ``pytorch_utils.recipes.Recipe``) run for ``epochs`` epochs. Fewer than its own: the smoke
    profile's scaling (``smoke_recipe``) of what the recipe counts in epochs (the schedules' epoch parameters, e.g.
    S10's One Cycle peak 5 of 24 -> 0.42 of 2, the phases, the early-stopping start), with the recipe's data sizes,
    batch size and workers kept, and its LR sweep unless ``lr_sweep`` (batches) is given. As many or more: the
    recipe itself with that many epochs."""
    from pytorch_utils.recipes import smoke_recipe

    if epochs >= recipe.epochs:
        return recipe.replace(epochs=epochs)
    short = smoke_recipe(recipe, recipe.data, epochs=epochs, train_limit=recipe.train_limit,
                         test_limit=recipe.test_limit, batch_size=recipe.batch_size,
                         lr_sweep=lr_sweep or getattr(recipe.lr_finder, "num_iter", 20))  # no finder: not used
    return short.replace(num_workers=recipe.num_workers)


def data_label(data: str) -> str:
    """The ``data`` field of a record: the name, or the file/folder name of a path."""
    if data.lower() in ("synthetic", "cifar10", "cifar100"):
        return data.lower()
    return Path(data).name


def data_description(data: str) -> str:
    """Words for the data in a title: the JPEG CIFAR-10 copy is named as such (its accuracies are 3-4 points below
    published CIFAR-10 numbers, so a figure must say which data it is on)."""
    label = data_label(data)
    if label == "cifar10-jpeg.zip":
        return "JPEG CIFAR-10 copy"
    return {"synthetic": "synthetic data", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(label, label)


# --------------------------------------------------------------------------------------------- output


def _clean(value: Any) -> Any:
    """JSON-ready: floats to 6 significant digits (NaN/inf -> null), tuples to lists, other objects to str."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _clean(value.item())
    return str(value)


def emit(record: Dict[str, Any], out: Optional[str] = None, stream=None) -> Dict[str, Any]:
    """Print ``record`` as one JSON line (required keys first, missing ones as null) and append it to ``out``.

    Args:
        record: the result; ``REQUIRED_KEYS`` are added as null when absent.
        out: optional JSONL file to append to (its folder is created).
        stream: where to print (default ``sys.stdout``).
    Returns:
        the record as written (rounded, ordered).
    """
    ordered = {k: record.get(k) for k in REQUIRED_KEYS}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    ordered = _clean(ordered)
    line = json.dumps(ordered)
    print(line, file=stream or sys.stdout, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
    return ordered


def note(text: str) -> None:
    """A progress line on stderr, so stdout holds only the JSON lines."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def log_package_to_stderr(quiet: bool = False) -> None:
    """Send the package's progress lines (the ``pytorch_utils`` logger) to stderr like :func:`note`, or silence them."""
    logger = logging.getLogger("pytorch_utils")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[bench] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
