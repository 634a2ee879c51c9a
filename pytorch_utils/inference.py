"""After training: ``load_run`` rebuilds a finished run's model with its classes, mean/std and input size; ``predict``
gives top-k classes for images. Both also take a file written by :func:`pytorch_utils.exporting.export`."""
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pytorch_utils.data.folders import image_extensions, to_rgb
from pytorch_utils.errors import CheckpointError, ConfigError, DatasetError, PytorchUtilsError
from pytorch_utils.io import PathLike
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["LoadedRun", "load_run", "predict", "load_images", "as_loaded_run"]

log = logging.getLogger(__name__)

METADATA_KEYS = ("classes", "mean", "std", "input_size")


@dataclass
class LoadedRun:
    """A trained model (eval mode; normalized float32 (N, 3, H, W) -> logits (N, classes)) with its class names,
    RGB mean/std on the [0, 1] scale, input size (H, W), recipe dict, source file, ``weights`` ("ema", "model",
    "torchscript" or "onnx") and ``notes`` on metadata recovered rather than read (older runs)."""

    model: Callable
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    input_size: Tuple[int, int]
    recipe: Dict[str, Any] = field(default_factory=dict)
    source: Optional[Path] = None
    weights: str = "model"
    notes: List[str] = field(default_factory=list)

    @classmethod
    def from_metadata(cls, model: Callable, meta: Dict[str, Any], **kwargs) -> "LoadedRun":
        return cls(model=model, classes=[str(c) for c in meta["classes"]], mean=tuple(meta["mean"]),
                   std=tuple(meta["std"]), input_size=tuple(int(v) for v in meta["input_size"]), **kwargs)

    def metadata(self) -> Dict[str, Any]:
        return {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "input_size": list(self.input_size), "recipe": self.recipe}


def _pick_checkpoint(out_dir: Path, which: str) -> Dict[str, Any]:
    from pytorch_utils.train.checkpoints import latest_checkpoint, load_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    if not ckpt_dir.is_dir() and not (out_dir / "run.json").is_file():
        raise CheckpointError(f"{str(out_dir)!r} holds no training run (no run.json, no checkpoints/); pass the "
                              "--out-dir / out_dir of a run, e.g. runs/<recipe>")
    best = ckpt_dir / "best.pt"
    if which == "best" and best.is_file():
        return {**load_checkpoint(best), "_path": str(best)}
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None:
        raise CheckpointError(f"the run in {str(out_dir)!r} has no intact checkpoint yet (it stopped before its "
                              "first epoch ended); train it (again) or resume it with --resume")
    return ckpt


def _recover_metadata(config: Dict[str, Any], out_dir: Path, notes: List[str]) -> Dict[str, Any]:
    """Classes, mean/std and input size from the checkpoint, else ``run.json``, else the run's data set (older runs)."""
    from pytorch_utils.data.datasets import DATASET_STATS, load_datasets

    meta = {k: config[k] for k in METADATA_KEYS if config.get(k) is not None}
    run_json = out_dir / "run.json"
    if len(meta) < len(METADATA_KEYS) and run_json.is_file():
        saved = json.loads(run_json.read_text(encoding="utf-8"))
        meta.update({k: saved[k] for k in METADATA_KEYS if k not in meta and saved.get(k) is not None})
    missing = [k for k in METADATA_KEYS if k not in meta]
    if not missing:
        return meta
    recipe, data = config.get("recipe") or {}, str(config.get("data") or "")
    try:
        if data.lower() in DATASET_STATS:
            mean, std, classes = DATASET_STATS[data.lower()]
            found = {"classes": classes, "mean": mean, "std": std, "input_size": (32, 32)}
        else:
            train, test = load_datasets(data, train_limit=recipe.get("train_limit"), seed=recipe.get("seed", 0),
                                        test_limit=1, num_classes=recipe.get("num_classes"))
            found = {"classes": train.classes, "mean": train.mean, "std": train.std, "input_size": test.image_size}
    except PytorchUtilsError as exc:
        raise CheckpointError(f"the run in {str(out_dir)!r} was saved without {', '.join(missing)} and its data "
                              f"{data!r} cannot be read to recover them ({exc}); put the data back where it was "
                              "or retrain with this version") from None
    notes.append(f"{', '.join(missing)} recovered from the data set {data!r} (the run predates saving them)")
    return {**{k: found[k] for k in missing}, **meta}


