"""Generate the course notebooks in this folder (one per course system) from one place.

Run from anywhere::

    python notebooks/_build_notebooks.py           # (re)write the six .ipynb files
    python notebooks/_build_notebooks.py --check   # exit 1 when a notebook differs from what this script writes

Why a generator: the six notebooks share their skeleton (install cell, smoke switch, data look, training through
``run_recipe``, plots, final numbers); writing them from one script keeps them consistent and makes a change to the
skeleton one edit. The .ipynb files are this script's output and are saved **without outputs** (no GPU run has been
recorded in this repo yet); edit this script, not the notebooks, then re-run it.

Rules the notebooks follow (checked here when they are built):
- logic lives in the package: no code cell defines a function (no ``def``), every training run is ``run_recipe``;
- the first code cell only installs the package in Colab, reads the smoke switch and enables inline plots;
- ``PYTORCH_UTILS_SMOKE=1`` turns every notebook into a tiny CPU run (CI runs them with nbval that way); without it a
  notebook does the full run the course session describes (Colab, GPU, CIFAR downloaded by torchvision).

Forks: change ``OWNER`` below (the Colab badges and the pip install URL are built from it) and re-run the script.
"""
import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OWNER = "your-github-user"  # placeholder: forks put their GitHub user or organisation here
REPO = "pytorch_utils"
BRANCH = "main"
REPO_URL = f"https://github.com/{OWNER}/{REPO}.git"
HERE = Path(__file__).resolve().parent
# The course's JPEG CIFAR-10 copy as seen from notebooks/ (nbval runs each notebook in its own folder). Smoke runs use
# a few hundred of its images when it exists (this repo's CI) and the synthetic set otherwise.
SMOKE_ZIP = "../../shared/data/cifar10-jpeg.zip"


def colab_url(filename: str) -> str:
    """The "Open in Colab" URL of a notebook of this folder."""
    return f"https://colab.research.google.com/github/{OWNER}/{REPO}/blob/{BRANCH}/notebooks/{filename}"


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
    return new_code_cell(textwrap.dedent(text).strip())


# ----------------------------------------------------------------------------------------------------------------
# cells shared by every notebook
# ----------------------------------------------------------------------------------------------------------------

def header(filename: str, title: str, intro: str) -> list:
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(filename)})"
    fork = (f"*The badge and the install URL point at `{OWNER}/{REPO}`, a placeholder: forks replace it with their "
            "own GitHub user (the `OWNER` constant of `notebooks/_build_notebooks.py`, then re-run that script).*")
    run = ("**Run it:** in Colab choose *Runtime > Change runtime type > GPU*, then *Runtime > Run all*. Every piece "
           "of logic lives in the `pytorch_utils` package; this notebook only configures, calls and looks.")
    parts = [f"# {title}", badge, fork, textwrap.dedent(intro).strip(), run]
    return [new_markdown_cell("\n\n".join(parts))]


SETUP = code(f'''
    import os
    import sys

    IN_COLAB = "google.colab" in sys.modules
    REPO_URL = "{REPO_URL}"
    if IN_COLAB:  # a fresh Colab VM does not have the package: install it (and its dependencies) from the repo
        import subprocess

        if "your-github-user" in REPO_URL:
            raise SystemExit("Set REPO_URL above to the GitHub repo this notebook came from "
                             "(https://github.com/<user>/pytorch_utils.git), then run this cell again.")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPO_URL}}"], check=True)

    # Smoke mode (PYTORCH_UTILS_SMOKE=1): a tiny CPU run of every cell, used by CI; unset = the real run.
    SMOKE = os.environ.get("PYTORCH_UTILS_SMOKE") == "1"

    try:  # figures inline in Jupyter / Colab; skipped where there is no IPython (e.g. exported to a script)
        get_ipython().run_line_magic("matplotlib", "inline")
    except NameError:
        pass
    print(f"Colab: {{IN_COLAB}} | smoke mode: {{SMOKE}}")
''')

SMOKE_NOTE = md("""
    ## Configuration

    The recipe comes from the package (`get_recipe`): a dataclass holding model, data, optimizer, schedule,
    augmentation, mixing and bookkeeping, printed below so you see exactly what runs. Change a field with
    `recipe.replace(field=value)`; do not copy its logic into the notebook.

    With `PYTORCH_UTILS_SMOKE=1` (how CI runs this notebook) the same cells run a tiny CPU version: a few dozen to a
    few hundred images, one epoch (two for a resume demo), small batches, no worker processes, outputs in a
    temporary folder. Its numbers mean nothing; it only proves every cell works.
    """)

IMPORTS = """
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from IPython.display import display
    from PIL import Image

    from pytorch_utils import export, load_run, predict, viz
    from pytorch_utils.data import get_preset, load_datasets
    from pytorch_utils.models import create_model, summary
    from pytorch_utils.recipes import get_recipe, report_data, run_recipe, smoke_recipe
    from pytorch_utils.train import evaluate
"""

# Names the data set in every printed number, as the course requires ("JPEG CIFAR-10 copy" next to numbers on it).
DATA_LABEL = """
    DATA_LABEL = {"cifar10": "CIFAR-10 (torchvision)", "cifar100": "CIFAR-100 (torchvision)",
                  "synthetic": "synthetic stripes (smoke data, not CIFAR)"}.get(recipe.data,
                                                                                f"JPEG CIFAR-10 copy ({recipe.data})")
    if recipe.train_limit or recipe.test_limit:
        DATA_LABEL += f", subsets of {recipe.train_limit} train / {recipe.test_limit} test images"
    print(f"{recipe.name}: {recipe.description}\\ndata: {DATA_LABEL}\\noutputs: {OUT_DIR} | report: {ASSETS}")
    settings = pd.Series({k: v for k, v in recipe.to_dict().items() if k != "phases"}, dtype=object)
    with pd.option_context("display.max_colwidth", None):  # every setting in full (long ones wrap), none cut to "..."
        display(settings.to_frame(recipe.name))
"""


