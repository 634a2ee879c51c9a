"""Command line: ``python -m pytorch_utils {train,models,recipes,predict,export,report}``; flags become Recipe
fields and library errors are printed as one line (exit code 2) instead of a traceback."""
import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import List, Optional

from pytorch_utils import __version__
from pytorch_utils.errors import PytorchUtilsError

EPILOG = """examples:
  python -m pytorch_utils train --model s10_resnet --data synthetic --epochs 2
  python -m pytorch_utils train --recipe strixbee_l1 --data ../shared/data/cifar10-jpeg.zip --epochs 1 \\
      --train-limit 2000 --test-limit 1000
  python -m pytorch_utils train --recipe s8_c100 --data cifar100 --download --resume
  python -m pytorch_utils train --recipe wrn_c10 --set tta=flip --set 'model_kwargs={"dropout": 0.2}'
  python -m pytorch_utils models
  python -m pytorch_utils predict --run runs/s10 photo.jpg my_images/ --top-k 3
  python -m pytorch_utils export --run runs/s10 --format onnx
  python -m pytorch_utils report --run runs/s10
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs); flag choices read the package's name lists."""
    from pytorch_utils.data.transforms import list_presets
    from pytorch_utils.exporting import EXPORT_FORMATS
    from pytorch_utils.recipes.base import LOADER_KINDS, OPTIMIZERS
    from pytorch_utils.train.schedules import SCHEDULES
    from pytorch_utils.train.tta import TTA_MODES
    from pytorch_utils.utils import AMP_MODES

    parser = argparse.ArgumentParser(prog="python -m pytorch_utils", description=(
        "Train CIFAR-10/100 classifiers with the pytorch_utils recipes, or list models and recipes."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pytorch_utils {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,models,recipes,predict,export,report}")

    t = sub.add_parser("train", help="train a recipe or a model", epilog=EPILOG, description=(
        "Train a registered recipe (--recipe) or a model with the default recipe (--model). Prints one line per "
        "epoch and the final test accuracy; writes history.json, summary.json, run.json and checkpoints/ under "
        "--out-dir."), formatter_class=argparse.RawDescriptionHelpFormatter)
    what = t.add_argument_group("what to train")
    what.add_argument("--recipe", default=None, help="registered recipe (see `recipes`); default: 'default'")
    what.add_argument("--model", default=None, help="registered model (see `models`); overrides the recipe's model")
    what.add_argument("--data", default=None, help="synthetic | cifar10 | cifar100 | path to a folder or .zip laid "
                                                   "out as train|test/<class>/*.jpg (default: the recipe's data set)")
    what.add_argument("--root", default="./data", help="folder for torchvision CIFAR files (default ./data)")
    what.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs internet)")
    what.add_argument("--train-limit", type=int, default=None, help="train on a stratified subset of this size")
    what.add_argument("--test-limit", type=int, default=None, help="test on a stratified subset of this size")
    what.add_argument("--smoke", action="store_true", help="the smoke profile: a tiny run of the whole recipe (1 epoch "
                      "or --epochs on 256/128 images or the limits, batch 32 or --batch-size, a 20-step LR sweep; "
                      "schedules and phases scaled to fit), data synthetic unless --data")
    how = t.add_argument_group("how (each overrides the recipe field of the same name)")
    how.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's, e.g. 24 for s10)")
    how.add_argument("--batch-size", type=int, help="batch size per step (per rank under torchrun; default: recipe's)")
    how.add_argument("--lr", type=float, help="peak learning rate set by hand: replaces the LR finder and sets the "
                                              "schedule's max_lr (min_lr = lr / 10 for One Cycle)")
    how.add_argument("--optimizer", choices=OPTIMIZERS.names())
    how.add_argument("--augmentation", choices=list_presets(), help="train preset (default: the recipe's)")
    how.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the recipe's)")
    how.add_argument("--amp", choices=AMP_MODES, help="mixed precision (auto: bf16/fp16 on CUDA, fp32 on the CPU)")
    how.add_argument("--loader", choices=LOADER_KINDS, help="gpu: data on the GPU, batched augmentation (auto: CUDA)")
    how.add_argument("--num-workers", type=int, help="DataLoader workers (default: min(cpus, 8))")
    how.add_argument("--seed", type=int)
    how.add_argument("--accumulate-steps", type=int, help="one step per N batches (effective batch: N x --batch-size)")
    how.add_argument("--no-lr-finder", action="store_true", help="skip the LR finder; peak at --lr (or recipe's lr)")
    how.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe field, "
                     f"value as JSON or text (repeatable); schedules (also in phases): {', '.join(SCHEDULES)}")
    run = t.add_argument_group("run")
    run.add_argument("--out-dir", default=None, help="output folder (default runs/<recipe>)")
    run.add_argument("--device", default=None, help="cpu | cuda | cuda:1 | mps (default: best available)")
    run.add_argument("--strict-device", action="store_true", help="fail when --device is missing (no CPU fallback)")
    run.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoints' newest intact file "
                     "(error if none)")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bars (epoch lines are still printed)")
    run.add_argument("--quiet", action="store_true", help="print only the final result")
    run.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard scalars to "
                     "<out-dir>/tensorboard (pip install \"pytorch_utils[tensorboard]\")")

    m = sub.add_parser("models", help="list registered models with parameter counts")
    m.add_argument("--num-classes", type=int, default=10)
    sub.add_parser("recipes", help="list registered recipes")

    p = sub.add_parser("predict", help="top-k classes for image files or folders, with a trained run", description=(
        "Load a run (best checkpoint, EMA weights when it kept an EMA) or an exported file and print the top-k "
        "classes of each image (resized to the training size). A folder's unreadable file is skipped with a warning; "
        "the exit code is 2 when no image could be read."))
    p.add_argument("--run", required=True, help="run folder (--out-dir of train) or a file written by export")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation: softmax averaged over "
                   "mirrored (flip) and shifted (flip_translate) copies, as evaluation does (default none)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--trust-code", action="store_true", help="also load TorchScript (.pt from export), a program that "
                   "runs when loaded: only a file you trust (run folders and ONNX files need no trust)")
    e = sub.add_parser("export", help="export a trained run to TorchScript or ONNX (plus a metadata .json)",
                       description="Write the run's model (EMA weights when it kept an EMA) and <file>.json with its "
                                   "classes, mean/std and input size, checked against the eager model's outputs.")
    e.add_argument("--run", required=True, help="run folder (--out-dir of train)")
    e.add_argument("--format", choices=EXPORT_FORMATS, default="torchscript")
    e.add_argument("--out", default=None, help="file to write (default <run>/model.pt or <run>/model.onnx)")
    r = sub.add_parser("report", help="rebuild a run's report (plots, per-class table) from its folder", description=(
        "Write the report of a run folder, also of a run cut off mid-way (its newest checkpoint): curves, LR-finder "
        "plot, misclassified and GradCAM grids, confusion matrix, per-class precision/recall/F1, index.html."))
    r.add_argument("--run", required=True, help="run folder (--out-dir of train)")
    r.add_argument("--out", default=None, help="folder to write (default <run>/report)")
    r.add_argument("--data", default=None, help="where the run's test set is now (default: run.json's data)")
    r.add_argument("--root", default="./data", help="folder for torchvision CIFAR files (default ./data)")
    for q in (p, e, r):
        q.add_argument("--last", action="store_true", help="use the newest checkpoint instead of best.pt")
    return parser


