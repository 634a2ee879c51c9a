"""One call that writes every diagnostic plot of an evaluated model, a per-class table and an index page.

``report(ReportData(...), out_dir)`` returns ``{name: path}``; for a run, ``report(report_data(result), out_dir)``
(``pytorch_utils.recipes.report_data`` evaluates; viz only draws), or from its folder alone, after a restart or a cut,
``report_run(run_dir)``. In a notebook ``show_report(paths)`` displays it.
"""
import base64
import contextlib
import dataclasses
import html
import json
import logging
import re
import reprlib
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, PytorchUtilsError, bounded, check_fields
from pytorch_utils.io import atomic_write, atomic_write_text, ensure_writable_dir, read_run_file
from pytorch_utils.train.history import as_records, summarize
from pytorch_utils.viz import confusion
from pytorch_utils.viz.curves import clean_history, plot_history
from pytorch_utils.viz.images import PathLike, show_augmentations, show_batch, to_display
from pytorch_utils.viz.misclassified import plot_misclassified, select_misclassified

__all__ = ["report", "report_run", "show_report", "ReportData", "ReportSettings"]

log = logging.getLogger(__name__)

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


def _fmt_pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _index_md(title, rows, pairs, images: Dict[str, Path], notes: List[str], target: str,
              table: Sequence[dict]) -> str:
    """``index.md``: summary rows, the ``images`` in SECTIONS order (GradCAM explaining the ``target`` class),
    per-class table, most confused pairs, notes."""
    md = [f"# {title}", "", "| metric | value |", "|---|---|"] + [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in rows]
    for key, caption in SECTIONS:
        if key in images:
            md += ["", f"## {caption.format(target=target)}", "", f"![{key}]({images[key].name})"]
    md += ["", "## Per-class precision, recall and F1", "", confusion.per_class_markdown(table)]
    md += ["## Most confused pairs", ""]
    md += ["| true | predicted | count |", "|---|---|---:|"] + [f"| {_md_cell(t)} | {_md_cell(p)} | {c} |"
                                                              for t, p, c in pairs] if pairs else ["No mistakes."]
    if notes:
        md += ["", "## Notes", ""] + [f"- {_md_cell(n)}" for n in notes]
    return "\n".join(md) + "\n"


def _md_to_html(md: str) -> str:
    """``index.html``'s body from ``index.md``, so the two pages cannot drift apart: the Markdown that report
    writes (``#`` headings, pipe tables, images, ``- `` lists, paragraphs)."""
    e, out, open_tag = html.escape, [], None
    for line in md.splitlines():
        tag = "table" if line.startswith("|") else "ul" if line.startswith("- ") else None
        if tag != open_tag:
            out += ([f"</{open_tag}>"] if open_tag else []) + ([f"<{tag}>"] if tag else [])
            open_tag = tag
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line)
        if tag == "table" and not set(line) <= set("|-: "):  # not the header's separator row
            cell = "th" if out[-1] == "<table>" else "td"
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            out.append("<tr>" + "".join(f"<{cell}>{e(c)}</{cell}>" for c in cells) + "</tr>")
        elif tag == "ul":
            out.append(f"<li>{e(line[2:])}</li>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{e(line[level:].strip())}</h{level}>")
        elif image:
            out.append(f'<img src="{e(image[2])}" alt="{e(image[1])}">')
        elif line and tag is None:
            out.append(f"<p>{e(line)}</p>")
    return "\n".join(out + ([f"</{open_tag}>"] if open_tag else []))


def _style(root: str) -> str:
    """CSS for the report, scoped under ``root`` (so inline display does not restyle the rest of a notebook)."""
    return (f"{root}{{font-family:sans-serif;max-width:1100px;margin:auto}}{root} img{{max-width:100%}}"
            f"{root} table{{border-collapse:collapse}}"
            f"{root} th,{root} td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}")