def load_run(out_dir: PathLike, which: str = "best", device=None) -> LoadedRun:
    """A :class:`LoadedRun` (EMA weights when the run kept an EMA) from a run folder or an exported file.
    ``which``: "best" (``best.pt``, else the newest checkpoint) or "last"; ``device``: default CPU. Raises
    CheckpointError (no run, no intact checkpoint, another model, unrecoverable metadata) or ConfigError."""
    from pytorch_utils.models import create_model
    from pytorch_utils.train.checkpoints import restore_model

    if which not in ("best", "last"):
        raise ConfigError(f'which must be "best" or "last", got {which!r}')
    path = Path(out_dir)
    if path.is_file():
        from pytorch_utils.exporting import load_exported

        return load_exported(path)
    if not path.is_dir():
        raise CheckpointError(f"run folder {str(path)!r} does not exist")
    ckpt = _pick_checkpoint(path, which)
    config = ckpt.get("config") or {}
    notes: List[str] = []
    meta = _recover_metadata(config, path, notes)
    recipe = config.get("recipe") or {}
    name = recipe.get("model") or ckpt.get("model_name")
    model = create_model(name, num_classes=len(meta["classes"]), **(recipe.get("model_kwargs") or {}))
    ema = ckpt.get("ema")
    weights = {"model": ema["module"], "model_name": ckpt.get("model_name")} if ema else ckpt
    restore_model(model, weights, source=ckpt["_path"])
    model.to(device or "cpu").eval()
    return LoadedRun.from_metadata(model, meta, recipe=recipe, source=Path(ckpt["_path"]),
                                   weights="ema" if ema else "model", notes=notes)


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
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {str(path)!r} ({type(exc).__name__}: {exc}); pass .jpg/.png "
                           "files or a folder of them") from None


def _as_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DatasetError(f"{what}: expected a uint8 image (H, W), (H, W, 3) or (H, W, 4), got {array.dtype} "
                           f"{tuple(array.shape)}")
    if array.ndim == 2 or array.shape[2] == 1:
        return np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
    return array[..., :3]  # RGBA: drop alpha, as PIL's convert("RGB") does


def load_images(inputs) -> Tuple[List[str], List[np.ndarray]]:
    """Names and uint8 RGB (H, W, 3) arrays for paths, folders (their images, by name), PIL images, uint8 arrays
    (one image or a batch (N, H, W, C)), or a list of those. Raises DatasetError for anything unreadable."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    names: List[str] = []
    images: List[np.ndarray] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix.lower() in image_extensions())
                if not files:
                    raise DatasetError(f"folder {str(path)!r} holds no images (any format Pillow reads)")
            elif path.exists():
                files = [path]
            else:
                raise DatasetError(f"image {str(path)!r} does not exist")
            names += [str(f) for f in files]
            images += [_open_image(f) for f in files]
        elif isinstance(item, Image.Image):
            names.append(f"image {i}")
            images.append(to_rgb(item))
        elif isinstance(item, np.ndarray):
            batch = {f"image {i}.{j}": a for j, a in enumerate(item)} if item.ndim == 4 else {f"image {i}": item}
            names += list(batch)
            images += [_as_rgb(a, name) for name, a in batch.items()]
        else:
            raise DatasetError(f"input {i}: expected an image path, a folder, a PIL image or a uint8 array, got "
                               f"{type(item).__name__}")
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


def predict(model_or_run, inputs, top_k: int = 5, tta: Optional[str] = None,
            batch_size: int = 256) -> List[Dict[str, Any]]:
    """Top-k classes with probabilities for each image, converted as the run's test transform did (RGB, resized to
    the training size with a log note, normalized); a float tensor (N, 3, H, W) is taken as normalized input.
    ``model_or_run``: see :func:`as_loaded_run`; ``inputs``: see :func:`load_images`; ``tta``: None or "flip"
    (softmax averaged with the mirror). Returns one dict per image, in order: ``{"input", "classes", "probs",
    "index"}``, top_k each, most probable first. Raises DatasetError, ConfigError or CheckpointError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    if tta not in (None, "none", "flip"):
        raise ConfigError(f'tta must be None or "flip", got {tta!r}')
    run = as_loaded_run(model_or_run)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        if inputs.ndim != 4 or inputs.shape[1] != 3:
            raise ConfigError(f"a tensor batch must be float (N, 3, H, W), got {tuple(inputs.shape)}")
        names, batch = [f"image {i}" for i in range(len(inputs))], inputs.float()
    else:
        if isinstance(inputs, torch.Tensor):  # uint8 tensors are images, as arrays are
            inputs = inputs.numpy()
        names, images = load_images(inputs)
        batch = _to_batch(run, images)
    probs = torch.cat([_probs(run.model, batch[i:i + batch_size], tta) for i in range(0, len(batch), batch_size)])
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [{"input": n, "classes": [run.classes[j] for j in idx.tolist()], "probs": v.tolist(),
             "index": idx.tolist()} for n, v, idx in zip(names, values, indices)]


def _probs(model: Callable, x: torch.Tensor, tta: Optional[str]) -> torch.Tensor:
    """Softmax probabilities (N, C) on the CPU (eval mode), optionally averaged with the mirrored images."""
    modes = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with modes, torch.no_grad():
        x = x.to(model_device(model) if isinstance(model, nn.Module) else "cpu")
        p = F.softmax(model(x).float(), dim=1)
        if tta == "flip":
            p = (p + F.softmax(model(torch.flip(x, dims=[3])).float(), dim=1)) / 2
    return p.cpu()