def _cmd_models(args) -> int:
    import torch

    from pytorch_utils.models import count_parameters, create_model, list_models

    print(f"{'model':<14} {'parameters':>12}   ({args.num_classes} classes)")
    for name in list_models():
        with torch.device("meta"):  # counts without allocating 36M-parameter weights
            model = create_model(name, num_classes=args.num_classes)
        print(f"{name:<14} {count_parameters(model):>12,}")
    return 0


def _cmd_recipes(args) -> int:
    from pytorch_utils.recipes import get_recipe, list_recipes

    for name in list_recipes():
        r = get_recipe(name)
        print(f"{name:<12} {r.model:<12} {r.epochs:>4} ep  {r.description}")
    return 0


def _cmd_train(args) -> int:
    from pytorch_utils.recipes import get_recipe, run_recipe, smoke_recipe
    from pytorch_utils.recipes.base import parse_override
    from pytorch_utils.train.distributed import cleanup_distributed, is_main_process

    recipe = get_recipe(args.recipe or "default")
    overrides = {"model": args.model} if args.model else {}
    if args.model and not args.recipe:  # a model without a recipe names the run
        overrides["name"] = args.model
    for flag in ("epochs", "batch_size", "optimizer", "augmentation", "amp", "tta", "loader", "num_workers", "seed",
                 "train_limit", "test_limit", "accumulate_steps", "tensorboard"):  # None: the recipe's own value
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = None if value == "none" else value
    for item in args.set:
        overrides.update(parse_override(recipe, item))
    smoke = {k: overrides.pop(k) for k in ("epochs", "train_limit", "test_limit", "batch_size") if k in overrides}
    recipe = recipe.replace(**overrides)
    if args.smoke:
        recipe = smoke_recipe(recipe, args.data or "synthetic", **smoke)
    elif smoke:
        recipe = recipe.replace(**smoke)
    if args.lr is not None or args.no_lr_finder:
        recipe = recipe.with_peak_lr(args.lr if args.lr is not None else recipe.lr)
    result = run_recipe(recipe, data=args.data, out_dir=args.out_dir, device=args.device,
                        device_fallback=not args.strict_device, resume="required" if args.resume else False,
                        root=args.root, download=args.download, progress=not (args.no_progress or args.quiet))
    main_process = is_main_process()
    cleanup_distributed()  # a no-op outside torchrun
    if not main_process:  # under torchrun only rank 0 reports
        return 0
    final = result.final
    if final.get("test_acc") is not None:
        print(f"final test accuracy: {final['test_acc']:.2f}% (best {final['best_test_acc']:.2f}% at epoch "
              f"{final['best_epoch']}) after {final['epochs_run']} epoch{'s' * (final['epochs_run'] != 1)}, "
              f"{final['seconds']:.1f}s on {final['device']}")
    print(f"history: {result.out_dir / 'history.json'}")
    return 0


