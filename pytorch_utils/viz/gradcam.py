"""GradCAM heatmaps (via pytorch-grad-cam) and an image | overlay grid.

Around pytorch-grad-cam's maths this adds what course notebooks kept getting wrong: choosing the layer by name,
in-place ReLUs (they break the backward hook), and putting the model back exactly as it was.
"""
from typing import List, Optional, Sequence, Tuple, Union

import matplotlib
import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.utils import eval_mode, model_device, unwrap_model
from pytorch_utils.viz.images import (PathLike, class_name, finish, image_grid, imshow, to_display, to_numpy,
                                      true_pred_title)

__all__ = ["gradcam", "plot_gradcam", "resolve_target_layer", "conv_layer_names", "overlay_heatmap", "CAM_METHODS"]

# Name -> class name in pytorch_grad_cam (all gradient-based: one forward/backward per batch).
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
               "layercam": "LayerCAM"}


def conv_layer_names(model: nn.Module) -> List[str]:
    """Dotted names (as in ``named_modules()``) of the model's Conv2d layers, in registration order."""
    return [name for name, m in unwrap_model(model).named_modules() if isinstance(m, nn.Conv2d)]


HOOK_POINTS = ("output", "input")  # what of the target module GradCAM explains: "name" = "name:output"


class _InputTap:
    """A target layer for pytorch-grad-cam that explains the module's *input*.

    pytorch-grad-cam only calls ``register_forward_hook`` and reads the hook's ``output``; handing it the input
    reaches tensors no module returns (a residual sum in ``forward``) without adding a module to the model.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def register_forward_hook(self, hook):
        def tap(module, args, output):
            hook(module, args, args[0])  # returns None: a non-None return would replace the module's output

        return self.module.register_forward_hook(tap)


def _resolve(base: nn.Module, target_layer) -> Tuple[str, nn.Module, str]:
    """``(spec, module, hook_point)`` for a target layer (see :func:`resolve_target_layer`)."""
    modules = dict(base.named_modules())
    if isinstance(target_layer, nn.Module):
        for name, m in modules.items():
            if m is target_layer:
                return name, m, "output"
        raise ConfigError("target_layer is a module that is not part of the model")
    spec = target_layer if target_layer is not None else getattr(base, "cam_layer", None)
    convs = conv_layer_names(base)
    if spec is None:
        if not convs:
            raise ConfigError(f"{type(base).__name__} has no Conv2d layer and no cam_layer; pass target_layer=")
        spec = convs[-1]
    spec = str(spec)
    name, _, point = spec.partition(":")
    point = point or "output"
    if point not in HOOK_POINTS:
        raise ConfigError(f"target layer {spec!r}: the part after ':' must be one of {HOOK_POINTS}, got {point!r}")
    if name not in modules or name == "":
        hint = ", ".join(repr(c) for c in convs[-5:]) or "none"
        raise UnknownNameError(f"unknown target layer {name!r} in {type(base).__name__}; "
                               f"last conv layers: {hint} (any name from model.named_modules() works, "
                               "optionally as 'name:input' to explain that module's input)")
    return spec, modules[name], point


def resolve_target_layer(model: nn.Module, target_layer: Union[str, nn.Module, None] = None) -> Tuple[str, nn.Module]:
    """``(name, module)`` GradCAM hooks: ``target_layer`` (a module of the model, or a dotted name), else
    ``model.cam_layer``, else the last Conv2d; wrappers (DataParallel, torch.compile) are looked through.

    A name may end in ``":input"`` (e.g. ``"pool:input"``) to explain the tensor going *into* that module, such as a
    residual sum computed in ``forward``; ``":output"`` is the bare name. The name is returned as given.
    Raises UnknownNameError when no module has that name; ConfigError for nothing to pick, a module not in the
    model, or another suffix.
    """
    spec, module, _ = _resolve(unwrap_model(model), target_layer)
    return spec, module


def _cam_class(method: str):
    import pytorch_grad_cam  # local: pulls in OpenCV; only GradCAM users should pay for it

    key = str(method).lower().replace("_", "").replace("-", "")
    key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
    if key not in CAM_METHODS:
        raise UnknownNameError(f"unknown CAM method {method!r}; valid methods: {', '.join(CAM_METHODS)}")
    return getattr(pytorch_grad_cam, CAM_METHODS[key])


def _as_batch(inputs) -> torch.Tensor:
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or not x.is_floating_point():
        raise ConfigError(f"gradcam expects normalized float inputs (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    return x


class _ClassTarget:
    """The logit of one class, like pytorch-grad-cam's ClassifierOutputTarget but range-checked (it raises a bare
    IndexError deep inside for a class the model does not have)."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        width = int(output.shape[-1])
        if not 0 <= self.category < width:
            raise ConfigError(f"GradCAM target class {self.category} is out of range: the model outputs {width} "
                              f"classes, so targets must be in [0, {width - 1}]")
        return output[..., self.category]


