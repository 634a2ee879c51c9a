"""GradCAM heatmaps (pytorch-grad-cam's own classes compute them; a test pins the maps to its ``GradCAM``) and an
image | overlay grid.

Around pytorch-grad-cam this adds what course notebooks kept getting wrong: choosing the layer by name, in-place
ReLUs (they break the backward hook), and putting the model back exactly as it was.
"""
from typing import List, Optional, Sequence, Tuple, Union

import matplotlib
import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.io import PathLike
from pytorch_utils.utils import eval_mode, model_device, unwrap_model
from pytorch_utils.viz.images import class_name, finish, image_grid, imshow, to_display, to_numpy, true_pred_title

__all__ = ["gradcam", "plot_gradcam", "resolve_target_layer", "conv_layer_names", "overlay_heatmap", "CAM_METHODS"]

# Name -> class name in pytorch_grad_cam (all gradient-based: one forward/backward per batch).
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
               "layercam": "LayerCAM"}


def conv_layer_names(model: nn.Module) -> List[str]:
    """Dotted names (as in ``named_modules()``) of the model's Conv2d layers, in registration order."""
    return [name for name, m in unwrap_model(model).named_modules() if isinstance(m, nn.Conv2d)]


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


def resolve_target_layer(model: nn.Module, target_layer: Union[str, nn.Module, None] = None) -> Tuple[str, nn.Module]:
    """``(name, module)`` GradCAM hooks: ``target_layer`` (a module of the model, or a dotted name), else
    ``model.cam_layer``, else the last Conv2d; wrappers (DataParallel, torch.compile) are looked through.

    A name may end in ``":input"`` (e.g. ``"pool:input"``) to explain the tensor going *into* that module, such as a
    residual sum computed in ``forward``; ``":output"`` is the bare name. The name is returned as given.
    Raises UnknownNameError (a KeyError) naming the last conv layers when no module has that name, the module is not
    in the model, there is nothing to pick, or the suffix is another.
    """
    base = unwrap_model(model)
    modules, convs = dict(base.named_modules()), conv_layer_names(base)
    if isinstance(target_layer, nn.Module):
        target_layer = next((n for n, m in modules.items() if m is target_layer), "<a module not in the model>")
    spec = str(target_layer if target_layer is not None else getattr(base, "cam_layer", convs[-1] if convs else ""))
    name, _, point = spec.partition(":")
    if name not in modules or name == "" or point not in ("", "input", "output"):
        hint = ", ".join(repr(c) for c in convs[-5:]) or "none"
        raise UnknownNameError(f"unknown target layer {spec!r} in {type(base).__name__}; last conv layers: {hint} "
                               "(or any name in model.named_modules(), as 'name:input' to explain that module's input)")
    return spec, modules[name]