def _cmd_predict(args) -> int:
    from pytorch_utils.inference import load_run, predict

    # stdout holds the results alone (a table or JSON, for `| head` or a file): notes (resizing, skips) go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        run = load_run(args.run, which="last" if args.last else "best", trust_code=args.trust_code)
        results = predict(run, args.images, top_k=args.top_k, tta=args.tta)
    if args.json:  # JSON escapes control characters itself
        print(json.dumps(results, indent=2))
        return 0
    width = max(len(printable(r["input"])) for r in results)
    for r in results:
        top = "  ".join(f"{printable(c)} {p * 100:5.1f}%" for c, p in zip(r["classes"], r["probs"]))
        print(f"{printable(r['input']):<{width}}  {top}")
    return 0


def _cmd_export(args) -> int:
    from pytorch_utils.exporting import export
    from pytorch_utils.inference import load_run

    run = load_run(args.run, which="last") if args.last and Path(args.run).is_dir() else args.run  # a file: refused
    export(run, args.out or Path(args.run) / ("model.onnx" if args.format == "onnx" else "model.pt"), args.format)
    return 0  # export logs the one line naming both files


def _cmd_report(args) -> int:
    from pytorch_utils.viz import report_run

    paths = report_run(args.run, args.out, data=args.data, last=args.last, root=args.root)
    print(f"report: {printable(paths.get('index_html') or ', '.join(map(str, paths.values())) or 'nothing written')}")
    return 0


def printable(text: str) -> str:
    """``text`` (a class name, a path, a message) with control, format (bidi, zero-width), line/paragraph separator and
    surrogate characters escaped (ESC -> ``\\x1b``, newline -> ``\\x0a``, U+202E -> ``\\u202e``): text from files can
    neither move the cursor, start a line of its own, reorder or hide what is printed, nor fail to encode."""
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else c.encode("unicode_escape").decode())
                   if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in str(text))


