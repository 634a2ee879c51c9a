"""After training, the readers: ``load_run`` rebuilds a finished run's model with its classes, mean/std and input size
from a run folder or from a file written by :func:`pytorch_utils.exporting.export` (TorchScript or ONNX, with its
metadata JSON); ``predict`` gives top-k classes for images. The writer (``exporting``) imports from here, never back."""
import contextlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pytorch_utils.data.folders import image_extensions, to_rgb
from pytorch_utils.errors import CheckpointError, ConfigError, DatasetError
from pytorch_utils.io import PathLike
from pytorch_utils.train.tta import get_tta
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["LoadedRun", "load_run", "predict", "load_images", "as_loaded_run"]

log = logging.getLogger(__name__)

METADATA_KEYS = ("classes", "mean", "std", "input_size")


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


def _checked(meta: Dict[str, Any], what: str, redo: str) -> Dict[str, Any]:
    """The LoadedRun fields from a checkpoint's config or an export's metadata; CheckpointError (``what`` lacks ...:
    ``redo``) when one is missing."""
    missing = [k for k in METADATA_KEYS if meta.get(k) is None]
    if missing:
        raise CheckpointError(f"{what} lacks {', '.join(missing)} (class names, normalization, size): {redo}")
    return {"classes": [str(c) for c in meta["classes"]], "mean": tuple(meta["mean"]), "std": tuple(meta["std"]),
            "input_size": tuple(int(v) for v in meta["input_size"])}


def metadata_path(path: PathLike) -> Path:
    """The metadata JSON beside an exported model: its file name + ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextlib.contextmanager
def quiet_jit():
    """Hide torch >= 2.9's torch.jit deprecation notice: TorchScript files still load everywhere (C++, mobile)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
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
    else ``onnx.reference.ReferenceEvaluator`` (pure Python, slower, exact ONNX semantics)."""

    def __init__(self, path: PathLike):
        onnx = require_onnx()
        try:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except ImportError:
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(onnx.load(str(path)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._session.run(None, {"input": x.detach().cpu().float().numpy()})[0]))


def load_exported_model(path: Path) -> Tuple[Callable, str]:
    """(model, "onnx" or "torchscript") from a file written by ``export`` (on the CPU); CheckpointError otherwise."""
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path), "onnx"
    try:
        with quiet_jit():
            return torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a TorchScript model written by export ({exc}); pass a run "
                              "folder, or a .pt/.onnx file from export") from None


def _load_exported(path: Path) -> LoadedRun:
    meta_file = metadata_path(path)
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    fields = _checked(meta, f"{str(path)!r} has no metadata file {meta_file.name!r} beside it, or it",
                      "export the run again (export writes it), or pass the run folder")
    model, kind = load_exported_model(path)
    return LoadedRun(model=model, **fields, recipe=meta.get("recipe") or {}, source=path, weights=kind)


def load_run(out_dir: PathLike, which: Literal["best", "last"] = "best", device=None) -> LoadedRun:
    """A :class:`LoadedRun` (EMA weights when the run kept an EMA) from a run folder or an exported file.
    ``which``: "best" (``best.pt``, else the newest checkpoint) or "last"; ``device``: default CPU. Raises
    CheckpointError (no run, no intact checkpoint, another model, missing metadata) or ConfigError (ONNX extra)."""
    from pytorch_utils.models import create_model
    from pytorch_utils.train.checkpoints import latest_checkpoint, load_checkpoint, restore_model

    assert which in ("best", "last"), which
    path = Path(out_dir)
    if path.is_file():
        return _load_exported(path)
    best = path / "checkpoints" / "best.pt"
    ckpt = {**load_checkpoint(best), "_path": str(best)} if which == "best" and best.is_file() else \
        latest_checkpoint(path / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{str(path)!r} holds no training run with an intact checkpoint (not a run folder, or "
                              "the run stopped before its first epoch ended); pass the --out-dir / out_dir of a run, "
                              "e.g. runs/<recipe>, or train it (again) or resume it with --resume")
    config, source = ckpt.get("config") or {}, Path(ckpt["_path"])
    recipe, ema = config.get("recipe") or {}, ckpt.get("ema")
    fields = _checked(config, f"the checkpoint {str(source)!r}", "train the run again with this version")
    model = create_model(recipe.get("model") or ckpt.get("model_name"), num_classes=len(fields["classes"]),
                         **(recipe.get("model_kwargs") or {}))
    restore_model(model, {"model": ema["module"], "model_name": ckpt.get("model_name")} if ema else ckpt,
                  source=str(source))
    return LoadedRun(model=model.to(device or "cpu").eval(), **fields, recipe=recipe, source=source,
                     weights="ema" if ema else "model")


def as_loaded_run(model_or_run) -> LoadedRun:
    """A :class:`LoadedRun` from a LoadedRun, a path or a ``run_recipe`` result; ConfigError for a bare model."""
    if isinstance(model_or_run, LoadedRun):
        return model_or_run
    if isinstance(model_or_run, (str, Path)):
        return load_run(model_or_run)
    if hasattr(model_or_run, "eval_model") and hasattr(model_or_run, "classes"):  # a RunResult
        result = model_or_run
        return LoadedRun(model=result.eval_model, classes=list(result.classes), mean=tuple(result.mean),
                         std=tuple(result.std), input_size=tuple(result.input_size), recipe=result.recipe.to_dict(),
                         source=Path(result.out_dir), weights="model" if result.eval_model is result.model else "ema")
    raise ConfigError(f"expected a run folder, an exported file, load_run(...) or run_recipe(...)'s result, got "
                      f"{type(model_or_run).__name__}; a bare model carries no class names or normalization")


def _open_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return to_rgb(im)  # as the data loader does: 16-bit scaled to 8 bits, not clipped white
    except (UnidentifiedImageError, OSError, ValueError) as exc:  # a missing file too (FileNotFoundError)
        raise DatasetError(f"cannot read image {str(path)!r} ({type(exc).__name__}: {exc}); pass .jpg/.png "
                           "files or a folder of them") from None


def _as_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DatasetError(f"{what}: expected an image path, a folder, a PIL image or a uint8 array (H, W), "
                           f"(H, W, 3) or (H, W, 4), got {array.dtype} {tuple(array.shape)}")
    if array.ndim == 2 or array.shape[2] == 1:
        return np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
    return array[..., :3]  # RGBA: drop alpha, as PIL's convert("RGB") does


def load_images(inputs) -> Tuple[List[str], List[np.ndarray]]:
    """Names and uint8 RGB (H, W, 3) arrays for paths, folders (their images, by name), PIL images, uint8 arrays
    (one image or a batch (N, H, W, C)), or a list of those. Raises DatasetError for anything unreadable."""
    names: List[str] = []
    images: List[np.ndarray] = []
    for i, item in enumerate(inputs if isinstance(inputs, (list, tuple)) else [inputs]):
        if isinstance(item, (str, Path)):
            path = Path(item)
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in image_extensions()) \
                if path.is_dir() else [path]
            if not files:
                raise DatasetError(f"folder {str(path)!r} holds no images (any format Pillow reads)")
            names += [str(f) for f in files]
            images += [_open_image(f) for f in files]
        elif isinstance(item, Image.Image):
            names.append(f"image {i}")
            images.append(to_rgb(item))
        else:  # arrays; anything else is refused by _as_rgb
            item = np.asarray(item)
            batch = {f"image {i}.{j}": a for j, a in enumerate(item)} if item.ndim == 4 else {f"image {i}": item}
            names += list(batch)
            images += [_as_rgb(a, name) for name, a in batch.items()]
    return names, images


def _to_batch(run: LoadedRun, images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB images -> the normalized float32 batch (N, 3, H, W) the run's test transform produced."""
    from pytorch_utils.data.transforms import test_preset

    h, w = run.input_size
    resized = [im.shape[:2] for im in images if im.shape[:2] != (h, w)]
    if resized:
        sizes = ", ".join(sorted({f"{a}x{b}" for a, b in resized}))
        log.info(f"resized {len(resized)} of {len(images)} image(s) ({sizes}, HxW) to the training size {h}x{w}")
    # PIL's bilinear filter widens with the scale factor, so a large photo is averaged down, not aliased.
    images = [im if im.shape[:2] == (h, w) else np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
              for im in images]
    transform = test_preset(run.mean, run.std, size=h)  # the same normalization the run was tested with
    return torch.stack([transform(im) for im in images])


