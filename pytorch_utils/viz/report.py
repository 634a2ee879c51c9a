"""One call that writes every diagnostic plot of an evaluated model, a per-class table and an index page.

``report(ReportData(...), out_dir)`` returns ``{name: path}``; for a run, ``report(report_data(result), out_dir)``
(``pytorch_utils.recipes.report_data`` evaluates; viz only draws). In a notebook ``show_report(paths)`` displays it.
"""
import base64
import dataclasses
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, PytorchUtilsError
from pytorch_utils.io import atomic_write_text, ensure_writable_dir
from pytorch_utils.train.history import as_records
from pytorch_utils.viz.confusion import (confusion_matrix, most_confused_pairs, per_class_accuracy, per_class_csv,
                                         per_class_markdown, per_class_report, plot_confusion_matrix,
                                         plot_per_class_accuracy)
from pytorch_utils.viz.curves import clean_history, plot_history
from pytorch_utils.viz.images import PathLike, show_augmentations, show_batch, to_display
from pytorch_utils.viz.misclassified import plot_misclassified, select_misclassified

__all__ = ["report", "show_report", "history_summary", "ReportData", "ReportSettings"]

# Display order and captions of the images in index.md / index.html.
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


def history_summary(history: Optional[Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
    """``epochs`` (the last), ``final_train_acc``, ``final_test_acc``, ``best_test_acc``, ``best_epoch`` (None where
    not recorded) and ``early_stopped`` of a history (de-duplicated); an empty dict for no history."""
    records = clean_history(history or [])
    if not records:
        return {}

    def last(key):
        return next((float(r[key]) for r in reversed(records) if r.get(key) is not None), None)

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


def _index_pages(title, rows, pairs, images: Dict[str, Path], notes: List[str], sections: Sequence[tuple],
                 table: Sequence[dict]) -> Tuple[str, str]:
    """``index.md`` and the ``<body>`` of ``index.html``, built side by side so both list the same things in order."""
    e = html.escape
    md = [f"# {title}", "", "| metric | value |", "|---|---|"] + [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in rows]
    htm = [f"<h1>{e(title)}</h1>", "<table>"] + [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    md += [""]
    htm += ["</table>"]
    for key, caption in sections:
        if key in images:
            md += [f"## {caption}", "", f"![{key}]({images[key].name})", ""]
            htm += [f"<h2>{e(caption)}</h2>", f'<img src="{e(images[key].name)}" alt="{e(key)}">']
    md += ["## Per-class precision, recall and F1", "", per_class_markdown(table), "## Most confused pairs", ""]
    htm += ["<h2>Per-class precision, recall and F1</h2>",
            "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    htm += [f"<tr><td>{e(str(r['class']))}</td><td>{100 * r['precision']:.1f}%</td><td>{100 * r['recall']:.1f}%"
            f"</td><td>{100 * r['f1']:.1f}%</td><td>{r['support']}</td></tr>" for r in table]
    htm += ["</table>", "<h2>Most confused pairs</h2>"]
    if pairs:
        md += ["| true | predicted | count |", "|---|---|---:|"]
        md += [f"| {_md_cell(t)} | {_md_cell(p)} | {c} |" for t, p, c in pairs]
        htm += ["<table><tr><th>true</th><th>predicted</th><th>count</th></tr>"]
        htm += [f"<tr><td>{e(t)}</td><td>{e(p)}</td><td>{c}</td></tr>" for t, p, c in pairs] + ["</table>"]
    else:
        md += ["No mistakes."]
        htm += ["<p>No mistakes.</p>"]
    if notes:
        md += ["", "## Notes", ""] + [f"- {_md_cell(n)}" for n in notes]
        htm += ["<h2>Notes</h2><ul>"] + [f"<li>{e(n)}</li>" for n in notes] + ["</ul>"]
    return "\n".join(md) + "\n", "\n".join(htm)


def _style(root: str) -> str:
    """CSS for the report, scoped under ``root`` (so inline display does not restyle the rest of a notebook)."""
    return (f"{root}{{font-family:sans-serif;max-width:1100px;margin:auto}}{root} img{{max-width:100%}}"
            f"{root} table{{border-collapse:collapse}}"
            f"{root} th,{root} td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}")


def _brief(exc: BaseException, limit: int = 300) -> str:
    """``"Type: message"`` on one line, cut to ``limit`` characters (torch errors can run to pages)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class ReportData:
    """What a report shows, gathered by the caller (``recipes.report_data(result)`` for a run).

    ``evaluation`` is ``evaluate(model, loader, return_outputs=True, return_inputs=True)``'s dict; ``mean``/``std``
    default to CIFAR's (with a note); ``history`` may be a run folder; ``model`` is only for GradCAM;
    ``train_transform`` is previewed on ``train_images`` (uint8 (N, H, W, 3), default: the evaluated images).
    """

    evaluation: Dict[str, Any]
    classes: Optional[Sequence[str]] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    history: Any = None
    lr_finder: Any = None
    model: Optional[nn.Module] = None
    train_transform: Optional[Callable] = None
    train_images: Any = None


@dataclass
class ReportSettings:
    """How much a report shows. ``k``: misclassified images in the grid; ``gradcam_k``: images in the GradCAM grid;
    ``batch_k``: test images in the batch grid; ``top_pairs``: rows of the most-confused table; ``gradcam_target``:
    "pred" (explain the predicted class) or "true"; ``target_layer``: GradCAM layer (default ``model.cam_layer``)."""

    title: str = "Training report"
    k: int = 16
    batch_k: int = 16
    gradcam: bool = True
    gradcam_k: int = 8
    gradcam_target: str = "pred"
    target_layer: Optional[str] = None
    top_pairs: int = 10


def _settings(settings: Optional[ReportSettings], overrides: Dict[str, Any]) -> ReportSettings:
    try:
        settings = dataclasses.replace(settings or ReportSettings(), **overrides)
    except TypeError:
        names = ", ".join(f.name for f in dataclasses.fields(ReportSettings))
        raise ConfigError(f"report() got unknown settings {sorted(overrides)}; valid: {names}") from None
    if settings.gradcam_target not in GRADCAM_TARGETS:
        raise ConfigError(f'gradcam_target must be "pred" or "true", got {settings.gradcam_target!r}')
    return settings


def _stats(data: ReportData, num_classes: int, notes: List[str]):
    """(classes, mean, std): the given ones, or defaults with a note saying what was assumed."""
    from pytorch_utils.data.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

    classes, mean, std = data.classes, data.mean, data.std
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(f"{len(classes)} class names but the model outputs {num_classes} classes")
    if mean is None or std is None:
        # Guess from the class count, and say so: silently, a wrong guess's tinted images would look like a data bug.
        cifar100 = num_classes == 100
        missing = " and ".join(w for w, v in (("mean", mean), ("std", std)) if v is None)
        mean = mean if mean is not None else (CIFAR100_MEAN if cifar100 else CIFAR10_MEAN)
        std = std if std is not None else (CIFAR100_STD if cifar100 else CIFAR10_STD)
        notes.append(f"Normalization {missing} not given: assumed the {'CIFAR-100' if cifar100 else 'CIFAR-10'} "
                     f"statistics ({num_classes}-class model) to de-normalize images for display; pass mean= and "
                     "std= if the data was normalized differently.")
    return classes or [str(i) for i in range(num_classes)], mean, std


def _try(name: str, what: str, draw, save, notes: List[str], errors=(Exception,)) -> None:
    """Draw one optional plot; a failure becomes the note "<what> skipped: <error>" instead of a failed report."""
    try:
        save(name, draw)
    except errors as exc:
        notes.append(f"{what} skipped: {_brief(exc)}")


def _draw(data: ReportData, res, cfg: ReportSettings, stats, mis, save, notes: List[str]) -> None:
    """Every plot of the report, in index order."""
    classes, mean, std = stats
    if data.history is not None and history_summary(as_records(data.history)):
        save("curves", lambda p: plot_history(data.history, save=p))
    if data.lr_finder is not None:
        from pytorch_utils.viz.lr_finder import plot_lr_finder

        save("lr_finder", lambda p: plot_lr_finder(data.lr_finder, save=p))
    nb = min(int(cfg.batch_k), int(res["samples"]))
    if nb > 0:
        # Evenly spaced through the test set: its first images are often all of one class (folder order).
        pick = torch.as_tensor(np.linspace(0, int(res["samples"]) - 1, nb).round().astype(np.int64))
        save("batch", lambda p: show_batch(res["inputs"][pick], res["targets"][pick], classes, mean, std,
                                           preds=res["preds"][pick], ncols=8, max_images=nb, save=p,
                                           title=f"{nb} test images, evenly spaced through the test set "
                                                 "(green: right, red: wrong)"))
    if data.train_transform is not None:  # a preview must never cost the rest of the report
        source = data.train_images
        if source is None:  # the evaluated images back as uint8
            source = np.round(to_display(res["inputs"][:64], mean, std) * 255.0).astype(np.uint8)
        _try("augmentations", "Augmentation preview", lambda p: show_augmentations(
            source, data.train_transform, classes, mean, std, n=6, repeats=5, save=p), save, notes)
    save("misclassified", lambda p: plot_misclassified(
        mis["images"], mis["targets"], mis["preds"], classes, mean, std, probs=mis["probs"], k=cfg.k, order="first",
        save=p, title=f"{mis['num_wrong']} of {mis['samples']} misclassified; the {len(mis['indices'])} "
                      "with the highest loss"))
    if cfg.gradcam and data.model is not None and len(mis["indices"]):
        from pytorch_utils.viz.gradcam import plot_gradcam

        # RuntimeError: what torch raises when hooks meet an unusual model (in-place ops in forward, shapes).
        _try("gradcam", "GradCAM", lambda p: plot_gradcam(
            data.model, mis["images"], mis["targets"], mis["preds"], classes, mean, std, target=cfg.gradcam_target,
            target_layer=cfg.target_layer, k=cfg.gradcam_k, save=p), save, notes,
             errors=(PytorchUtilsError, RuntimeError))
    elif cfg.gradcam and data.model is not None:
        notes.append("GradCAM skipped: no misclassified images.")
    cm = confusion_matrix(res["targets"], res["preds"], len(classes))
    save("confusion_matrix", lambda p: plot_confusion_matrix(cm, classes, save=p))
    save("confusion_matrix_normalized", lambda p: plot_confusion_matrix(cm, classes, normalize="true", save=p))
    save("per_class_accuracy", lambda p: plot_per_class_accuracy(cm, classes, save=p))


def report(data: ReportData, out_dir: PathLike, settings: Optional[ReportSettings] = None,
           **overrides) -> Dict[str, Path]:
    """Write every diagnostic plot of ``data`` into ``out_dir``, a per-class table and an index page.

    PNGs (each when its data is there): ``curves``, ``lr_finder``, ``batch``, ``augmentations``, ``misclassified``,
    ``gradcam``, ``confusion_matrix`` (+ ``_normalized``), ``per_class_accuracy``; then ``per_class.md``/``.csv``
    (:func:`~pytorch_utils.viz.confusion.per_class_report`), ``index.md`` and ``index.html``. A GradCAM or augmentation
    preview that cannot run becomes a note. ``overrides`` replace fields of ``settings`` (``gradcam_k=4``).
    Returns ``{name: Path}``: the PNGs, ``per_class_md``, ``per_class_csv``, ``index_md``, ``index_html``. Raises
    ConfigError for an unknown setting or ``gradcam_target``, or class names that do not fit the logits.
    """
    cfg = _settings(settings, overrides)
    out = ensure_writable_dir(out_dir)
    res = data.evaluation
    notes: List[str] = []
    stats = _stats(data, int(res["logits"].shape[1]), notes)
    paths: Dict[str, Path] = {}

    def save(name: str, draw) -> None:
        draw(out / f"{name}.png")  # each plot saves itself; the returned Figure is dropped so its memory is freed
        paths[name] = out / f"{name}.png"

    mis = select_misclassified(res, k=cfg.k, order="worst")
    _draw(data, res, cfg, stats, mis, save, notes)
    table = per_class_report(res["targets"], res["preds"], stats[0])
    paths["per_class_md"] = atomic_write_text(out / "per_class.md", per_class_markdown(table))
    paths["per_class_csv"] = atomic_write_text(out / "per_class.csv", per_class_csv(table))
    _write_index(out, paths, cfg, data, mis, table, notes)
    return paths


def _write_index(out: Path, paths: Dict[str, Path], cfg: ReportSettings, data: ReportData, mis, table,
                 notes: List[str]) -> None:
    """``index.md`` and ``index.html``: summary rows, images in SECTIONS order, per-class table, pairs, notes."""
    res, classes = data.evaluation, [r["class"] for r in table[:-2]]
    cm = confusion_matrix(res["targets"], res["preds"], len(classes))
    pairs = most_confused_pairs(cm, classes, k=cfg.top_pairs)
    rows = [("Test accuracy (this evaluation)", _fmt_pct(res["acc"])), ("Test loss", f"{res['loss']:.4f}"),
            ("Test samples", str(res["samples"])), ("Misclassified", str(mis["num_wrong"]))]
    hist = history_summary(as_records(data.history)) if data.history is not None else {}
    if hist:
        rows += [("Epochs", str(hist["epochs"]) + (" (early stopped)" if hist["early_stopped"] else "")),
                 ("Final train accuracy", _fmt_pct(hist["final_train_acc"])),
                 ("Final test accuracy", _fmt_pct(hist["final_test_acc"])),
                 ("Best test accuracy", _fmt_pct(hist["best_test_acc"])
                  + (f" (epoch {hist['best_epoch']})" if hist["best_epoch"] is not None else ""))]
    worst = per_class_accuracy(cm)
    if np.isfinite(worst).any():
        i = int(np.nanargmin(worst))
        rows.append(("Weakest class", f"{classes[i]} ({worst[i]:.2f}%)"))
    images = {k: v for k, v in paths.items() if v.suffix == ".png"}
    target = GRADCAM_TARGETS[cfg.gradcam_target]
    sections = [(key, caption.format(target=target)) for key, caption in SECTIONS]
    md, body = _index_pages(cfg.title, rows, pairs, images, notes, sections, table)
    paths["index_md"] = atomic_write_text(out / "index.md", md)
    paths["index_html"] = atomic_write_text(out / "index.html", "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                                            f"<title>{html.escape(cfg.title)}</title><style>{_style('body')}</style>"
                                            f"</head><body>\n{body}\n</body></html>\n")


def show_report(paths: Mapping[str, PathLike]):
    """``IPython.display.HTML`` showing :func:`report`'s ``paths`` inline (its index page, else the PNGs), images
    embedded so it works in Colab's sandboxed output."""
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