def config_cell(*pieces: str) -> object:
    """Imports, then the notebook's own recipe/smoke settings (``pieces``), then the data label and recipe table."""
    parts = [IMPORTS, *pieces, DATA_LABEL]
    return code("\n\n".join(textwrap.dedent(p).strip() for p in parts))


def model_cells(num_classes: int, expected: str, extra_md: str = "", check: str = "") -> list:
    """The summary cells; ``expected`` is the parameter count the course asks for (markdown), ``check`` the printed
    comparison (default: the count itself)."""
    check = check or f"course: {expected.replace('*', '')}"
    return [
        md(f"""
            ## The model

            `summary` runs torchsummary on a 3x32x32 input and returns the table as data; its total is checked
            against the course ({expected} parameters). {extra_md}
            """),
        code(f"""
            model = create_model(recipe.model, num_classes={num_classes}, **recipe.model_kwargs)
            info = summary(model, (3, 32, 32))  # prints the table
            print(f"total parameters: {{info.total_params:,}} ({check})")
            del model  # run_recipe builds (and seeds) its own copy
            """),
    ]


def data_cells(augment_md: str, show_augmentations: bool = True, extra_sizes=()) -> list:
    cells = [
        md("""
            ## A look at the data

            `load_datasets` returns in-memory data sets (uint8 images, labels, class names, mean/std); `run_recipe`
            loads the same ones again (a zip is cached in-process, CIFAR is read from `./data`). The images as
            stored come first.
            """),
        code("""
            train_ds, test_ds = load_datasets(recipe.data, download=True, train_limit=recipe.train_limit,
                                              test_limit=recipe.test_limit, seed=recipe.seed,
                                              num_classes=recipe.num_classes)
            print(f"{len(train_ds):,} train / {len(test_ds):,} test images, {train_ds.num_classes} classes, "
                  f"per-class train counts {train_ds.class_counts().min()}-{train_ds.class_counts().max()}")
            print("normalization mean", np.round(train_ds.mean, 4), "std", np.round(train_ds.std, 4))
            pick = np.random.default_rng(0).choice(len(train_ds), size=min(24, len(train_ds)), replace=False)
            viz.show_batch(train_ds.images[pick], train_ds.targets[pick], train_ds.classes,
                           title="training images as stored (no augmentation)")
            """),
    ]
    if show_augmentations:
        cells += [
            md(augment_md),
            code("""
                train_tf = get_preset(recipe.augmentation, train_ds.mean, train_ds.std, seed=recipe.seed,
                                      **recipe.augmentation_kwargs)
                viz.show_augmentations(train_ds, train_tf, mean=train_ds.mean, std=train_ds.std, n=4, repeats=4)
                """),
        ]
    for size in extra_sizes:
        cells.append(code(f"""
            # the same preset at {size}x{size}: the input size of a later progressive-resizing phase
            viz.show_augmentations(train_ds, get_preset(recipe.augmentation, train_ds.mean, train_ds.std, size={size},
                                                        seed=recipe.seed), mean=train_ds.mean, std=train_ds.std,
                                   n=2, repeats=4)
            """))
    return cells


def train_cells(intro: str, resume: bool = False) -> list:
    if resume:
        call = """
            # resume=True: continue from the newest checkpoint in OUT_DIR (a fresh start when there is none)
            result = run_recipe(recipe, out_dir=OUT_DIR, resume=True, download=True, progress=not SMOKE)
            """
    else:
        call = """
            result = run_recipe(recipe, out_dir=OUT_DIR, download=True, progress=not SMOKE)
            """
    return [md(intro), code(call)]


def curves_cells(what: str) -> list:
    return [
        md(f"""
            ## Training curves

            Loss and accuracy for train and test per epoch, and the learning rate. {what}
            """),
        code("""viz.plot_history(result.history, title=f"{recipe.name} on {DATA_LABEL}")"""),
    ]


def mistakes_cells(num_classes: int) -> list:
    gradcam_k = "4 if SMOKE else 8"
    return [
        md("""
            ## Where the model is wrong

            One plain evaluation of the test set (no test-time augmentation, so it can differ a little from the
            run's final number when the recipe uses TTA), kept with its inputs: the misclassified grid, the
            confusion matrix and the per-class accuracy all come from it.
            """),
        code("""
            ev = evaluate(result.eval_model, result.test_loader, return_outputs=True, return_inputs=True)
            mis = viz.select_misclassified(ev, k=16)  # the 16 with the highest loss
            print(f"plain evaluation (no TTA): {ev['acc']:.2f}% of {ev['samples']:,} test images; "
                  f"{mis['num_wrong']:,} misclassified")
            viz.plot_misclassified(mis["images"], mis["targets"], mis["preds"], result.classes, result.mean, result.std,
                                   probs=mis["probs"])
            """),
        code("""
            cm = viz.confusion_matrix(ev["targets"], ev["preds"], len(result.classes))
            viz.plot_confusion_matrix(cm, result.classes, normalize="true")
            """),
        code("""
            print("most confused pairs (true -> predicted: count)")
            for true_name, pred_name, count in viz.most_confused_pairs(cm, result.classes, k=5):
                print(f"  {true_name} -> {pred_name}: {count}")
            viz.plot_per_class_accuracy(cm, result.classes)
            """),
        md("""
            ### Precision, recall and F1 per class

            From scikit-learn on the same evaluation: *recall* is the per-class accuracy above (of the true cats, how
            many were called cat), *precision* how many of the images called cat really are cats; the last two rows
            average over classes (plain and weighted by support).
            """),
        code("""
            pd.DataFrame(viz.per_class_report(ev["targets"], ev["preds"], result.classes)).set_index("class").round(3)
            """),
        md("""
            ### GradCAM on misclassified images

            Where the last convolutional stage looked when it made the wrong call (the map explains the *predicted*
            class). Look for maps on the background or on a part shared by the two confused classes.
            """),
        code(f"""
            if mis["num_wrong"]:
                display(viz.plot_gradcam(result.eval_model, mis["images"], mis["targets"], mis["preds"], result.classes,
                                         result.mean, result.std, k={gradcam_k}))
            else:
                print("no misclassified test images: nothing to explain")
            """),
    ]