def predict(model_or_run, inputs, top_k: int = 5, tta=None, batch_size: int = 256) -> List[Dict[str, Any]]:
    """Top-k classes with probabilities for each image, converted as the run's test transform did (RGB, resized to
    the training size with a log note, normalized); a float tensor (N, 3, H, W) is taken as normalized input.
    ``model_or_run``: see :func:`as_loaded_run`; ``inputs``: see :func:`load_images`; ``tta``: as ``evaluate``'s
    (:func:`pytorch_utils.train.tta.get_tta`: None, "flip", "flip_translate": softmax averaged over the views).
    Returns one dict per image, in order: ``{"input", "classes", "probs", "index"}``, top_k each, most probable
    first. Raises DatasetError, ConfigError, UnknownNameError or CheckpointError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    forward, run = get_tta(tta) or (lambda model, x: model(x)), as_loaded_run(model_or_run)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        names, batch = [f"image {i}" for i in range(len(inputs))], inputs.float()
    else:  # uint8 tensors are images, as arrays are
        names, images = load_images(inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs)
        batch = _to_batch(run, images)
    model = run.model
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext(), torch.no_grad():
        device = model_device(model) if isinstance(model, nn.Module) else "cpu"
        # TTA as evaluate applies it: the mean softmax over the views, as log-probabilities.
        logits = torch.cat([forward(model, batch[i:i + batch_size].to(device)).float().cpu()
                            for i in range(0, len(batch), batch_size)])
    values, indices = F.softmax(logits, dim=1).topk(min(top_k, logits.shape[1]), dim=1)
    return [{"input": n, "classes": [run.classes[j] for j in idx.tolist()], "probs": v.tolist(),
             "index": idx.tolist()} for n, v, idx in zip(names, values, indices)]
