"""One call that evaluates a trained model and writes every diagnostic plot plus an index page.

``report(...)`` returns ``{name: path}``; in a notebook ``show_report(report(...))`` displays it all inline.
"""
import base64
import html
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, PytorchUtilsError
from pytorch_utils.io import atomic_write_text, ensure_writable_dir
from pytorch_utils.utils import model_device
from pytorch_utils.viz.confusion import (confusion_matrix, most_confused_pairs, per_class_accuracy,
                                         plot_confusion_matrix, plot_per_class_accuracy)
from pytorch_utils.viz.curves import clean_history, plot_history
from pytorch_utils.viz.images import PathLike, show_augmentations, show_batch
from pytorch_utils.viz.misclassified import plot_misclassified, select_misclassified

__all__ = ["report", "show_report", "history_summary"]

# Display order and captions of the images in index.md / index.html ({target} is filled in by _sections).
SECTIONS = (
    ("curves", "Training curves"),
    ("lr_finder", "LR finder"),
    ("batch", "Test images with their true and predicted classes"),
    ("augmentations", "Training augmentations (original, then augmented copies)"),
    ("misclassified", "Misclassified test images (highest loss first)"),
    ("gradcam", "GradCAM on misclassified images (explaining the {target} class)"),
    ("confusion_matrix", "Confusion matrix (counts)"),
    ("confusion_matrix_normalized", "Confusion matrix (normalized by true class)"),
    ("per_class_accuracy", "Per-class accuracy"),
)
GRADCAM_TARGETS = {"pred": "predicted", "true": "true"}


def _sections(gradcam_target: str = "pred") -> List[tuple]:
    """SECTIONS with the GradCAM caption naming the class that was explained."""
    return [(key, caption.format(target=GRADCAM_TARGETS[gradcam_target])) for key, caption in SECTIONS]