def report_cells(title: str) -> list:
    return [
        md("""
            ## Report files

            `report_data(result)` evaluates once more, and `viz.report` writes every plot as PNG, the per-class table
            as `per_class.md` / `per_class.csv`, plus `index.md` / `index.html`: under
            `assets/<system>/` for a real run (in Colab that is `/content/assets/...`: download it and commit it to
            the repo's `assets/` for the README), inside the run's temporary folder in smoke mode.
            `viz.show_report(paths)` shows the whole page inline. After a restart (no `result` in memory), or for a
            run cut off mid-way, `viz.report_run(OUT_DIR)` rebuilds the same report from the run folder alone.
            """),
        code(f"""
            paths = viz.report(report_data(result), ASSETS, gradcam_k=4 if SMOKE else 8,
                               title=f"{title} - {{DATA_LABEL}}")
            for name, path in paths.items():
                print(f"{{name:28s}} {{path}}")
            """),
    ]


def after_training_cells() -> list:
    """Load the finished run from its folder, predict on test images and an image file, export the model."""
    return [
        md("""
            ## Use the trained model

            `load_run` rebuilds the model from the run folder alone (the best checkpoint, EMA weights when the recipe
            keeps an EMA) with its class names, mean/std and input size. `predict` takes image files, folders, PIL
            images or uint8 arrays, converts them as the test transform did (RGB, resized to the training size,
            normalized) and returns the top classes with their probabilities. From a terminal:
            `python -m pytorch_utils predict --run <out-dir> photo.jpg`.
            """),
        code("""
            run = load_run(OUT_DIR)
            print(f"{run.weights} weights from {run.source}; input {run.input_size}, {len(run.classes)} classes")
            for p, target in zip(predict(run, test_ds.images[:4], top_k=3), test_ds.targets[:4]):
                guesses = ", ".join(f"{c} {q:.0%}" for c, q in zip(p["classes"], p["probs"]))
                print(f"true: {test_ds.classes[target]:<12} predicted: {guesses}")
            """),
        code("""
            # Your own photo works the same way: any size, grayscale or RGBA. Here a test image saved at 64x64.
            photo = OUT_DIR / "my_photo.png"
            Image.fromarray(test_ds.images[0]).resize((64, 64)).save(photo)
            predict(run, photo, top_k=3)
            """),
        md("""
            ### Export

            `export` writes a TorchScript file (or ONNX with `format="onnx"`, after `pip install
            "pytorch_utils[onnx]"`) plus `model.pt.json` with the classes and normalization, and checks that the
            exported model gives the eager model's outputs (within 1e-4). `predict` reads the exported file too. A
            TorchScript file is a program that runs when it is loaded, so `predict` asks for `trust_code=True`: give
            it only for files you made yourself (a run folder or an ONNX file needs no such trust).
            CLI: `python -m pytorch_utils export --run <out-dir> --format onnx`.
            """),
        code("""
            exported = export(run, OUT_DIR / "model.pt", format="torchscript")
            predict(exported, photo, top_k=3, trust_code=True)  # our own file: we trust the code in it
            """),
    ]


SMOKE_PRINT = """if SMOKE:
    print("(smoke run: tiny data, an epoch or two on the CPU - these numbers only prove the cells run)")"""


def final_cell(target_line: str) -> list:
    return [
        md("""
            ## Final numbers

            Printed from `result.final` (also saved as `summary.json` in the run folder). Quote them with the data
            they were measured on.
            """),
        code(textwrap.dedent("""
            f = result.final
            print(f"data:              {DATA_LABEL}")
            print(f"model:             {f['model']} ({f['parameters']:,} parameters)")
            print(f"device:            {f['device']}")
            print(f"epochs run:        {f['epochs_run']} of {result.recipe.epochs}"
                  + (" (early stopping)" if f["stopped_early"] else ""))
            print(f"test accuracy:     {f['test_acc']:.2f}% at the last epoch"
                  + (f" (TTA: {f['tta']})" if f["tta"] else ""))
            print(f"best test acc:     {f['best_test_acc']:.2f}% (epoch {f['best_epoch']})")
            print(f"train accuracy:    {f['train_acc']:.2f}% (last epoch, on the augmented training batches)")
            print(f"time:              {f['seconds'] / 60:.1f} min in all, "
                  f"{np.mean(result.history.column('seconds')):.1f} s per epoch (train + test)")
            """).strip() + "\n" + textwrap.dedent(target_line).strip() + "\n" + SMOKE_PRINT),
    ]


CLEANUP = code("""
    if SMOKE:  # smoke outputs live in a temporary folder; do not leave checkpoints behind
        shutil.rmtree(OUT_DIR, ignore_errors=True)
""")


def smoke_zip_lines(train: int, test: int, batch: int) -> str:
    """The SMOKE branch of a config cell for notebooks that use real images when the zip is at hand."""
    return f"""
if SMOKE:
    # The package's smoke profile, on real images when the course's JPEG CIFAR-10 copy is at hand (this repo's CI).
    SMOKE_ZIP = Path("{SMOKE_ZIP}")
    recipe = smoke_recipe(recipe, str(SMOKE_ZIP) if SMOKE_ZIP.exists() else "synthetic", train_limit={train},
                          test_limit={test}, batch_size={batch})
    OUT_DIR = Path(tempfile.mkdtemp(prefix=f"{{recipe.name}}_smoke_"))
    ASSETS = OUT_DIR / "report"
"""


