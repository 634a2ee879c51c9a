"""After training, the readers: ``load_run`` rebuilds a finished run's model with its classes, mean/std and input size
from a run folder or from a file written by :func:`pytorch_utils.exporting.export` (TorchScript or ONNX, with its
metadata JSON); ``predict`` gives top-k classes for images. The writer (``exporting``) imports from here, never back."""
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import reprlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from pytorch_utils.data.folders import image_extensions, open_image, to_rgb
from pytorch_utils.errors import CheckpointError, ConfigError, DatasetError, PytorchUtilsError
from pytorch_utils.io import PathLike, read_run_file
from pytorch_utils.train.tta import get_tta
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["LoadedRun", "load_run", "predict", "load_images", "as_loaded_run"]

log = logging.getLogger(__name__)

METADATA_KEYS = ("classes", "mean", "std", "input_size")
INPUT_SIZE_RANGE = (8, 1024)  # pixels per side a file's metadata may ask for (Phase.input_size's bounds)
METADATA_BYTES = 2**20  # bytes of an export's metadata JSON read at most (export writes a few KB)
# The operators of the ONNX exports of all registered models (torch.onnx dynamo, opset 20): any other is refused
ONNX_OPS = frozenset({"Add", "BatchNormalization", "Conv", "Gemm", "MaxPool", "ReduceMean", "Relu", "Reshape"})
ONNX_VALUES = 2**28  # values an ONNX run may make, all kept by the reference evaluator (WRN-28-10: 8M per 32-px image)


@dataclass
class LoadedRun:
    """A trained model (eval mode; normalized float32 (N, 3, H, W) -> logits (N, classes)) with its class names,
    RGB mean/std on the [0, 1] scale, input size (H, W), recipe dict, source file and ``weights`` ("ema", "model",
    "torchscript" or "onnx")."""

    model: Callable
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    input_size: Tuple[int, int]
    recipe: Dict[str, Any] = field(default_factory=dict)
    source: Optional[Path] = None
    weights: str = "model"

    def metadata(self) -> Dict[str, Any]:
        return {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "input_size": list(self.input_size), "recipe": self.recipe}


def _numbers(value: Any, n: int, kind=(int, float)) -> bool:
    """``value`` is a list of ``n`` finite numbers of ``kind`` (booleans are not; integers within +-2**53)."""
    return isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(x, kind) and not isinstance(
        x, bool) and (abs(x) < 2**53 if isinstance(x, int) else math.isfinite(x)) for x in value)


def _json(value: Any) -> bool:
    """``value`` can be written as JSON: not nested past Python's limit, no circular reference, string keys."""
    try:
        return bool(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return False


def _checked(meta: Any, what: str, redo: str, head: Optional[int] = None, shape=None) -> Dict[str, Any]:
    """The LoadedRun fields from a checkpoint's config or an export's metadata, checked before anything is built from
    them: class names (strings; as many as the weights' ``head`` outputs when known), mean/std (3 numbers in [0, 1.5],
    std > 0), input size (2 integers in ``INPUT_SIZE_RANGE``; an ONNX graph's input ``shape`` ["batch", 3, H, W] when
    given). CheckpointError ("``what`` <problem>; ``redo``")."""
    classes, mean, std, size = values = [meta.get(k) for k in METADATA_KEYS] if isinstance(meta, dict) else [None] * 4
    missing, (low, high) = [k for k, v in zip(METADATA_KEYS, values) if v is None], INPUT_SIZE_RANGE
    problem = (f"lacks {', '.join(missing)} (class names, normalization, size)" if missing
               else "has classes that are not a list of names" if not isinstance(classes, (list, tuple))
               or not classes or not all(isinstance(c, str) for c in classes)
               else f"has {len(classes)} class names for weights with {head} outputs" if head and head != len(classes)
               else "needs mean and std of 3 finite numbers each on the [0, 1] scale, std > 0" if not (_numbers(mean, 3)
                   and _numbers(std, 3) and min(std) > 0 and 0 <= min(mean) and max(*mean, *std) <= 1.5)
               else f"needs an input_size of 2 integers from {low} to {high}" if not (
                   _numbers(size, 2, int) and all(low <= v <= high for v in size))
               else f"has input_size {list(size)} for a graph whose input is {shape}" if shape is not None and (
                   shape[1:] != [3, *size] or not isinstance(shape[0], str))
               else "has a recipe JSON cannot hold (too deep, circular, odd keys)" if not _json(meta.get("recipe"))
               else None)
    if problem:
        raise CheckpointError(f"{what} {problem} (got {reprlib.repr(dict(zip(METADATA_KEYS, values)))}); {redo}")
    return {"classes": list(classes), "mean": tuple(mean), "std": tuple(std), "input_size": tuple(size),
            "recipe": meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}}