def history_summary(history: Optional[Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
    """Final and best accuracies of a run (after de-duplicating resumed epochs); empty dict for no history.

    Returns:
        dict with ``epochs`` (last epoch number), ``final_train_acc``, ``final_test_acc``, ``best_test_acc``,
        ``best_epoch`` (None where not recorded) and ``early_stopped`` (bool).
    """
    records = clean_history(history or [])
    if not records:
        return {}

    def last(key):
        for rec in reversed(records):
            if rec.get(key) is not None:
                return float(rec[key])
        return None

    with_acc = [r for r in records if r.get("test_acc") is not None]
    best = max(with_acc, key=lambda r: r["test_acc"]) if with_acc else None
    return {
        "epochs": records[-1]["epoch"],
        "final_train_acc": last("train_acc"),
        "final_test_acc": last("test_acc"),
        "best_test_acc": float(best["test_acc"]) if best else None,
        "best_epoch": best["epoch"] if best else None,
        "early_stopped": any(r.get("early_stop") is True for r in records),
    }


def _fmt_pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _summary_rows(ev: Dict[str, Any], hist: Dict[str, Any]) -> List[tuple]:
    rows = [("Test accuracy (this evaluation)", _fmt_pct(ev["acc"])), ("Test loss", f"{ev['loss']:.4f}"),
            ("Test samples", str(ev["samples"])), ("Misclassified", str(ev["num_wrong"]))]
    if hist:
        rows += [("Epochs", str(hist["epochs"]) + (" (early stopped)" if hist["early_stopped"] else "")),
                 ("Final train accuracy", _fmt_pct(hist["final_train_acc"])),
                 ("Final test accuracy", _fmt_pct(hist["final_test_acc"])),
                 ("Best test accuracy", _fmt_pct(hist["best_test_acc"])
                  + (f" (epoch {hist['best_epoch']})" if hist["best_epoch"] is not None else ""))]
    return rows


def _write_markdown(path: Path, title, rows, pairs, images: Dict[str, Path], notes: List[str],
                    sections: Sequence[tuple]) -> None:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in rows]
    lines += [""]
    for key, caption in sections:
        if key in images:
            lines += [f"## {caption}", "", f"![{key}]({images[key].name})", ""]
    lines += ["## Most confused pairs", ""]
    if pairs:
        lines += ["| true | predicted | count |", "|---|---|---:|"]
        lines += [f"| {_md_cell(t)} | {_md_cell(p)} | {c} |" for t, p, c in pairs]
    else:
        lines += ["No mistakes."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_md_cell(n)}" for n in notes]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _html_body(title, rows, pairs, images: Dict[str, Path], notes: List[str], sections: Sequence[tuple]) -> str:
    e = html.escape
    parts = [f"<h1>{e(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    parts += ["</table>"]
    for key, caption in sections:
        if key in images:
            parts += [f"<h2>{e(caption)}</h2>", f'<img src="{e(images[key].name)}" alt="{e(key)}">']
    parts += ["<h2>Most confused pairs</h2>"]
    if pairs:
        parts += ["<table><tr><th>true</th><th>predicted</th><th>count</th></tr>"]
        parts += [f"<tr><td>{e(t)}</td><td>{e(p)}</td><td>{c}</td></tr>" for t, p, c in pairs]
        parts += ["</table>"]
    else:
        parts += ["<p>No mistakes.</p>"]
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{e(n)}</li>" for n in notes] + ["</ul>"]
    return "\n".join(parts)


def _style(root: str) -> str:
    """CSS for the report, scoped under ``root`` (so inline display does not restyle the rest of a notebook)."""
    return (f"{root}{{font-family:sans-serif;max-width:1100px;margin:auto}}{root} img{{max-width:100%}}"
            f"{root} table{{border-collapse:collapse}}"
            f"{root} th,{root} td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}")


def _brief(exc: BaseException, limit: int = 300) -> str:
    """``"Type: message"`` on one line, cut to ``limit`` characters (torch errors can run to pages)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _uint8_images(dataset, inputs: torch.Tensor, mean, std):
    """Raw images for the augmentation preview: the data set itself when it holds uint8 images (with its targets),
    else the evaluated (normalized) inputs turned back into uint8."""
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        return dataset
    from pytorch_utils.viz.images import to_display

    return np.round(to_display(inputs[:64], mean, std) * 255.0).astype(np.uint8)


def report(
    model: nn.Module,
    loader,
    classes: Optional[Sequence[str]],
    history: Optional[Sequence[Mapping[str, Any]]],
    out_dir: PathLike,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device=None,
    k: int = 16,
    lr_finder_result=None,
    gradcam: bool = True,
    gradcam_k: int = 8,
    target_layer: Optional[str] = None,
    title: str = "Training report",
    top_pairs: int = 10,
    gradcam_target: str = "pred",
    batch_k: int = 16,
    train_transform: Optional[Callable] = None,
    train_images=None,
) -> Dict[str, Path]:
    """Evaluate ``model`` on ``loader`` once and write all diagnostic plots plus ``index.md`` and ``index.html``.

    Files (PNG unless noted): ``curves`` (when a history is given), ``batch`` (``batch_k`` test images evenly spaced
    through the set, de-normalized, titled with true and predicted class), ``augmentations`` (when
    ``train_transform`` is given), ``misclassified`` (the ``k`` highest-loss mistakes), ``confusion_matrix`` and
    ``confusion_matrix_normalized``, ``per_class_accuracy``, ``gradcam`` (on the first ``gradcam_k`` of those
    mistakes), ``lr_finder`` (when ``lr_finder_result`` is given, drawn by
    ``pytorch_utils.viz.lr_finder.plot_lr_finder``); ``index.md`` and ``index.html`` reference them by relative
    path and list the summary numbers, the most confused pairs and notes. A GradCAM or augmentation preview that
    cannot run (no conv layer, unknown layer, a RuntimeError in the model) is skipped with a note in the index
    rather than failing the whole report.

    Args:
        model: the trained classifier (evaluated in eval mode under no_grad; each module's mode is restored).
        loader: unshuffled test loader yielding (normalized inputs, labels).
        classes: class names (default: ``loader.dataset.classes``, else the label numbers).
        history: the run's ``History`` (list of epoch dicts) or None.
        out_dir: directory for the files (created).
        mean, std: normalization statistics (default: ``loader.dataset.mean/std``, else CIFAR-100's for a 100-class
            model and CIFAR-10's otherwise, with a note in the index saying so).
        device: where to evaluate (default: the model's device; the model is not moved).
        k: misclassified images in the grid; gradcam: draw the GradCAM grid; gradcam_k: images in it.
        lr_finder_result: the LR finder's result object, or None.
        target_layer: GradCAM layer name (default ``model.cam_layer``).
        title: heading of the index pages; top_pairs: rows of the most-confused table.
        gradcam_target: "pred" (explain the predicted class) or "true" (the true class).
        batch_k: test images in the ``batch`` grid.
        train_transform: the training transform (uint8 HWC image -> normalized CHW tensor) to preview, or None.
        train_images: images to preview it on: uint8 (N, H, W, 3) or a data set with ``.images`` (default: the
            loader's data set when it holds uint8 images, else the evaluated test images).
    Returns:
        dict name -> Path: the PNGs written, plus ``index_md`` and ``index_html``.
    """
    from pytorch_utils.data.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
    from pytorch_utils.train.loop import evaluate

    if gradcam_target not in GRADCAM_TARGETS:
        raise ConfigError(f'gradcam_target must be "pred" or "true", got {gradcam_target!r}')
    out = ensure_writable_dir(out_dir)
    dataset = getattr(loader, "dataset", None)
    if mean is None:
        mean = getattr(dataset, "mean", None)
    if std is None:
        std = getattr(dataset, "std", None)
    if classes is None:
        classes = getattr(dataset, "classes", None)

    if device is not None and torch.device(device).type != model_device(model).type:
        raise ConfigError(f"report(device={str(device)!r}) but the model is on {model_device(model)}; "
                          "move the model first (report never moves it)")
    res = evaluate(model, loader, device=device, return_outputs=True, return_inputs=True)
    num_classes = int(res["logits"].shape[1])
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(f"{len(classes)} class names but the model outputs {num_classes} classes")
    if classes is None:
        classes = [str(i) for i in range(num_classes)]

    paths: Dict[str, Path] = {}
    notes: List[str] = []
    if mean is None or std is None:
        # Nothing says how the inputs were normalized: guess from the class count, and say so (a wrong guess only
        # tints the displayed images, but silently it looks like a data bug).
        cifar100 = num_classes == 100
        name = "CIFAR-100" if cifar100 else "CIFAR-10"
        missing = " and ".join(w for w, v in (("mean", mean), ("std", std)) if v is None)
        if mean is None:
            mean = CIFAR100_MEAN if cifar100 else CIFAR10_MEAN
        if std is None:
            std = CIFAR100_STD if cifar100 else CIFAR10_STD
        notes.append(f"Normalization {missing} not given and the loader's data set has none: assumed the {name} "
                     f"statistics ({num_classes}-class model) to de-normalize images for display; pass mean= and std= "
                     "if the data was normalized differently.")

    def save(name: str, draw) -> None:
        path = out / f"{name}.png"
        draw(path)  # each plot saves itself; the returned Figure is dropped here so its memory is freed
        paths[name] = path

    hist = history_summary(history)
    if hist:
        save("curves", lambda p: plot_history(history, save=p))
    if lr_finder_result is not None:
        from pytorch_utils.viz.lr_finder import plot_lr_finder  # written separately; imported only when used

        save("lr_finder", lambda p: plot_lr_finder(lr_finder_result, save=p))

    nb = min(int(batch_k), int(res["samples"]))
    if nb > 0:
        # Evenly spaced through the test set: its first images are often all of one class (folder order).
        pick = torch.as_tensor(np.linspace(0, int(res["samples"]) - 1, nb).round().astype(np.int64))
        save("batch", lambda p: show_batch(res["inputs"][pick], res["targets"][pick], classes, mean, std,
                                           preds=res["preds"][pick], ncols=8, max_images=nb, save=p,
                                           title=f"{nb} test images, evenly spaced through the test set "
                                                 "(green: right, red: wrong)"))
    if train_transform is not None:
        source = train_images if train_images is not None else _uint8_images(dataset, res["inputs"], mean, std)
        try:
            save("augmentations", lambda p: show_augmentations(source, train_transform, classes, mean, std, n=6,
                                                               repeats=5, save=p))
        except Exception as exc:  # a preview must never cost the rest of the report: the note carries the error
            notes.append(f"Augmentation preview skipped: {_brief(exc)}")

    mis = select_misclassified(res, k=k, order="worst")
    save("misclassified", lambda p: plot_misclassified(
        mis["images"], mis["targets"], mis["preds"], classes, mean, std, probs=mis["probs"], k=k, order="first",
        save=p, title=f"{mis['num_wrong']} of {mis['samples']} misclassified; the {len(mis['indices'])} "
                      "with the highest loss"))
    if gradcam and len(mis["indices"]):
        from pytorch_utils.viz.gradcam import plot_gradcam

        try:
            save("gradcam", lambda p: plot_gradcam(model, mis["images"], mis["targets"], mis["preds"], classes, mean,
                                                   std, target=gradcam_target, target_layer=target_layer,
                                                   k=gradcam_k, save=p))
        except (PytorchUtilsError, RuntimeError) as exc:
            # RuntimeError: what torch raises when hooks meet an unusual model (in-place ops in forward, shapes).
            notes.append(f"GradCAM skipped: {_brief(exc)}")
    elif gradcam:
        notes.append("GradCAM skipped: no misclassified images.")

    cm = confusion_matrix(res["targets"], res["preds"], num_classes)
    save("confusion_matrix", lambda p: plot_confusion_matrix(cm, classes, save=p))
    save("confusion_matrix_normalized", lambda p: plot_confusion_matrix(cm, classes, normalize="true", save=p))
    save("per_class_accuracy", lambda p: plot_per_class_accuracy(cm, classes, save=p))

    pairs = most_confused_pairs(cm, classes, k=top_pairs)
    ev = {"acc": res["acc"], "loss": res["loss"], "samples": res["samples"], "num_wrong": mis["num_wrong"]}
    rows = _summary_rows(ev, hist)
    worst = per_class_accuracy(cm)
    if np.isfinite(worst).any():
        i = int(np.nanargmin(worst))
        rows.append(("Weakest class", f"{classes[i]} ({worst[i]:.2f}%)"))
    images = dict(paths)
    paths["index_md"] = out / "index.md"
    sections = _sections(gradcam_target)
    _write_markdown(paths["index_md"], title, rows, pairs, images, notes, sections)
    paths["index_html"] = out / "index.html"
    body = _html_body(title, rows, pairs, images, notes, sections)
    atomic_write_text(paths["index_html"], "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                                           f"<title>{html.escape(title)}</title><style>{_style('body')}</style></head>"
                                           f"<body>\n{body}\n</body></html>\n")
    return paths


def show_report(paths: Mapping[str, PathLike]):
    """An IPython HTML object showing a report inline (images embedded, so it works in Colab's sandboxed output).

    Args:
        paths: the dict returned by :func:`report` (needs ``index_html``; otherwise the PNGs are shown in a list).
    Returns:
        ``IPython.display.HTML``; the last expression of a cell displays it.
    """
    from IPython.display import HTML  # local: IPython exists in notebooks, not necessarily elsewhere

    def data_uri(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")

    pngs = {name: Path(p) for name, p in paths.items() if str(p).endswith(".png")}
    index = paths.get("index_html")
    if index is not None and Path(index).exists():
        page = Path(index).read_text(encoding="utf-8")
        match = re.search(r"<body>(.*)</body>", page, flags=re.S)
        body = match.group(1) if match else page
        for path in pngs.values():
            # The page refers to images by file name; Colab's output frame cannot read the VM's files.
            body = body.replace(f'src="{html.escape(path.name)}"', f'src="{data_uri(path)}"')
    else:
        body = "\n".join(f"<h3>{html.escape(name)}</h3><img src=\"{data_uri(p)}\" style=\"max-width:100%\">"
                         for name, p in pngs.items())
    return HTML(f'<div class="pu-report"><style>{_style(".pu-report")}</style>{body}</div>')