PHASES_TABLE = """
    pd.DataFrame([{"epochs": f"{p.start}-{p.end}", "phase": p.name, "input size": p.input_size,
                   "dropout": p.dropout, "augmentation": p.augmentation, "mixup alpha": p.mixup_alpha,
                   "cutmix alpha": p.cutmix_alpha, "scheduler": p.scheduler.name,
                   "scheduler params": p.scheduler.params}
                  for p in recipe.phases]).fillna("(keep)")
"""

# ----------------------------------------------------------------------------------------------------------------
# S10
# ----------------------------------------------------------------------------------------------------------------


def s10() -> list:
    config = """
        recipe = get_recipe("s10")             # recipe.data "cifar10": torchvision downloads it into ./data
        OUT_DIR = Path("runs") / recipe.name   # history.json, run.json, lr_finder.png, checkpoints/
        ASSETS = Path("assets") / "s10"        # the report's PNGs
    """
    smoke = smoke_zip_lines(256, 128, 32)
    return [
        *header("S10_custom_resnet_cifar10.ipynb", "S10 - a custom ResNet on CIFAR-10 in 24 epochs", """
            The "DAWNBench ResNet" of session 10: a 9-layer ResNet trained with Adam and a One Cycle policy whose
            learning rates come from an LR range test, not from a hard-coded constant.
            """),
        SETUP,
        md("""
            ## The session

            **Target.** At least **90 %** test accuracy on CIFAR-10 in **24 epochs**. The seed repos published
            92.63 % and 90.98 %, at about 21 s per epoch on a Colab GPU. The model has exactly **6,573,130**
            parameters (the course lists the layers).

            **What we try.**
            - Model: prep conv, then three layers (64 -> 128 -> 256 -> 512 channels) with residual blocks after
              layers 1 and 3, max-pooling, and a 512 -> 10 linear head; dropout is an argument (0 here).
            - Data: pad 4 + random crop 32, horizontal flip, one 8x8 Cutout hole filled with the mean, normalize.
            - Optimisation: Adam, batch 512, cross-entropy; an LR range test (exponential sweep) picks LR_max at the
              steepest descent of the loss and LR_min = LR_max / 10; a linear One Cycle rises from LR_min to LR_max
              over 5 epochs and falls back to LR_min at epoch 24 (**no annihilation**: it never goes below LR_min).
            - Evaluation: flip test-time augmentation (cheap, no training change; beyond the seed).

            **What to look for.** The LR finder curve: a flat start, a steep fall, then a blow-up; LR_max should sit
            on the fall, not at the bottom. The LR panel of the curves: a triangle peaking at epoch 5. Test accuracy
            should pass 90 % in the last few epochs, when the LR comes down. Compare the seconds per epoch with the
            seed's 21 s (the GPU-resident loader is used on CUDA).
            """),
        SMOKE_NOTE,
        config_cell(config, smoke),
        *model_cells(10, "**6,573,130**", "Every conv is 3x3, stride 1, no bias; the residual adds live in "
                                      "`forward`, so they do not appear as rows."),
        *data_cells("""
            Augmentation (preset `standard`): pad-crop, flip, Cutout 8x8 filled with the data set mean. Each row is
            one image followed by four random draws.
            """),
        *train_cells("""
            ## Training

            One call: `run_recipe` builds the data loaders, the model and Adam, runs the LR range test (the sweep
            state is restored afterwards, so training starts from the same weights), builds the One Cycle schedule
            from its LR_max / LR_min, and trains with a checkpoint per epoch. One line per epoch is printed.
            """),
        md("""
            ## The LR finder

            The range test the runner ran before training: smoothed loss against the learning rate (log scale),
            with the chosen LR_max (steepest descent) and LR_min = LR_max / 10 marked.
            """),
        code("""
            print(f"LR_max = {result.lr_finder.lr_max:.3e}  (steepest descent of the smoothed loss)")
            print(f"LR_min = {result.lr_finder.lr_min:.3e}  (LR_max / {result.lr_finder.div:g})")
            viz.plot_lr_finder(result.lr_finder)
            """),
        *curves_cells("The LR panel should show the One Cycle triangle with its peak at epoch 5; the test "
                      "accuracy climbs fastest while the LR comes down."),
        *mistakes_cells(10),
        *report_cells("S10 custom ResNet"),
        *after_training_cells(),
        *final_cell("""
            print(f"target 90 %:       {'reached' if f['best_test_acc'] >= 90 else 'not reached'} "
                  "(seed repos: 92.63 % and 90.98 %, published on CIFAR-10)")
            """),
        md("""
            ## What we observed

            *Fill in after your run:* final and best test accuracy (with the data set), seconds per epoch on your
            GPU, LR_max / LR_min the finder chose, the weakest classes (usually cat and dog) and the most confused
            pair. If the target is missed, look first at the LR finder plot: an LR_max at the very bottom of the
            curve or past it makes the peak epochs unstable.
            """),
        CLEANUP,
    ]


# ----------------------------------------------------------------------------------------------------------------
# WRN-28-10 on CIFAR-10
# ----------------------------------------------------------------------------------------------------------------

DRIVE = """
    # A long run outlives a Colab session: keep its folder on Google Drive so checkpoints survive a disconnect
    # (a WRN-28-10 checkpoint with its optimizer state is about 0.3 GB; the last 5 + best are kept).
    USE_DRIVE = True
    if IN_COLAB and USE_DRIVE and not SMOKE:
        from google.colab import drive

        drive.mount("/content/drive")
        OUT_DIR = Path("/content/drive/MyDrive/pytorch_utils_runs") / recipe.name
"""

# WideResNet-28-10 is ~5 GFLOPs per image forward: on a 2-core CPU a training step of 16 images takes seconds, so
# the smoke runs of the WRN notebooks keep a few dozen images.
WRN_SMOKE = """
    if SMOKE:
        # WRN-28-10 is heavy on a CPU: the smoke profile with a few dozen synthetic images, one epoch, batch 16.
        recipe = smoke_recipe(recipe, "synthetic", train_limit=32, test_limit=32, batch_size=16){extra}
        OUT_DIR = Path(tempfile.mkdtemp(prefix=f"{{recipe.name}}_smoke_"))
        ASSETS = OUT_DIR / "report"
"""