def gradcam(model: nn.Module, inputs, target_layer: Union[str, nn.Module, None] = None, targets=None,
            method: str = "gradcam", batch_size: int = 64) -> np.ndarray:
    """Class activation maps: float32 numpy (N, H, W) in [0, 1] for normalized float inputs (N, C, H, W) or (C, H, W).

    The model runs in eval mode with frozen parameters (gradients flow to the inputs) and out-of-place ReLUs; modes,
    ``requires_grad`` flags, ``.grad`` tensors and ReLU flags are restored and the hooks removed afterwards
    (functional in-place ops inside ``forward`` cannot be switched).

    Args:
        target_layer: see :func:`resolve_target_layer`. targets: a class per image, or one for all; None explains
            the predicted class. method: one of ``CAM_METHODS``. batch_size: images per forward/backward pass.
    Raises UnknownNameError for an unknown layer name or method, ConfigError for bad inputs or targets that do not fit.
    """
    base = unwrap_model(model)
    _, layer, point = _resolve(base, target_layer)
    hooked = _InputTap(layer) if point == "input" else layer
    cam_cls = _cam_class(method)
    x = _as_batch(inputs)
    n = len(x)
    if targets is not None:
        targets = to_numpy(targets).reshape(-1).astype(np.int64)
        if targets.size == 1 and n != 1:
            targets = np.repeat(targets, n)
        if len(targets) != n:
            raise ConfigError(f"{len(targets)} CAM targets for {n} images")
        if targets.size and targets.min() < 0:
            raise ConfigError(f"GradCAM target class {int(targets.min())} is negative; targets are class indices >= 0")
    bs = int(batch_size)
    if bs < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    if n == 0:
        return np.zeros((0,) + tuple(x.shape[-2:]), dtype=np.float32)
    device = model_device(base)
    params = list(base.parameters())
    # Inputs follow the model: its device, and its floating dtype (a .half() model gets half inputs).
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    saved = [(p.requires_grad, p.grad) for p in params]
    relus = [m for m in base.modules() if isinstance(m, nn.ReLU) and m.inplace]
    cam, maps = None, []
    with eval_mode(base):
        try:
            for m in relus:
                m.inplace = False
            for p in params:
                p.requires_grad_(False)
            cam = cam_cls(model=base, target_layers=[hooked])
            with torch.enable_grad():  # callers may be inside torch.no_grad()
                for start in range(0, n, bs):
                    xb = x[start:start + bs].detach().to(device=device, dtype=dtype).requires_grad_(True)
                    tb = None if targets is None else [_ClassTarget(c) for c in targets[start:start + bs]]
                    maps.append(np.asarray(cam(input_tensor=xb, targets=tb), dtype=np.float32))
        finally:
            if cam is not None:
                cam.activations_and_grads.release()  # remove the hooks now, not whenever the CAM is garbage-collected
            for m in relus:
                m.inplace = True
            for p, (flag, grad) in zip(params, saved):
                p.requires_grad_(flag)
                p.grad = grad
    return np.clip(np.concatenate(maps), 0.0, 1.0)


def overlay_heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Alpha-blend a [0, 1] heatmap (H, W), coloured with ``cmap``, over an (H, W, 3) image in [0, 1]."""
    colored = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3]
    img = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    return np.clip((1.0 - alpha) * img + alpha * colored, 0.0, 1.0).astype(np.float32)


def _to_model_input(images, mean, std) -> torch.Tensor:
    """Normalized float (N, C, H, W) tensor from model inputs as given, or from uint8 (N, H, W, C) images."""
    arr = images if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype in (np.uint8, torch.uint8):
        if mean is None or std is None:
            raise ConfigError("uint8 images need mean and std to be normalized for the model")
        x = to_display(arr)  # (N, H, W, C) in [0, 1]
        x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    return _as_batch(arr)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with eval_mode(model):
        return model(x.to(model_device(model))).argmax(dim=1).cpu().numpy()


def plot_gradcam(model: nn.Module, images, targets, preds, classes: Optional[Sequence[str]],
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, target: str = "pred",
                 target_layer: Union[str, nn.Module, None] = None, k: int = 8, save: Optional[PathLike] = None,
                 alpha: float = 0.5, method: str = "gradcam", title: Optional[str] = None) -> Figure:
    """For each of the first ``k`` images: the image and its GradCAM overlay, titled with true/pred labels.

    ``images`` are normalized float (N, 3, H, W) model inputs, or uint8 (N, H, W, 3) images normalized here with
    mean/std; ``preds`` None predicts them here; ``target`` "pred" or "true" is the class explained.
    """
    if target not in ("pred", "true"):
        raise ConfigError(f'target must be "pred" or "true", got {target!r}')
    x = _to_model_input(images, mean, std)
    n = min(int(k), len(x))
    if n < 1:
        raise ConfigError("plot_gradcam needs at least one image (k >= 1)")
    x = x[:n]
    targets_np = to_numpy(targets).reshape(-1)[:n].astype(np.int64)
    preds_np = _predict(unwrap_model(model), x) if preds is None else to_numpy(preds).reshape(-1)[:n].astype(np.int64)
    if len(targets_np) != n or len(preds_np) != n:
        raise ConfigError(f"need a target and a prediction for each of the {n} images")
    explained = preds_np if target == "pred" else targets_np
    maps = gradcam(model, x, target_layer=target_layer, targets=explained, method=method)
    shown = to_display(x, mean, std)

    # Image and overlay side by side, at most 4 pairs a row.
    fig, axes = image_grid(2 * n, 2 * min(n, 4), (1.8, 2.1), 0.3)
    for j in range(n):
        imshow(axes[2 * j], shown[j])
        true_pred_title(axes[2 * j], classes, targets_np[j], preds_np[j])
        imshow(axes[2 * j + 1], overlay_heatmap(shown[j], maps[j], alpha=alpha))
        axes[2 * j + 1].set_title(f"CAM for: {target} {class_name(classes, explained[j])}", fontsize=8)
    layer_name, _ = resolve_target_layer(model, target_layer)
    name, _, point = layer_name.partition(":")
    where = f"the input of layer '{name}'" if point == "input" else f"layer '{name}'"
    fig.suptitle(title or f"{method} on {where}", fontsize=10)
    return finish(fig, save)