class _ClassTarget:
    """The logit of one class, like pytorch-grad-cam's ClassifierOutputTarget but range-checked (it raises a bare
    IndexError deep inside for a class the model does not have, and silently wraps a negative one)."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        c, n = self.category, output.shape[-1]
        if not 0 <= c < n:
            raise ConfigError(f"GradCAM target class {c} is out of range: the model outputs {n} classes, [0, {n - 1}]")
        return output[..., c]


def gradcam(model: nn.Module, inputs, target_layer: Union[str, nn.Module, None] = None, targets=None,
            method: str = "gradcam", batch_size: int = 64) -> np.ndarray:
    """Class activation maps: float32 numpy (N, H, W) in [0, 1] for normalized float inputs (N, C, H, W) or (C, H, W).

    The model runs in eval mode with frozen parameters (gradients flow to the inputs) and out-of-place ReLUs; modes,
    ``requires_grad`` flags, ``.grad`` tensors and ReLU flags are restored and the hooks removed afterwards
    (functional in-place ops inside ``forward`` cannot be switched).

    Args:
        target_layer: see :func:`resolve_target_layer`. targets: a class per image, or one for all; None explains
            the predicted class. method: one of ``CAM_METHODS``. batch_size: images per forward/backward pass.
    Raises UnknownNameError for an unknown layer name or method, ConfigError for a target class the model does not
    have, ValueError for a number of targets that is neither 1 nor the number of images.
    """
    import pytorch_grad_cam  # local: pulls in OpenCV; only GradCAM users should pay for it

    base = unwrap_model(model)
    spec, layer = resolve_target_layer(base, target_layer)
    if method not in CAM_METHODS:
        raise UnknownNameError(f"unknown CAM method {method!r}; valid methods: {', '.join(CAM_METHODS)}")
    x = torch.as_tensor(inputs)
    x = x[None] if x.dim() == 3 else x
    targets = None if targets is None else np.broadcast_to(to_numpy(targets).reshape(-1).astype(np.int64), (len(x),))
    params = list(base.parameters())
    # Inputs follow the model: its device, and its floating dtype (a .half() model gets half inputs).
    device, dtype = model_device(base), next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    saved = [(p.requires_grad, p.grad) for p in params]
    relus = [m for m in base.modules() if isinstance(m, nn.ReLU) and m.inplace]
    cam, maps = None, [np.zeros((0,) + tuple(x.shape[-2:]), dtype=np.float32)]
    with eval_mode(base):
        try:
            for m in relus:
                m.inplace = False
            for p in params:
                p.requires_grad_(False)
            hooked = _InputTap(layer) if spec.endswith(":input") else layer
            cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(model=base, target_layers=[hooked])
            with torch.enable_grad():  # callers may be inside torch.no_grad()
                for start in range(0, len(x), batch_size):
                    xb = x[start:start + batch_size].detach().to(device=device, dtype=dtype).requires_grad_(True)
                    tb = None if targets is None else [_ClassTarget(c) for c in targets[start:start + batch_size]]
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


def plot_gradcam(model: nn.Module, images, targets, preds, classes: Optional[Sequence[str]],
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, target: str = "pred",
                 target_layer: Union[str, nn.Module, None] = None, k: int = 8, save: Optional[PathLike] = None,
                 alpha: float = 0.5, method: str = "gradcam", title: Optional[str] = None) -> Figure:
    """For each of the first ``k`` images: the image and its GradCAM overlay, titled with true/pred labels.

    ``images`` are normalized float (N, 3, H, W) model inputs, or uint8 (N, H, W, 3) images normalized here with
    mean/std; ``preds`` None predicts them here; ``target`` "pred" or "true" is the class explained.
    """
    if to_numpy(images[:1]).dtype == np.uint8:  # display images: normalize them for the model
        x = (to_display(images) - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    x = torch.as_tensor(images)[:k]
    n = len(x)
    targets_np = to_numpy(targets).reshape(-1)[:n].astype(np.int64)
    if preds is None:
        with eval_mode(model), torch.no_grad():
            preds = model(x.to(model_device(model))).argmax(dim=1)
    preds_np = to_numpy(preds).reshape(-1)[:n].astype(np.int64)
    explained = {"pred": preds_np, "true": targets_np}[target]
    shown = to_display(x, mean, std)
    maps = gradcam(model, x, target_layer=target_layer, targets=explained, method=method)

    # Image and overlay side by side, at most 4 pairs a row.
    fig, axes = image_grid(2 * n, 2 * min(n, 4), (1.8, 2.1), 0.3)
    for j in range(n):
        imshow(axes[2 * j], shown[j])
        true_pred_title(axes[2 * j], classes, targets_np[j], preds_np[j])
        imshow(axes[2 * j + 1], overlay_heatmap(shown[j], maps[j], alpha=alpha))
        axes[2 * j + 1].set_title(f"CAM for: {target} {class_name(classes, explained[j])}", fontsize=8)
    name, _, point = resolve_target_layer(model, target_layer)[0].partition(":")
    where = f"the input of layer '{name}'" if point == "input" else f"layer '{name}'"
    fig.suptitle(title or f"{method} on {where}", fontsize=10)
    return finish(fig, save)