def wrn() -> list:
    config = """
        recipe = get_recipe("wrn_c10")
        OUT_DIR = Path("runs") / recipe.name
        ASSETS = Path("assets") / "wrn28_10_c10"
    """
    pieces = (config, DRIVE, WRN_SMOKE.format(extra=""))
    return [
        *header("WRN28_10_cifar10.ipynb", "WRN-28-10 on CIFAR-10 from scratch", """
            A Wide ResNet (depth 28, widen factor 10, 36.5 M parameters) trained from scratch with the full bag of
            tricks: label smoothing, MixUp and CutMix, Cutout, a cyclic then cosine schedule, progressive resizing of
            the training input and test-time augmentation.
            """),
        SETUP,
        md("""
            ## The session

            **Target.** The seed "training from scratch" run published **96.68 %** CIFAR-10 test accuracy after
            **230 epochs**, with a confusion matrix. The model must match the course: **36,489,290** parameters for
            10 classes.

            **What we try** (all read from the recipe fields printed below, none hard-coded here):
            - `augmentation="wrn"`: resize / random crop / rotation / flip / Cutout;
            - `label_smoothing=0.2`, `mixup_alpha=1.0`, `cutmix_alpha=1.0` (each batch uses MixUp or CutMix,
              `mix_switch_prob` decides which), SGD with `lr=0.1`;
            - `phases`: epochs 1-30 a cyclic LR at 32x32, epochs 31-130 cosine (T_max 100) at 36x36, epochs 131-230
              cosine at 40x40 - **progressive resizing 32 -> 36 -> 40** (the test set stays at 32x32; the network's
              global average pool makes the size change harmless);
            - `tta="flip_translate"`: every test image is also evaluated flipped and shifted, logits averaged.

            **What to look for.** The training accuracy stays *below* the test accuracy for most of the run: MixUp /
            CutMix targets are mixtures, so "train accuracy" is measured against mixed labels. Dotted lines in the
            curves mark phase changes; a short dip right after a resize is normal. The run is long (230 epochs of a
            36 M-parameter net; expect many hours on a Colab GPU and at least one disconnect): it resumes from its
            checkpoints on Drive.
            """),
        SMOKE_NOTE,
        config_cell(*pieces),
        md("""
            ### The phases (data, not if-statements)

            Each phase sets what changes at its first epoch; `(keep)` means "as before". A smoke run of one epoch only
            reaches the first phase.
            """),
        code(PHASES_TABLE),
        *model_cells(10, "**36,489,290**", "Blocks are BN > ReLU > Conv > Dropout > BN > ReLU > Conv with a 1x1 "
                                       "shortcut where the shape changes (wide-resnet.pytorch layout)."),
        *data_cells("""
            The `wrn` preset at 32x32 (first phase), then at 40x40 (last phase). MixUp / CutMix are applied to whole
            batches inside the training loop, so they do not show here.
            """, extra_sizes=(40,)),
        *train_cells("""
            ## Training

            `run_recipe` applies each phase at its first epoch (scheduler, input size), mixes every batch and
            smooths the labels (soft-target cross-entropy), keeps the last 5 checkpoints plus the best, and reports
            the test accuracy with TTA. After a Colab disconnect: re-run the cells above, then this one -
            `resume=True` continues from the newest checkpoint in `OUT_DIR`.
            """, resume=True),
        *curves_cells("Dotted vertical lines mark the phase changes (32 -> 36 -> 40 px)."),
        *mistakes_cells(10),
        *report_cells("WRN-28-10, CIFAR-10"),
        *after_training_cells(),
        *final_cell("""
            print(f"seed result:       96.68 % after 230 epochs (published on CIFAR-10; not a run of this repo)")
            """),
        md("""
            ## What we observed

            *Fill in after your run:* final and best test accuracy with TTA (and the plain evaluation above, without
            it), epochs, hours and GPU, how much each resize phase moved the test accuracy, and the most confused
            pairs in the confusion matrix.
            """),
        CLEANUP,
    ]


# ----------------------------------------------------------------------------------------------------------------
# S8: WRN-28-10 on CIFAR-100
# ----------------------------------------------------------------------------------------------------------------