def head_width(weights: Dict[str, Any]) -> Optional[int]:
    """Outputs of a state dict's classifier (every head is a Linear): its last 2-D tensor's first dimension, or None."""
    return next((int(t.shape[0]) for t in reversed(list(weights.values())) if getattr(t, "ndim", 0) == 2), None)


def metadata_path(path: PathLike) -> Path:
    """The metadata JSON beside an exported model: its file name + ``.json``."""
    return Path(f"{path}.json")


def fingerprint(path: Path) -> Optional[str]:
    """16 hex digits of a regular file's SHA-256, read 1 MiB at a time (None for no such file, a name too long, a
    file over 4 GiB: no checkpoint): which checkpoint an export came from."""
    if not os.path.isfile(path) or path.stat().st_size > 2**32:  # isfile: False, not OSError, for any name
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def quiet_jit():
    """Hide torch's TorchScript notices: the torch.jit deprecation (the files load everywhere), torch.load's on an
    archive (refused in one line), TracerWarnings (S10's shape check traced as a constant; export compares outputs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def require_onnx(exporting: bool = False):
    """The ``onnx`` module (and, to export, onnxscript); ConfigError naming the extra when one is missing."""
    try:
        import onnx
        if exporting:
            import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError('format="onnx" needs the onnx and onnxscript packages: pip install "pytorch_utils[onnx]"'
                          ) from None
    return onnx


class OnnxModel:
    """An ONNX file called like a model (float32 (N, 3, H, W) -> logits (N, C), CPU): onnxruntime when installed,
    else ``onnx.reference.ReferenceEvaluator`` (pure Python, exact). ``outputs``: logits per image (0: left open);
    ``input_shape``: ``["batch", 3, H, W]``; ``max_batch``: images per run within ``ONNX_VALUES``. ValueError, before
    anything runs, for a graph export never writes (over ``MAX_BYTES``, other operators or weights, shapes left open
    or over the bound)."""

    MAX_BYTES = 1536 * 2**20  # torch.onnx puts larger weights in a second ".data" file, which export does not write

    def __init__(self, path: PathLike):
        onnx = require_onnx()
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        if os.path.getsize(path) > self.MAX_BYTES:  # onnx.load reads it all into memory
            raise ValueError(f"it is over the {self.MAX_BYTES / 2**30:.1f} GiB export writes at most")
        proto = onnx.load(str(path), load_external_data=False)
        (graph_input,) = proto.graph.input  # one input: the images
        self.input_shape = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        alien = next((f"operator {':'.join(filter(None, (n.domain, n.op_type)))}" for n in proto.graph.node
                      if n.op_type not in ONNX_OPS or n.domain not in ("", "ai.onnx")), None) or (
                      "local functions" if proto.functions else "sparse weights" if
                      proto.graph.sparse_initializer else "weights in other files (external data)" if
                      any(map(uses_external_data, _get_all_tensors(proto))) else None)
        one = onnx.ModelProto.FromString(proto.SerializeToString())  # for one image, every size is a number
        one.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        del one.graph.value_info[:]  # inferred anew, not taken from the file
        graph = None if alien else onnx.shape_inference.infer_shapes(one, strict_mode=True).graph
        shapes = {v.name: v.type.tensor_type.shape for v in (*graph.value_info, *graph.output)
                  if v.type.tensor_type.HasField("shape")} if graph else {}
        values = sum(math.prod(max(d.dim_value, 0) for d in shapes[o].dim) or math.inf if o in shapes else math.inf
                     for n in one.graph.node for o in n.output)
        if alien or values > ONNX_VALUES:
            raise ValueError(f"it uses {alien}, which pytorch_utils exports never contain" if alien else
                             f"its tensors leave a shape open or hold over {ONNX_VALUES:,} values per image")
        self.max_batch, self._input = ONNX_VALUES // max(values, 1), graph_input.name
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        self.outputs = dims[-1].dim_value if dims else 0
        try:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        except ImportError:
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(proto)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._session.run(None, {self._input: x.detach().cpu().float().numpy()})[0]))


def _load_exported(path: Path, trust_code: bool) -> LoadedRun:
    """A file written by ``export``, on the CPU: metadata checked before the model is opened, TorchScript on trust,
    refused when the run it came from (a folder with a run.json) holds another checkpoint at the same path now."""
    meta_file, redo = metadata_path(path), "export the run again (export writes it), or pass the run folder"
    what = f"the metadata {str(meta_file)!r}" if meta_file.is_file() else \
        f"{str(path)!r} has no metadata file {meta_file.name!r} beside it, or it"
    try:
        meta = json.loads(read_run_file(meta_file, METADATA_BYTES)) if meta_file.is_file() else {}
    except (ValueError, RecursionError) as exc:  # too long, not UTF-8 JSON, or nested past Python's limit
        raise CheckpointError(f"{what} is not readable JSON of at most {METADATA_BYTES:,} bytes "
                              f"({type(exc).__name__}); {redo}") from None
    _checked(meta, what, redo)  # before the model file is opened
    source = meta.get("checkpoint") if isinstance(meta.get("checkpoint"), dict) else {}
    ckpt = path.parent / str(source.get("path"))  # its run: the export's own folder for export --run R
    if source and os.path.isfile(ckpt.parent.parent / "run.json") and fingerprint(ckpt) != source.get("sha256"):
        raise CheckpointError(f"{str(path)!r} was exported from {str(ckpt)!r}, changed since: export the run again")
    if source and not os.path.isfile(ckpt.parent.parent / "run.json"):  # a shared file: used, but not vouched for
        log.warning(f"{str(path)!r} was exported from {str(ckpt)!r}, which is not here: it cannot be "
                    "checked against its run (export again from the run folder if you have it)")
    kind = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
    if kind == "onnx":
        require_onnx()  # a missing extra is a ConfigError, not a broken file
    elif not trust_code:
        raise CheckpointError(f"{str(path)!r} is TorchScript, a program that runs when loaded: pass trust_code=True "
                              "only for a file you trust; the run folder (weights-only) or an ONNX export are safe")
    try:
        with quiet_jit():
            model = OnnxModel(path) if kind == "onnx" else torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # protobuf, onnx, onnxruntime and torch.jit raise many types; the message is what helps
        raise CheckpointError(f"{str(path)!r} is no {kind} model written by export ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}); export the run again") from None
    head = (model.outputs or None) if kind == "onnx" else head_width(model.state_dict())
    shape = model.input_shape if kind == "onnx" else None
    return LoadedRun(model=model, **_checked(meta, what, redo, head, shape), source=path, weights=kind)


def _from_checkpoint(ckpt: Dict[str, Any], where: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """(model with the weights, LoadedRun fields) from a loaded checkpoint. Its config is checked against bounds and
    the weights, its model built and run at its input size on the meta device and compared with the weights first: no
    large allocation."""
    from pytorch_utils.models import create_model
    from pytorch_utils.train.checkpoints import check_model_name, restore_model

    ema, redo = ckpt.get("ema"), "train the run again with this version"
    weights = ema.get("module") if isinstance(ema, dict) else ckpt["model"]
    weights = weights if isinstance(weights, dict) else {}  # then nothing fits, below
    fields = _checked(ckpt.get("config"), where, redo, head=head_width(weights))
    recipe, n = fields["recipe"], len(fields["classes"])
    name, kwargs = recipe.get("model") or ckpt.get("model_name"), recipe.get("model_kwargs") or {}
    check_model_name(ckpt, name, where)
    try:  # an unknown name, a kwarg out of its bounds or of a wrong type, an input size the model cannot take
        with torch.device("meta"):
            (probe := create_model(name, num_classes=n, **kwargs).eval())(torch.empty(1, 3, *fields["input_size"]))
    except (PytorchUtilsError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: its config's model cannot be built or take its input_size "
                              f"({str(exc)[:300]}); {redo}") from None
    shapes = {k: t.shape for k, t in probe.state_dict().items()}
    if shapes != {k: getattr(t, "shape", None) for k, t in weights.items()}:
        raise CheckpointError(f"{where}: its config's model {name!r} {reprlib.repr(kwargs)} does not fit its weights")
    model = create_model(name, num_classes=n, **kwargs)
    restore_model(model, {"model": weights, "model_name": ckpt.get("model_name")}, source=where)
    return model, {**fields, "weights": "ema" if isinstance(ema, dict) else "model"}


def load_run(out_dir: PathLike, which: Literal["best", "last"] = "best", device=None,
             trust_code: bool = False) -> LoadedRun:
    """A :class:`LoadedRun` (EMA weights if kept) from a run folder or an exported file. ``which``: "best" (``best.pt``,
    else the newest checkpoint) or "last"; ``device``: default CPU; ``trust_code``: also load TorchScript, a program
    that runs when loaded (only from someone you trust). Raises CheckpointError (no intact checkpoint, another model,
    metadata out of bounds or not fitting the weights or graph, untrusted TorchScript, an ONNX graph export never
    writes, a stale export: the checkpoint it came from changed since, its run still there) or ConfigError."""
    from pytorch_utils.train.checkpoints import latest_checkpoint, load_checkpoint

    assert which in ("best", "last"), which
    path = Path(out_dir)
    if path.is_file():
        return _load_exported(path, trust_code)
    best = path / "checkpoints" / "best.pt"
    with quiet_jit():  # a TorchScript file as a checkpoint is refused in one line, without torch's notice
        ckpt = {**load_checkpoint(best), "_path": str(best)} if which == "best" and best.is_file() else \
            latest_checkpoint(path / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{str(path)!r} " + ("does not exist" if not path.exists() else "holds no training run "
                              "with an intact checkpoint (not a run folder, or it stopped in its first epoch)")
                              + "; pass a run folder (runs/<recipe>) or an exported file, or train it")
    source = Path(ckpt["_path"])
    try:
        model, fields = _from_checkpoint(ckpt, f"the checkpoint {str(source)!r}")
    except RecursionError:  # weights_only pickles may nest lists deeper than Python compares or prints
        raise CheckpointError(f"the checkpoint {str(source)!r} holds a config nested too deeply") from None
    return LoadedRun(model=model.to(device or "cpu").eval(), **fields, source=source)


def as_loaded_run(model_or_run, trust_code: bool = False) -> LoadedRun:
    """A :class:`LoadedRun` from a LoadedRun, a path (``trust_code``: see :func:`load_run`) or a ``run_recipe``
    result; ConfigError for a bare model."""
    if isinstance(model_or_run, LoadedRun):
        return model_or_run
    if isinstance(model_or_run, (str, Path)):
        return load_run(model_or_run, trust_code=trust_code)
    if hasattr(r := model_or_run, "eval_model") and hasattr(r, "classes"):  # a RunResult
        return LoadedRun(model=r.eval_model, classes=list(r.classes), mean=tuple(r.mean), std=tuple(r.std),
                         input_size=tuple(r.input_size), recipe=r.recipe.to_dict(), source=Path(r.out_dir),
                         weights="model" if r.eval_model is r.model else "ema")
    raise ConfigError(f"expected a run folder, an exported file, load_run(...) or run_recipe(...)'s result, got "
                      f"{type(model_or_run).__name__}; a bare model carries no class names or normalization")


def _as_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DatasetError(f"{what}: expected an image path, a folder, a PIL image, a uint8 array (H, W), (H, W, 3) "
                           f"or (H, W, 4) or a uint8 tensor (C, H, W), got {array.dtype} {tuple(array.shape)}")
    array = array.reshape(*array.shape[:2], -1)  # (H, W) -> (H, W, 1)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]  # RGBA: alpha dropped, as by PIL


def load_images(inputs) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, uint8 RGB (H, W, 3) array) for each image of paths, folders (their regular image files, by name: a FIFO
    or device would block), PIL images, uint8 arrays (one image or a batch (N, H, W, C)), uint8 tensors (C, H, W) or
    (N, C, H, W) as torchvision's ``read_image`` gives them, or a list of those, one at a time: a file is opened only
    when its turn comes. Raises DatasetError for anything unreadable, except a folder's files: one that cannot be
    read is skipped with a warning naming it."""
    for i, item in enumerate(inputs if isinstance(inputs, (list, tuple)) else [inputs]):
        if isinstance(item, (str, Path)):
            path = Path(item)
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in image_extensions() and p.is_file()) \
                if path.is_dir() else [path]
            if not files or path.exists() and not (path.is_dir() or path.is_file()):  # is_file: S_ISREG
                raise DatasetError(f"folder {str(path)!r} holds no images (.jpg, .png, .webp, .bmp, .gif, .tif)" if
                                   not files else f"{str(path)!r} is no regular file (a FIFO or device): pass images")
            for f in files:  # accepted formats only; the image is not kept once the caller has it
                try:
                    yield str(f), open_image(f)
                except DatasetError if path.is_dir() else () as exc:  # a folder's broken photo is named and skipped
                    log.warning(f"skipped: {exc}")
        elif isinstance(item, Image.Image):
            yield f"image {i}", to_rgb(item)
        else:  # arrays and tensors (channels first, torchvision's order); anything else is refused by _as_rgb
            tensor = isinstance(item, torch.Tensor) and item.ndim > 2
            item = item.movedim(-3, -1).cpu().numpy() if tensor else np.asarray(item)
            batch = {f"image {i}.{j}": a for j, a in enumerate(item)} if item.ndim == 4 else {f"image {i}": item}
            yield from ((name, _as_rgb(a, name)) for name, a in batch.items())


