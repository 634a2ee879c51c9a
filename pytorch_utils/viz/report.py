"""One call that evaluates a trained model and writes every diagnostic plot plus an index page.

``report(...)`` returns ``{name: path}``; in a notebook ``show_report(report(...))`` displays it all inline.
"""
import base64
import html
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, PytorchUtilsError
from pytorch_utils.io import atomic_write_text, ensure_writable_dir
from pytorch_utils.utils import model_device
from pytorch_utils.viz.confusion import (confusion_matrix, most_confused_pairs, per_class_accuracy,
                                         plot_confusion_matrix, plot_per_class_accuracy)
from pytorch_utils.viz.curves import clean_history, plot_history
from pytorch_utils.viz.images import PathLike
from pytorch_utils.viz.misclassified import plot_misclassified, select_misclassified

__all__ = ["report", "show_report", "history_summary"]

# Display order and captions of the images in index.md / index.html.
SECTIONS = (
    ("curves", "Training curves"),
    ("lr_finder", "LR finder"),
    ("misclassified", "Misclassified test images (highest loss first)"),
    ("gradcam", "GradCAM on misclassified images (explaining the predicted class)"),
    ("confusion_matrix", "Confusion matrix (counts)"),
    ("confusion_matrix_normalized", "Confusion matrix (normalized by true class)"),
    ("per_class_accuracy", "Per-class accuracy"),
)


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


def _write_markdown(path: Path, title, rows, pairs, images: Dict[str, Path], notes: List[str]) -> None:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in rows]
    lines += [""]
    for key, caption in SECTIONS:
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


def _html_body(title, rows, pairs, images: Dict[str, Path], notes: List[str]) -> str:
    e = html.escape
    parts = [f"<h1>{e(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    parts += ["</table>"]
    for key, caption in SECTIONS:
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
) -> Dict[str, Path]:
    """Evaluate ``model`` on ``loader`` once and write all diagnostic plots plus ``index.md`` and ``index.html``.

    Files (PNG unless noted): ``curves`` (when a history is given), ``misclassified`` (the ``k`` highest-loss
    mistakes), ``confusion_matrix`` and ``confusion_matrix_normalized``, ``per_class_accuracy``, ``gradcam`` (on the
    first ``gradcam_k`` of those mistakes), ``lr_finder`` (when ``lr_finder_result`` is given, drawn by
    ``pytorch_utils.viz.lr_finder.plot_lr_finder``); ``index.md`` and ``index.html`` reference them by relative path
    and list the summary numbers and the most confused pairs. A GradCAM that cannot run (no conv layer, unknown
    layer) is skipped with a note in the index rather than failing the whole report.

    Args:
        model: the trained classifier (evaluated in eval mode under no_grad; its mode is restored).
        loader: unshuffled test loader yielding (normalized inputs, labels).
        classes: class names (default: ``loader.dataset.classes``, else the label numbers).
        history: the run's ``History`` (list of epoch dicts) or None.
        out_dir: directory for the files (created).
        mean, std: normalization statistics (default: ``loader.dataset.mean/std``, else CIFAR-10's).
        device: where to evaluate (default: the model's device; the model is not moved).
        k: misclassified images in the grid; gradcam: draw the GradCAM grid; gradcam_k: images in it.
        lr_finder_result: the LR finder's result object, or None.
        target_layer: GradCAM layer name (default ``model.cam_layer``).
        title: heading of the index pages; top_pairs: rows of the most-confused table.
    Returns:
        dict name -> Path: the PNGs written, plus ``index_md`` and ``index_html``.
    """
    from pytorch_utils.data.constants import CIFAR10_MEAN, CIFAR10_STD
    from pytorch_utils.train.loop import evaluate

    out = ensure_writable_dir(out_dir)
    dataset = getattr(loader, "dataset", None)
    if mean is None:
        mean = getattr(dataset, "mean", None)
        mean = CIFAR10_MEAN if mean is None else mean
    if std is None:
        std = getattr(dataset, "std", None)
        std = CIFAR10_STD if std is None else std
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

    mis = select_misclassified(res, k=k, order="worst")
    save("misclassified", lambda p: plot_misclassified(
        mis["images"], mis["targets"], mis["preds"], classes, mean, std, probs=mis["probs"], k=k, order="first",
        save=p, title=f"{mis['num_wrong']} of {mis['samples']} misclassified; the {len(mis['indices'])} "
                      "with the highest loss"))
    if gradcam and len(mis["indices"]):
        from pytorch_utils.viz.gradcam import plot_gradcam

        try:
            save("gradcam", lambda p: plot_gradcam(model, mis["images"], mis["targets"], mis["preds"], classes, mean,
                                                   std, target="pred", target_layer=target_layer, k=gradcam_k,
                                                   save=p))
        except PytorchUtilsError as exc:
            notes.append(f"GradCAM skipped: {exc}")
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
    _write_markdown(paths["index_md"], title, rows, pairs, images, notes)
    paths["index_html"] = out / "index.html"
    body = _html_body(title, rows, pairs, images, notes)
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