def s8() -> list:
    config = """
        recipe = get_recipe("s8_c100")         # recipe.data "cifar100": torchvision downloads it into ./data
        # The network: "s8_c100" trains WRN-28-10; "s8_c100_resnet" the ResNet the seed itself trained (its numbers
        # come from it): 30,032,292 parameters and 1.46 G MACs per image against 36,546,980 and 5.95 G, about a
        # quarter of the arithmetic per epoch. Same phases either way.
        OUT_DIR = Path("runs") / recipe.name
        ASSETS = Path("assets") / "s8_wrn28_10_c100"
        # Optional: push checkpoints to the Hugging Face Hub every 10 epochs and on every new best. Needs a token
        # (Colab: add HF_TOKEN under Secrets, or run `huggingface-cli login`) and huggingface_hub (Colab ships it).
        HUB_REPO = None  # e.g. "your-hf-user/s8-wrn28-10-cifar100"
        recipe = recipe.replace(hub_repo=HUB_REPO)
    """
    pieces = (config, DRIVE, WRN_SMOKE.format(extra=".replace(num_classes=100)"))
    return [
        *header("S8_wrn28_10_cifar100.ipynb", "S8 - WRN-28-10 on CIFAR-100 in 100 epochs", """
            The same Wide ResNet on the harder 100-class data set, trained in two phases declared as data, with
            checkpoints that survive a Colab disconnect, early stopping and an optional push to the Hugging Face Hub.
            """),
        SETUP,
        md("""
            ## The session

            **Target.** **74-75 %** CIFAR-100 test accuracy within **100 epochs** (the seed reached about 82 % after
            200 epochs). The model has **36,546,980** parameters for 100 classes. The seed's overview names
            WRN-28-10, but the network it trained (and whose numbers it reports) is a ResNet of 4 x 5 BasicBlocks at
            64-512 channels with **30,032,292** parameters: recipe `s8_c100_resnet` trains that one instead.

            **What we try.** Batch 256, SGD (momentum 0.9, weight decay 1e-3), label smoothing 0.1 throughout, and
            two phases:
            - epochs 1-60: dropout 0.3, full augmentation, MixUp alpha 0.2, LR warm-up 0.01 -> 0.1 then
              CosineAnnealingWarmRestarts (T_0 = 25);
            - epochs 61-100: dropout 0.2, reduced augmentation, MixUp alpha 0.15, CosineAnnealingLR.

            Bookkeeping: a checkpoint per epoch, the last 5 plus the best kept; early stopping when the test accuracy
            has not improved for 15 epochs; optional Hub push.

            **What to look for.** The LR panel: warm-up, then restarts every 25 epochs (each restart costs some
            accuracy for a few epochs), then a single cosine from epoch 61. The phase change at epoch 61 (less
            dropout, lighter augmentation, less mixing) should lift both train and test accuracy. Check whether early
            stopping fired, and at which epoch the best checkpoint was taken.
            """),
        SMOKE_NOTE,
        config_cell(*pieces),
        md("""
            ### The phase schedule (data, not if-statements)

            The runner turns these rows into a `PhaseSchedule` callback that switches dropout, augmentation, MixUp and
            scheduler at each phase's first epoch (`(keep)`: unchanged). A shorter run cuts the table to its epochs.
            """),
        code(PHASES_TABLE),
        code("""
            print(f"early stopping: patience {recipe.early_stopping_patience} epochs on {recipe.monitor}")
            print(f"checkpoints:    the last {recipe.keep_last} epochs + best.pt, in {OUT_DIR / 'checkpoints'}")
            print(f"Hub push:       {recipe.hub_repo or 'off (set HUB_REPO above)'}"
                  + (f", every {recipe.hub_every} epochs and on every new best" if recipe.hub_repo else ""))
            """),
        *model_cells(100, "**36,546,980**", "With `s8_c100_resnet` expect **30,032,292**."),
        *data_cells("""
            The first phase's preset (`wrn`: crop, rotation, flip, Cutout); the second phase switches to `reduced`.
            MixUp mixes whole batches inside the training loop, so it does not show here.
            """),
        *train_cells("""
            ## Training (the cell to re-run after a disconnect)

            `resume=True` makes this cell safe to re-run: it loads the newest intact checkpoint in `OUT_DIR` (model,
            optimizer, scheduler, phase, history, RNG states) and carries on from the next epoch; with no checkpoint
            it starts fresh. After a Colab disconnect: reconnect, run the cells above (Drive is mounted again), then
            this one.
            """, resume=True),
        md("""
            ## Resuming, shown

            In smoke mode this cell pretends the session died after epoch 1: it asks for 2 epochs in the same folder
            with `resume="required"` (fail if there is no checkpoint), so the resume path really runs. On a real run
            it only lists the checkpoint folder.
            """),
        code("""
            if SMOKE:
                result = run_recipe(recipe.replace(epochs=2), out_dir=OUT_DIR, resume="required",
                                    download=True, progress=False)
                print("epochs in the history after resuming:", [r["epoch"] for r in result.history])
            for ckpt in sorted((OUT_DIR / "checkpoints").iterdir()):
                print(f"  {ckpt.name:16s} {ckpt.stat().st_size / 1e6:8.1f} MB")
            """),
        *curves_cells("Dotted vertical lines mark the phase change at epoch 61; a red dashed line marks early "
                      "stopping if it fired."),
        *mistakes_cells(100),
        *report_cells("S8 WRN-28-10, CIFAR-100"),
        *after_training_cells(),
        *final_cell("""
            print(f"target 74-75 %:    {'reached' if f['best_test_acc'] >= 74 else 'not reached'} "
                  "(seed: about 82 % after 200 epochs, published on CIFAR-100)")
            """),
        md("""
            ## What we observed

            *Fill in after your run:* best and final test accuracy, the epoch of the best checkpoint, whether early
            stopping fired, what the phase change at epoch 61 did, the worst classes and most confused pairs (with
            100 classes, look for semantically close pairs such as maple / oak or boy / girl).
            """),
        CLEANUP,
    ]


# ----------------------------------------------------------------------------------------------------------------
# Strixbee levels
# ----------------------------------------------------------------------------------------------------------------