@dataclass
class ReportData:
    """What a report shows, gathered by the caller (``recipes.report_data(result)`` for a run).

    ``evaluation`` is ``evaluate(model, loader, return_outputs=True, return_inputs=True)``'s dict; ``mean``/``std``
    default to CIFAR's (with a note); ``history`` may be a run folder; ``lr_finder`` a ``find_lr`` result or the
    ``Path`` of the PNG a run saved (copied); ``model`` is only for GradCAM;
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
    """How much a report shows (checked when built). ``k``: misclassified images in the grid; ``gradcam_k``: images
    in the GradCAM grid; ``batch_k``: test images in the batch grid; ``top_pairs``: rows of the most-confused table;
    ``gradcam_target``: "pred" (explain the predicted class) or "true"; ``target_layer``: GradCAM layer (default
    ``model.cam_layer``)."""

    title: str = "Training report"
    k: int = bounded(16, ge=0)
    batch_k: int = bounded(16, ge=0)
    gradcam: bool = True
    gradcam_k: int = bounded(8, ge=1)
    gradcam_target: Literal["pred", "true"] = "pred"
    target_layer: Optional[str] = None
    top_pairs: int = bounded(10, ge=0)

    def __post_init__(self):
        check_fields(self, "report setting")


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
    """Draw one optional plot; a failure becomes the note "<what> skipped: <Type: message>" (on one line, cut to 300
    characters: torch errors can run to pages) instead of a failed report."""
    try:
        save(name, draw)
    except errors as exc:
        notes.append(f"{what} skipped: " + textwrap.shorten(f"{type(exc).__name__}: {exc}", 300, placeholder="..."))


def _draw(data: ReportData, cfg: ReportSettings, stats, mis, cm, save, notes: List[str]) -> None:
    """Every plot of the report, in index order."""
    (classes, mean, std), res = stats, data.evaluation
    if data.history is not None:
        save("curves", lambda p: plot_history(data.history, save=p))
    if isinstance(data.lr_finder, Path):
        save("lr_finder", lambda p: atomic_write(p, lambda tmp: shutil.copyfile(data.lr_finder, tmp)))
    elif data.lr_finder is not None:
        from pytorch_utils.viz.lr_finder import plot_lr_finder

        save("lr_finder", lambda p: plot_lr_finder(data.lr_finder, save=p))
    nb = min(cfg.batch_k, int(res["samples"]))
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
    for name, normalize in (("confusion_matrix", False), ("confusion_matrix_normalized", "true")):
        save(name, lambda p: confusion.plot_confusion_matrix(cm, classes, normalize=normalize, save=p))
    save("per_class_accuracy", lambda p: confusion.plot_per_class_accuracy(cm, classes, save=p))


def _summary_rows(res: Dict[str, Any], mis, history, classes, cm) -> List[Tuple[str, str]]:
    """The index's metric table: this evaluation, then the run's history (:func:`summarize`), the weakest class."""
    rows = [("Test accuracy (this evaluation)", _fmt_pct(res["acc"])), ("Test loss", f"{res['loss']:.4f}"),
            ("Test samples", str(res["samples"])), ("Misclassified", str(mis["num_wrong"]))]
    if history:
        run = summarize(history)
        rows += [("Epochs", str(run["epochs_run"]) + (" (early stopped)" if run["stopped_early"] else "")),
                 ("Final train accuracy", _fmt_pct(run["train_acc"])),
                 ("Final test accuracy", _fmt_pct(run["test_acc"])),
                 ("Best test accuracy", _fmt_pct(run["best_test_acc"])
                  + (f" (epoch {run['best_epoch']})" if run["best_epoch"] is not None else ""))]
    worst = confusion.per_class_accuracy(cm)
    if np.isfinite(worst).any():
        i = int(np.nanargmin(worst))
        rows.append(("Weakest class", f"{classes[i]} ({worst[i]:.2f}%)"))
    return rows


def report(data: ReportData, out_dir: PathLike, settings: Optional[ReportSettings] = None,
           **overrides) -> Dict[str, Path]:
    """Write every diagnostic plot of ``data`` into ``out_dir``, a per-class table and an index page.

    PNGs (each when its data is there): ``curves``, ``lr_finder``, ``batch``, ``augmentations``, ``misclassified``,
    ``gradcam``, ``confusion_matrix`` (+ ``_normalized``), ``per_class_accuracy``; then ``per_class.md``/``.csv``
    (:func:`~pytorch_utils.viz.confusion.per_class_report`), ``index.md`` and ``index.html``. A GradCAM or augmentation
    preview that cannot run becomes a note. ``overrides`` replace fields of ``settings`` (``gradcam_k=4``).
    Returns ``{name: Path}``: the PNGs, ``per_class_md``, ``per_class_csv``, ``index_md``, ``index_html``. Raises
    ConfigError for an unknown or invalid setting, or class names that do not fit the logits.
    """
    try:
        cfg = dataclasses.replace(settings or ReportSettings(), **overrides)
    except TypeError:
        names = ", ".join(f.name for f in dataclasses.fields(ReportSettings))
        raise ConfigError(f"report() got unknown settings {sorted(overrides)}; valid: {names}") from None
    out, res, notes, paths = ensure_writable_dir(out_dir), data.evaluation, [], {}
    stats = _stats(data, int(res["logits"].shape[1]), notes)
    history = clean_history(as_records(data.history)) if data.history is not None else []
    data = dataclasses.replace(data, history=history or None)  # read once; no curves for an empty history

    def save(name: str, draw) -> None:
        draw(out / f"{name}.png")  # each plot saves itself; the returned Figure is dropped so its memory is freed
        paths[name] = out / f"{name}.png"

    mis = select_misclassified(res, k=cfg.k, order="worst")
    cm = confusion.confusion_matrix(res["targets"], res["preds"], len(stats[0]))
    _draw(data, cfg, stats, mis, cm, save, notes)
    table = confusion.per_class_report(res["targets"], res["preds"], stats[0])
    paths["per_class_md"] = atomic_write_text(out / "per_class.md", confusion.per_class_markdown(table))
    paths["per_class_csv"] = atomic_write_text(out / "per_class.csv", confusion.per_class_csv(table))
    target = "predicted" if cfg.gradcam_target == "pred" else "true"
    md = _index_md(cfg.title, _summary_rows(res, mis, history, stats[0], cm),
                   confusion.most_confused_pairs(cm, stats[0], k=cfg.top_pairs), paths, notes, target, table)
    paths["index_md"] = atomic_write_text(out / "index.md", md)
    paths["index_html"] = atomic_write_text(out / "index.html", "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                                            f"<title>{html.escape(cfg.title)}</title><style>{_style('body')}</style>"
                                            f"</head><body>\n{_md_to_html(md)}\n</body></html>\n")
    return paths


_DATA_FIELDS = ("train_limit", "test_limit", "seed", "num_classes", "max_side", "max_total_pixels")  # of load_datasets


def _recorded_data(run_dir: Path) -> Optional[str]:
    """The ``data`` in a run's run.json; None when it is missing, unreadable or no regular file (a FIFO blocks)."""
    path = run_dir / "run.json"
    with contextlib.suppress(OSError, ValueError, LookupError, TypeError, RecursionError):
        return str(json.loads(read_run_file(path))["data"]) if path.is_file() else None