# A Python argument in a library message (``out_dir``, ``amp='bf16'``), not inside quotes or a path ('runs/out_dir').
_ARGUMENT = re.compile(r"(?<![\w/.'\"-])([a-z][a-z0-9_]*)"  # a name, not inside a path or quotes
                       r"(?:=('[^']*'|\"[^\"]*\"|[^\s,;)]*))?(?![\w/.-])")  # optionally =value


def cli_message(text: str, parser: argparse.ArgumentParser) -> str:
    """A library message with Python argument names spelled as the subcommand ``parser``'s flags: ``train_limit`` ->
    ``--train-limit``, ``download=True`` -> ``--download``, ``resume=False`` -> ``without --resume``,
    ``amp='bf16'`` -> ``--amp bf16``, a field with no flag ``num_classes=10`` -> ``--set num_classes=10``,
    ``recipe field 'seed'`` -> ``--seed`` (``--set grad_clip`` without a flag). Plain words without ``_`` or ``=``
    are left alone ("device")."""
    from pytorch_utils.recipes.base import Recipe

    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")}
    if "out" in flags:  # export and report write to --out: the library's out_dir
        flags["out_dir"] = flags["out"]
    fields = {f.name for f in dataclasses.fields(Recipe)} if "set" in flags else set()  # only train has --set

    def spell(match: "re.Match") -> str:
        name, value = match.group(1), match.group(2)
        action = flags.get(name)
        if value is None:
            return action.option_strings[-1] if action is not None and "_" in name else match.group(0)
        if action is None:
            return f"--set {name}={value}" if name in fields else match.group(0)
        flag = action.option_strings[-1]
        if action.nargs == 0:  # store_true
            return flag if value == "True" else f"without {flag}" if value == "False" else match.group(0)
        value = value if " " in value else value.strip("'\"")  # a quoted path with spaces stays quoted
        return f"{flag} {'none' if value == 'None' else value}" if value else flag

    def field(match: "re.Match") -> str:
        name = match.group(1)
        return flags[name].option_strings[-1] if name in flags else f"--set {name}" if name in fields \
            else match.group(0)

    return _ARGUMENT.sub(spell, re.sub(r"\brecipe field '([a-z][a-z0-9_]*)'", field, text))


COMMANDS = {"train": _cmd_train, "models": _cmd_models, "recipes": _cmd_recipes, "predict": _cmd_predict,
            "export": _cmd_export, "report": _cmd_report}  # subcommand -> function


def main(argv: Optional[List[str]] = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 for a clear user error, 130 when interrupted, 141 when the
    reader of the output went away, as in ``models | head``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Messages name the flags of the subcommand the user typed (`models` has a --num-classes, `train` has not).
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]

    def rewrite(record: logging.LogRecord) -> bool:  # the package's log notes name flags too
        record.msg, record.args = printable(cli_message(record.getMessage(), command)), None
        return True

    package_log = logging.getLogger("pytorch_utils")
    level, handlers = package_log.level, list(package_log.handlers)
    if getattr(args, "quiet", False):  # epoch lines and notes go through the package logger
        package_log.setLevel(logging.WARNING)
    for handler in handlers:
        handler.addFilter(rewrite)
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False  # a closed pipe: no traceback per line
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit, where it could no longer be caught
        return code
    except BrokenPipeError:  # quiet, as Unix tools are; stdout goes to devnull so Python's exit flush cannot fail
        with contextlib.suppress(OSError, ValueError):  # (a stdout without a file descriptor: tests, notebooks)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except PytorchUtilsError as exc:
        print(f"error: {printable(cli_message(str(exc), command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoints already written are kept; continue with --resume", file=sys.stderr)
        return 130
    finally:  # main() also runs inside notebooks and tests: leave the logger as it was
        package_log.setLevel(level)
        logging.raiseExceptions = raise_exceptions
        for handler in handlers:
            handler.removeFilter(rewrite)


if __name__ == "__main__":
    sys.exit(main())