STRIXBEE = {
    1: dict(
        title="Strixbee level 1 - a plain CNN under 100k parameters",
        intro="""
            The first level of the Strixbee series: the smallest network that learns CIFAR-10 reasonably, with no
            tricks - so we can see where a plain CNN breaks down.
            """,
        target="""
            ## Level 1 - Target

            - A plain CNN of exactly **83,368** parameters (the seed's count; every level stays under 100k): three
              stages of 3x3 conv > BN > ReLU (3-16-32-32, 16-28-40-28, 16-32-44-64 channels), 1x1 "transitions"
              that squeeze to 16 channels before each **max-pool**, global average pooling and a linear head without
              bias.
            - Plain training: SGD (lr 0.05, momentum 0.9), ReduceLROnPlateau on the test loss, plain normalization,
              no augmentation, no dropout, 50 epochs.
            - Seed run (published, on CIFAR-10): **97.4 % train / 78 % test after 50 epochs, overfitting after
              epoch 5**. The goal of the series: the fewest parameters for the most accuracy.

            **What to look for:** the epoch where the test loss is lowest; after it the train accuracy keeps climbing
            while the test loss rises - overfitting, which shows in the loss before (or instead of) the accuracy.
            Whenever 4 epochs in a row fail to beat the lowest test loss so far, ReduceLROnPlateau cuts the LR
            tenfold (patience 3), so the curves flatten long before epoch 50. The gap between train and test
            accuracy at the end.
            """,
        augment="",
        analysis="""
            ## Level 1 - Analysis

            - Where did the test loss bottom out (printed above), and how large is the final train/test gap? A gap of
              many points with a rising test loss is the overfitting the seed saw after epoch 5.
            - The network has no regularization at all and sees every training image unchanged every epoch: it can
              memorize. Level 2 changes the architecture (learned downsampling); level 3 adds regularization.
            - Our reference run (JPEG CIFAR-10 copy, which scores 3-4 points below CIFAR-10 on larger models; 2-core
              CPU, 50 epochs): at lr 0.05 the test loss is noisy (0.90 at epoch 4, 1.13 at epoch 5, 0.73 at epoch
              11) while the test accuracy climbs to 75.2 % (epoch 11) - epoch 5's jump is noise, not the start of
              overfitting. The first LR cut (after epoch 15) lifts the test accuracy to 79.0 % and gives the lowest
              test loss (0.637, epoch 16); then the test loss creeps up to 0.675 while the train accuracy climbs to
              92.7 % and the test accuracy stays at 79 %. No later epoch beats epoch 16's test loss, so the LR is cut
              again after epochs 20, 24, 28, ... down to 5e-9 (epoch 41), and both curves are flat from about epoch
              24: final 79.0 % test / 92.7 % train (a 13.7-point gap), best 79.2 % (epoch 24). Cat is the weakest
              class (recall 60 %). The seed reports 97.4 % train; its plateau settings are not published. One ablation
              run with patience 10 (torch's default) instead of 3 has the seed's shape: first cut after epoch 22, test
              loss lowest at epoch 23 (0.690) and then climbing to 0.875, 97.5 % train / 77.7 % test at the end -
              the patience explains the train accuracy; patience 3 ends 1.3 points higher on test.
            - *Fill in after your run:* train / test accuracy, best epoch, gap.
            """,
    ),
    2: dict(
        title="Strixbee level 2 - strided convolutions instead of max-pooling",
        intro="""
            Level 2 of the Strixbee series: the same network and training as level 1, except that each max-pool is
            replaced by a learned 3x3 stride-2 convolution.
            """,
        target="""
            ## Level 2 - Target

            - Replace each 2x2 max-pool by a **3x3 stride-2 conv** block (conv > BN > ReLU): **88,040** parameters,
              still under 100k (the 1x1 transitions squeeze to 16 channels first, so each strided conv costs only
              2,336 parameters).
            - Same training as level 1 (SGD + ReduceLROnPlateau, no augmentation, no dropout, 50 epochs), so any
              difference comes from the downsampling.
            - Beat your level 1's test accuracy with under 5k more parameters (seed, on CIFAR-10: 78 % at level 1,
              78.78 % at level 2; our level-1 reference run: 79.0 % on the JPEG CIFAR-10 copy).

            **What to look for:** does learned downsampling raise the test accuracy? With still no regularization,
            expect the same overfitting shape as level 1 (test loss lowest just after the first LR cut, then creeping
            up while the train accuracy climbs; a large train/test gap).
            """,
        augment="",
        analysis="""
            ## Level 2 - Analysis

            - Compare with your level 1 run: test accuracy, best epoch, gap. A strided conv can learn *how* to
              downsample, but it is more capacity too - it may fit the training set as well or better and overfit as
              much.
            - If the gap is still large, the architecture is not the bottleneck: the data and regularization are.
              That is level 3.
            - Our reference run (JPEG CIFAR-10 copy, 2-core CPU, 50 epochs) had level 1's shape: the LR cut after
              epoch 16 lifts the test accuracy from 75.0 % to 78.5 % and gives the lowest test loss (0.652, epoch
              17); by epoch 21 the test loss is back at about 0.69-0.70 and stays there while the train accuracy
              climbs to 93.0 %. Later cuts take the LR down to 5e-9 (epoch 42), so the curves are flat from about
              epoch 22. Final 78.5 % test / 93.0 % train (a 14.5-point gap; level 1: 13.7), best 78.9 % (epoch 19):
              0.5 points *below* our level 1 (79.0 %), with about the same train accuracy (level 1: 92.7 %) after a
              slower start (epoch 1: 38 % train against level 1's 46 %; level 2 catches up by epoch 19). In this
              pair of runs the strided convolutions did not help; one run each cannot say by how much runs with
              other seeds differ. Cat is again the weakest class (recall 62 %).
            - *Fill in after your run:* train / test accuracy, best epoch, gap, and the change from level 1.
            """,
    ),
    3: dict(
        title="Strixbee level 3 - regularization: dropout and Cutout",
        intro="""
            Level 3 of the Strixbee series: level 2's network, now regularized with dropout and data augmentation
            (pad-crop, flip and Cutout) plus weight decay.
            """,
        target="""
            ## Level 3 - Target

            - Level 2's network (**88,040** parameters) with **Dropout 0.05** after every conv block.
            - Augmentation (preset `standard`): pad 4 + random crop, horizontal flip, **Cutout 8x8**; weight decay
              5e-4. Same SGD + ReduceLROnPlateau, 50 epochs.
            - Close the train/test gap of levels 1-2 and raise the test accuracy without adding parameters.

            **What to look for:** the train accuracy should now be *lower* than at level 2 (training images are harder
            and change every epoch, and dropout is on while it is measured) while the test accuracy is higher; the
            test loss should keep falling (or stay flat) after the LR cuts instead of creeping up.
            """,
        augment="""
            Level 3's augmentation (preset `standard`): pad-crop, flip and one 8x8 Cutout hole. Each row is one image
            followed by four random draws - the network never sees the same picture twice.
            """,
        analysis="""
            ## Level 3 - Analysis

            - Did the gap shrink, and did the test loss stop rising? The train accuracy printed per epoch is taken on
              augmented images with dropout on, so here it can sit *below* the test accuracy even when all is well;
              for a fair gap evaluate the trained model on the plain training images in eval mode (clone the
              repository and run `python benchmarks/fit_gap.py --run runs/strixbee_l3`). If that train accuracy is still
              below the test accuracy, the regularization is too strong for 88k parameters (try less dropout); if
              the gap is still large, more augmentation (or more epochs at a lower LR) is the next lever.
            - Our reference run (JPEG CIFAR-10 copy, 2-core CPU, 50 epochs) did what the target predicts: final 81.1 %
              test (2.2 points above our level 1, 2.6 above level 2) with a printed train accuracy of 79.6 % - 1.5
              points *below* the test accuracy. Evaluated in eval mode on the plain training images
              (`benchmarks/fit_gap.py`), the train accuracy is 84.1 %: a gap of 2.9 points, about a fifth of levels
              1-2's (14.7 and 15.5 points, measured the same way; one run each). But that train accuracy is 10 points
              below levels 1-2's (93.7-94.0 %): the network fits its training images less closely, so more capacity,
              less regularization or a longer schedule are candidates for a next level (not tried). The test loss fell
              after each LR cut and at most stalled (0.618 in epoch 21 after the cut after epoch 20, 0.582 by epoch
              33, 0.587-0.594 in epochs 34-37, which brought the second cut, 0.555 in epoch 39, lowest 0.551 at epoch
              49) instead of creeping up, so only two cuts came and the LR stayed at 5e-4 from epoch 38; the test
              accuracy is flat at 80.6-81.1 % from there (best 81.1 % at epoch 50). Cat is still the weakest class
              (recall 64 %). An epoch costs about 150 s on this CPU against 102-105 s at levels 1-2.
            - *Fill in after your run:* train / test accuracy, best epoch, gap, and the change from levels 1 and 2.
            """,
    ),
}