def _normalized(run: LoadedRun, images: Iterator[Tuple[str, np.ndarray]], resized: List[Tuple[int, int]]):
    """(name, normalized float32 (3, H, W)) per image, as the run's test transform made them: each resized to the
    training size as it comes (the full-size array is then released); the sizes changed are appended to ``resized``."""
    from pytorch_utils.data.transforms import test_preset

    h, w = run.input_size
    transform = test_preset(run.mean, run.std, size=h)  # the same normalization the run was tested with
    for name, im in images:
        if im.shape[:2] != (h, w):
            resized.append(im.shape[:2])
            # PIL's bilinear filter widens with the scale factor, so a large photo is averaged down, not aliased.
            im = np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
        yield name, transform(im)


def predict(model_or_run, inputs, top_k: int = 5, tta=None, batch_size: int = 256,
            trust_code: bool = False) -> List[Dict[str, Any]]:
    """Top-k classes with probabilities for each image, converted as the run's test transform did (RGB, resized to
    the training size with a log note, normalized); a float tensor (N, 3, H, W) is taken as normalized input.
    ``model_or_run``: :func:`as_loaded_run`; ``inputs``: :func:`load_images`, read one at a time (at most ``batch_size``
    resized images and 2**22 pixels in memory); ``tta``: as ``evaluate``'s (None, "flip", "flip_translate": softmax
    averaged over the views). Returns one dict per image, in order: ``{"input", "classes", "probs", "index"}``, top_k
    each, most probable first. Raises DatasetError, ConfigError, UnknownNameError or CheckpointError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    forward, run = get_tta(tta) or (lambda model, x: model(x)), as_loaded_run(model_or_run, trust_code)
    resized: List[Tuple[int, int]] = []
    floats = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()  # uint8 tensors are images, as arrays are
    items = ((f"image {i}", x) for i, x in enumerate(inputs.float())) if floats else \
        _normalized(run, load_images(inputs), resized)
    h, w = run.input_size
    model, results = run.model, []  # <= 50 MB of input at once; an ONNX file's own bound on the images per run
    chunk = max(1, min(batch_size, 2**22 // (h * w), getattr(model, "max_batch", batch_size)))
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext(), torch.no_grad():
        device = model_device(model) if isinstance(model, nn.Module) else "cpu"
        while batch := list(itertools.islice(items, chunk)):
            names, x = zip(*batch)
            # TTA as evaluate applies it: the mean softmax over the views, as log-probabilities.
            logits = forward(model, torch.stack(x).to(device)).float().cpu()
            problem = (f"logits of shape {tuple(logits.shape)} for {len(run.classes)} class names; export the run "
                       "again" if logits.ndim != 2 or logits.shape[1] != len(run.classes)  # ONNX may leave it open
                       else "NaN or infinite logits (its training diverged): use an earlier checkpoint (which='last' "
                       "or an epoch file), or train again" if not logits.isfinite().all() else None)
            if problem:
                raise CheckpointError(f"{str(run.source)!r} gives {problem}")
            values, indices = F.softmax(logits, dim=1).topk(min(top_k, logits.shape[1]), dim=1)
            results += [{"input": n, "classes": [run.classes[j] for j in idx.tolist()], "probs": v.tolist(),
                         "index": idx.tolist()} for n, v, idx in zip(names, values, indices)]
    if not results:
        raise DatasetError("no image could be read (the files skipped are named above)")
    if resized:
        sizes = ", ".join(sorted({f"{a}x{b}" for a, b in resized})[:8])
        log.info(f"resized {len(resized)} of {len(results)} image(s) ({sizes}, HxW) to the training size {h}x{w}")
    return results