def eval_loader(run, ds):
    """A loader over ``ds`` as ``run`` (a ``LoadedRun``) evaluated its test set: the run's normalization, its input
    size, no augmentation, in order."""
    from pytorch_utils.data import make_loader

    ds.mean, ds.std = run.mean, run.std  # normalized exactly as in training
    loader = make_loader(ds, batch_size=256, train=False, num_workers=0)
    loader.set_augmentation("test", size=run.input_size[0])
    return loader


def report_run(run_dir: PathLike, out: Optional[PathLike] = None, *, data: Optional[PathLike] = None,
               last: bool = False, root: PathLike = "./data", **overrides) -> Dict[str, Path]:
    """:func:`report` of a run folder alone, after a restart or a cut: the model of ``best.pt`` (``last`` or no
    best.pt: the newest intact checkpoint), the saved history and LR-finder plot, and the run's test set (``data``,
    default run.json's; CIFAR under ``root``) evaluated once. Writes into ``out`` (default ``<run_dir>/report``;
    ``overrides`` as for :func:`report`); returns ``{name: Path}``. Without the test set only the curves and LR-finder
    plot are written, with a warning. Raises CheckpointError, DatasetError (other classes than the run's),
    ConfigError."""
    from pytorch_utils.data import load_datasets
    from pytorch_utils.errors import DatasetError, DatasetNotFoundError, UnknownNameError
    from pytorch_utils.inference import load_run
    from pytorch_utils.train.loop import evaluate
    from pytorch_utils.utils import resolve_device

    if (run_dir := Path(run_dir)).is_file():  # an export has no history or data record to report from
        raise ConfigError(f"{str(run_dir)!r} is a file: a report is made from a run folder (out_dir of the run)")
    run = load_run(run_dir, which="last" if last else "best", device=resolve_device())
    saved = {name: run_dir / f for name, f in (("curves", "history.csv"), ("curves", "history.json"),
             ("lr_finder", "lr_finder.png")) if (run_dir / f).is_file() and not (run_dir / f).is_symlink()}
    out, r = ensure_writable_dir(out or run_dir / "report"), run.recipe
    data = data or _recorded_data(run_dir) or r.get("data")
    try:
        _, test = load_datasets(data, root=root, **{k: r[k] for k in _DATA_FIELDS if k in r})  # as the run read it
    except (DatasetNotFoundError, UnknownNameError) as exc:
        paths = {name: out / f"{name}.png" for name in saved}
        if "curves" in saved:
            plot_history(saved["curves"], save=paths["curves"])
        if "lr_finder" in saved:
            atomic_write(paths["lr_finder"], lambda tmp: shutil.copyfile(saved["lr_finder"], tmp))
        log.warning(f"report of {str(run_dir)!r}: its test set was not found ({exc}): wrote only "
                    f"{' and '.join(paths) or 'nothing'}; for the test images, confusion matrix, per-class table and "
                    "GradCAM pass data= where that test set is now (root= for CIFAR)")
        return paths
    if list(test.classes) != run.classes:
        raise DatasetError(f"the data {str(data)!r} has the classes {reprlib.repr(list(test.classes))}, the run "
                           f"{reprlib.repr(run.classes)}; pass data= the data set the run was trained on")
    res = evaluate(run.model, eval_loader(run, test), return_outputs=True, return_inputs=True)
    found = ReportData(res, run.classes, run.mean, run.std, saved.get("curves"), saved.get("lr_finder"), run.model)
    return report(found, out, **{"title": f"Report of {run_dir.resolve().name} ({run.source.name})", **overrides})


def show_report(paths: Mapping[str, PathLike]):
    """``IPython.display.HTML`` showing :func:`report`'s ``paths`` inline (its index page, else the PNGs), images
    embedded so it works in Colab's sandboxed output."""
    from IPython.display import HTML  # local: IPython exists in notebooks, not necessarily elsewhere

    pngs = [Path(p) for p in paths.values() if str(p).endswith(".png")]
    index = Path(paths.get("index_md", ""))
    body = _md_to_html(index.read_text(encoding="utf-8") if index.is_file() else
                       "\n".join(f"### {p.stem}\n![{p.stem}]({p.name})" for p in pngs))
    for path in pngs:  # the page names images by file; Colab's output frame cannot read the VM's files
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body = body.replace(f'src="{html.escape(path.name)}"', f'src="data:image/png;base64,{data}"')
    return HTML(f'<div class="pu-report"><style>{_style(".pu-report")}</style>{body}</div>')