def strixbee(level: int) -> list:
    spec = STRIXBEE[level]
    config = f"""
        recipe = get_recipe("strixbee_l{level}")
        OUT_DIR = Path("runs") / recipe.name
        ASSETS = Path("assets") / "strixbee_l{level}"
    """
    pieces = (config, smoke_zip_lines(256, 128, 64))
    return [
        *header(f"strixbee_level{level}.ipynb", spec["title"], spec["intro"]),
        SETUP,
        md(spec["target"]),
        SMOKE_NOTE,
        config_cell(*pieces),
        *model_cells(10, "under 100,000", f"This level has {'83,368' if level == 1 else '88,040'}.",
                     check="course: under 100,000"),
        *data_cells(spec["augment"], show_augmentations=level == 3),
        *train_cells(f"""
            ## Training

            `run_recipe` trains level {level} for `recipe.epochs` epochs with SGD and ReduceLROnPlateau (stepped
            with the test loss) and prints one line per epoch.
            """),
        *curves_cells("Watch the test loss: the epoch where it is lowest is where overfitting starts (it shows in the "
                      "loss first; the accuracy may stay flat)."),
        md(f"""
            ## Level {level} - Result

            Measured in this run (printed, not typed in):
            """),
        code(textwrap.dedent("""
            f = result.final
            lowest = result.history.best("test_loss", mode="min")
            print(f"data:                 {DATA_LABEL}")
            print(f"parameters:           {f['parameters']:,} (under 100k: {f['parameters'] < 100_000})")
            print(f"epochs run:           {f['epochs_run']}")
            print(f"final train / test:   {f['train_acc']:.2f}% / {f['test_acc']:.2f}% "
                  f"(gap {f['train_acc'] - f['test_acc']:+.2f} points)")
            print(f"best test accuracy:   {f['best_test_acc']:.2f}% (epoch {f['best_epoch']})")
            print(f"lowest test loss:     {lowest['test_loss']:.4f} at epoch {lowest['epoch']}")
            print(f"time:                 {f['seconds']:.0f} s on {f['device']}")
            """).strip() + "\n" + SMOKE_PRINT),
        *mistakes_cells(10),
        *report_cells(f"Strixbee level {level}"),
        *after_training_cells(),
        md(spec["analysis"]),
        CLEANUP,
    ]


NOTEBOOKS = {
    "S10_custom_resnet_cifar10.ipynb": s10,
    "WRN28_10_cifar10.ipynb": wrn,
    "S8_wrn28_10_cifar100.ipynb": s8,
    "strixbee_level1.ipynb": lambda: strixbee(1),
    "strixbee_level2.ipynb": lambda: strixbee(2),
    "strixbee_level3.ipynb": lambda: strixbee(3),
}


def build(filename: str):
    """The notebook ``filename`` as an nbformat object (deterministic cell ids, no outputs)."""
    cells = NOTEBOOKS[filename]()
    stem = Path(filename).stem.lower().replace("_", "-")
    for i, cell in enumerate(cells):
        cell = cells[i] = nbformat.from_dict(dict(cell))  # shared cells are copied, not aliased
        cell["id"] = f"{stem[:50]}-{i:02d}"  # stable ids: regenerating does not churn the diff
        if cell["cell_type"] == "code":
            ast.parse(cell["source"])  # a broken template fails here, not in CI
        if cell["cell_type"] == "code" and re.search(r"^\s*(async\s+)?def\s", cell["source"], re.MULTILINE):
            raise ValueError(f"{filename} cell {i} defines a function; put the logic in the package")
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",  # Colab opens it on a GPU runtime
        "colab": {"provenance": [], "gpuType": "T4"},
    })
    nbformat.validate(nb)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for filename in NOTEBOOKS:
        text = nbformat.writes(build(filename)) + "\n"
        path = HERE / filename
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("stale (re-run notebooks/_build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
