"""The ``cosalign`` command line: demo, train, eval, predict, score, report, viz, pretrain,
data {make, check, convert}.

Errors about the user's input (missing dataset, bad config key, unreadable checkpoint), a run
folder another command is writing, and a file that cannot be written (a full disk) print one line
naming the file and what was expected, and exit with code 2; a diverged run exits with 1; Ctrl-C
and SIGTERM print one line and exit with 130 and 143.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosalign import __version__
from cosalign.config import (
    ARCHS,
    DATASETS,
    DEVICES,
    ConfigError,
    class_set_of,
    preset_names,
)
from cosalign.engine.checkpoint import WHICH
from cosalign.engine.inference import FORMATS
from cosalign.engine.score import FORMATS as SCORE_FORMATS
from cosalign.methods.table import METHODS
from cosalign.minicity.styles import TARGET_STYLES


def _user_errors() -> tuple[type[Exception], ...]:
    from cosalign.data.classes import ClassSetError
    from cosalign.data.dataset import DatasetError
    from cosalign.engine.checkpoint import CheckpointError
    from cosalign.engine.distributed import DeviceError
    from cosalign.engine.logger import MetricsError
    from cosalign.models.weights import WeightsError
    from cosalign.outputs import OutputError

    return (ConfigError, DatasetError, CheckpointError, DeviceError, WeightsError, OutputError,
            MetricsError, ClassSetError)


def cmd_demo(args) -> int:
    from cosalign.demo import run_demo

    methods = tuple(args.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method {unknown[0]!r}; expected some of "
                          f"{', '.join(METHODS)}, source_only first")
    run_demo(args.data, args.out, args.set, progress=not args.quiet, methods=methods,
             lock=not args.no_lock)
    return 0


def cmd_train(args) -> int:
    from cosalign.engine import distributed
    from cosalign.engine.evaluate import format_table
    from cosalign.engine.train import train
    from cosalign.methods import method_config

    run_dir = Path(args.resume or args.out or "")
    config = args.config
    if args.resume and config is None:
        config = str(run_dir / "config.yaml")
        if not Path(config).is_file():
            raise ConfigError(f"{config}: no config in the run to resume; pass --config")
    if config is None:
        raise ConfigError("--config is required (a YAML file or a preset: "
                          + ", ".join(preset_names()) + ")")
    cfg = method_config(config, args.set, method=args.method)
    if not args.resume and not args.out:
        run_dir = Path("runs") / f"{Path(config).stem}_{args.method or 'default'}"
    results = train(cfg, run_dir, progress=not args.quiet, lock=not args.no_lock)
    if distributed.is_main():
        print(format_table({run_dir.name: results}, cfg.data.classes, class_set_of(cfg)))
    distributed.cleanup()
    return 0


def cmd_data_make(args) -> int:
    from dataclasses import replace

    from cosalign.minicity import STYLES, MiniCitySpec, make_minicity

    spec = replace(MiniCitySpec(), target_style=STYLES[args.target_style], seed=args.seed,
                   num_target_train=args.num_target, num_source=args.num_source)
    written = make_minicity(Path(args.out), spec, workers=args.workers)
    print(f"{args.out}: {'written' if written else 'already up to date'}")
    return 0


def _tta(args):
    from cosalign.engine.tta import TTA

    return TTA(scales=tuple(args.scales), flip=args.flip,
               window=tuple(args.window) if args.window else None,
               stride=tuple(args.stride) if args.stride else None,
               align_corners=args.align_corners)


def _add_published_config(p) -> None:
    p.add_argument("--config", help="the network of a DAFormer, HRDA or MIC checkpoint: a "
                   "preset (" + ", ".join(preset_names()) + ") or YAML file; its val data too")


def cmd_eval(args) -> int:
    from cosalign.data.classes import class_set_from_dict
    from cosalign.engine import distributed
    from cosalign.engine.evaluate import evaluate_checkpoint, format_table

    results = evaluate_checkpoint(
        args.checkpoint, data_root=args.data, split=args.split, size=args.size, tta=_tta(args),
        save_predictions=args.save_predictions, out=args.out,
        device=distributed.setup(args.device), progress=not args.quiet, which=args.model,
        config=args.config)
    print(f"{results['images']} images, {results['protocol']}")
    classes = class_set_from_dict(results["class_set"])
    for subset in results["miou"]:
        print(format_table({"IoU (%)": results}, subset, classes) + "\n")
    return 0


def cmd_predict(args) -> int:
    from cosalign.engine import distributed
    from cosalign.engine.inference import predict_images

    files = predict_images(args.checkpoint, args.images, args.out, size=args.size, tta=_tta(args),
                           device=distributed.setup(args.device), progress=not args.quiet,
                           fmt=args.format, which=args.model, config=args.config)
    what = ("<path in the input>_trainIds.png, _color.png, _overlay.png" if args.format is None
            else f"{args.format}: <image name>.png")
    print(f"{len(files)} image(s) -> {args.out} ({what})")
    return 0


def cmd_memory(args) -> int:
    from cosalign.engine.memory import PRECISIONS, estimate_memory
    from cosalign.methods.table import method_config

    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"--precisions: expected fp32, bf16 or fp16, got {bad[0]!r}")
    presets = preset_names() if args.config == ["all"] else args.config
    cfgs = {p: method_config(p, args.set, args.method) for p in presets}  # all checked first
    gib = 2 ** 30
    print("| config | method | precision | batch | weights | grads | optimizer | copies | "
          "dictionary | step | total GiB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg in cfgs.items():
        for precision in args.precisions:
            e = estimate_memory(cfg, precision, args.batch)
            parts = [e.weights, e.grads, e.optimizer, e.copies, e.dictionary, e.step]
            print(f"| {name} | {args.method} | {precision} | {args.batch or cfg.data.batch_size} | "
                  + " | ".join(f"{b / gib:.2f}" for b in parts) + f" | **{e.total / gib:.1f}** |",
                  flush=True)
    return 0


def cmd_score(args) -> int:
    import json

    from cosalign.config import DomainConfig
    from cosalign.data import check_domain
    from cosalign.data.classes import load_class_set
    from cosalign.engine.evaluate import format_table
    from cosalign.engine.score import score

    class_set = load_class_set(args.classes)
    split = args.split or ("val" if args.dataset in ("cityscapes", "acdc", "darkzurich")
                           else "train")
    domain = DomainConfig(dataset=args.dataset, root=args.root, split=split,
                          list_file=args.list_file, conditions=args.conditions,
                          image_suffix=args.image_suffix, label_suffix=args.label_suffix,
                          label_values=args.label_values)
    try:
        check_domain(domain, class_set)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    subsets = list(class_set.subset_names)
    if args.out is not None:
        from cosalign.outputs import writable_file

        writable_file(args.out, "--out file")
    results = score(args.predictions, domain, class_set, subsets, args.format,
                    progress=not args.quiet)
    print(f"{results['images']} images of {args.dataset} {split} at {args.root}, "
          f"{args.format} predictions in {args.predictions}")
    for subset in subsets:
        print(format_table({"IoU (%)": results}, subset, class_set) + "\n")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_report(args) -> int:
    from cosalign.report import report

    print(report(args.runs, args.out, args.baseline, tuple(args.by), args.mixed_input_sizes))
    print(f"wrote {args.out}/report.md, report.csv, miou.png and train.png")
    return 0


def cmd_viz(args) -> int:
    from cosalign.engine import distributed
    from cosalign.viz_alignment import run_viz

    run_viz(args.checkpoints, args.out, images=args.images, device=distributed.setup(args.device))
    print(f"wrote {args.out}/features.png and {args.out}/similarity.png")
    return 0


def cmd_pretrain(args) -> int:
    from cosalign.runlock import run_lock

    if args.arch.startswith("mit_"):
        from cosalign.minicity.pretrain_mit import MiTPretrainSpec, pretrain_mit

        out = args.out or f"data/pretrain_{args.arch}"
        spec = MiTPretrainSpec(images=args.images, iters=args.iters,
                               batch_size=args.batch_size, seed=args.seed, arch=args.arch,
                               embed=args.embed or MiTPretrainSpec.embed)
        with run_lock(out, not args.no_lock):
            weights = pretrain_mit(out, spec, workers=args.workers, progress=not args.quiet)
        print(f"use it with: --set model.arch={args.arch} model.weights={weights}")
        return 0
    if args.embed is not None:
        raise ConfigError(f"--embed: the width of a MiT's pretraining head, for --arch mit_*; "
                          f"got --embed {args.embed} with --arch {args.arch}")
    from cosalign.minicity.pretrain import PretrainSpec, bundled_is_current, pretrain

    spec = PretrainSpec(images=args.images, iters=args.iters, batch_size=args.batch_size,
                        seed=args.seed)
    out = args.out or "data/pretrain"
    with run_lock(out, not args.no_lock):
        weights = pretrain(out, spec, workers=args.workers, progress=not args.quiet)
    print(f"use it with: --set model.weights={weights}")
    if spec == PretrainSpec():
        print("the copy shipped with the package (model.weights=minicity_pretrained) is "
              + ("made by this same spec and code" if bundled_is_current() else
                 "OUT OF DATE: copy this file over src/cosalign/weights/minicity_pretrained.pt"))
    return 0


def cmd_data_check(args) -> int:
    from cosalign.config import DomainConfig
    from cosalign.data import check_domain
    from cosalign.data.check import check_splits
    from cosalign.data.classes import load_class_set

    class_set = load_class_set(args.classes)
    domain = DomainConfig(dataset=args.dataset, root=args.root, split=args.split or "train",
                          conditions=args.conditions, image_suffix=args.image_suffix,
                          label_suffix=args.label_suffix, label_values=args.label_values)
    try:
        check_domain(domain, class_set)
    except ValueError as e:
        raise ConfigError(f"--{str(e).split(':')[0].replace('_', '-')}: "
                          f"{str(e).split(': ', 1)[1]}") from None
    reports = check_splits(args.root, args.dataset, args.split, args.list_file,
                           progress=not args.quiet, class_set=class_set,
                           conditions=args.conditions, image_suffix=args.image_suffix,
                           label_suffix=args.label_suffix, label_values=args.label_values)
    print("\n\n".join(r.format() for r in reports))
    if len(reports) > 1:
        bad = [r.split for r in reports if not r.usable]
        print(f"\n{len(reports)} splits ({', '.join(r.split for r in reports)}): "
              + (f"NOT usable ({', '.join(bad)})" if bad else "all usable"))
    return 0 if all(r.usable for r in reports) else 1


def cmd_data_convert(args) -> int:
    from cosalign.data.check import convert_labels

    if args.conditions:
        raise ConfigError("--conditions: data convert converts every condition's labels")
    n = convert_labels(args.root, args.dataset, args.split or "train", args.list_file,
                       args.force, progress=not args.quiet)
    print(f"wrote {n} *_labelTrainIds.png file(s) under {args.root}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``cosalign eval: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, strict: bool):
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if x < low or (strict and x == low):
            raise argparse.ArgumentTypeError(
                f"expected {'>' if strict else '>='} {low}, got {text!r}")
        return x
    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 0, strict=True)
count = _number(int, 0, strict=False)  # >= 0
positive_float = _number(float, 0, strict=True)


class Formatter(argparse.HelpFormatter):
    """Help with each option's default (where it has one) and the examples kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, ListAction):
            return f"{self._metavar_formatter(action, default_metavar)(1)[0]}[,...]"
        return super()._format_args(action, default_metavar)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default not in
                (None, False, [], argparse.SUPPRESS) and not isinstance(default, bool)):
            shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
            text += f" (default: {shown})"
        return text


class ListAction(argparse.Action):
    """A list option: comma-separated (``--scales 0.75,1,1.25``), the one syntax of every list
    on the command line; space-separated values (``--scales 0.75 1 1.25``) are accepted too.
    ``type`` converts each item."""

    def __init__(self, option_strings, dest, item=str, **kwargs):
        self.item = item
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v.strip() for value in values for v in value.split(",") if v.strip()]
        try:
            setattr(namespace, self.dest, [self.item(v) for v in items])
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument {option_string}: {e}")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add(sub, name: str, help: str, description: str, *examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, epilog=_examples(*examples),
                          formatter_class=Formatter)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_no_lock(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-lock", action="store_true", help="write without holding the run "
                   "folder's lock (only where the file system cannot lock files)")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, after the preset and the method, e.g. "
                   "train.iters=2000 align.tau=0.6 data.target.conditions=fog,night; every key "
                   "is in src/cosalign/config.py")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: the GPU when there is one, else the CPU")


def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conditions", action=ListAction, default=[], metavar="COND",
                   help="acdc: some of fog,night,rain,snow (default all four); darkzurich: some "
                   "of night,day,twilight (default night)")


def _add_tta(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("test-time augmentation (off by default: the published protocol)")
    g.add_argument("--scales", action=ListAction, item=positive_float, default=[1.0],
                   metavar="S", help="input scales whose softmax outputs are averaged")
    g.add_argument("--flip", action="store_true", help="average with the mirrored image")
    g.add_argument("--window", type=positive_int, nargs=2, metavar=("W", "H"),
                   help="slide a window of this size over the input instead of one pass "
                   "(default: the whole image)")
    g.add_argument("--stride", type=positive_int, nargs=2, metavar=("X", "Y"),
                   help="the sliding window's step (default: two thirds of --window)")
    g.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                   help="upsample logits with align_corners=True (--no-align-corners: False); "
                        "default: the run's model.align_corners (DeepLab-v2 presets True, "
                        "DAFormer's False)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cosalign", formatter_class=Formatter, description=(
        "Unsupervised domain adaptation for semantic segmentation: the cosine alignment of "
        "Chung, Kim, Kwak (WACV 2022) with source-only, MinEnt, AdvEnt, DACS, DAFormer and MIC "
        "in one training loop, on GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich, your own "
        "folders, or MiniCity (generated; no dataset or GPU needed)."),
        epilog=_examples("cosalign demo", "cosalign train --config minicity --method ours",
                         "cosalign train --help") + "\n\ndocs: README.md and docs/USAGE.md")
    p.add_argument("--version", action="version", version=f"cosalign {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    methods = ", ".join(METHODS)

    d = _add(sub, "demo", "MiniCity end to end: source-only, the BatchNorm control and ours",
             "Generate MiniCity if missing, train source-only to iteration 500 from the shipped "
             "backbone, branch each other method off that checkpoint to 1,000, evaluate on "
             "MiniCity's target val, print the per-class table and write results.json, "
             "figure.png, features.png and similarity.png to --out. 3-4 min on 2 AMX or "
             "AVX512-BF16 cores, 9 on 2 AVX2-only cores. Run again, it replaces its own "
             "earlier runs and nothing else.",
             "cosalign demo",
             "cosalign demo --methods source_only,dacs,ours_dacs --out runs/demo_st",
             "cosalign demo --set model.weights=null model.bn=train --out runs/demo_scratch")
    d.add_argument("--data", default="data/minicity", help="MiniCity folder (made if missing)")
    d.add_argument("--out", default="runs/demo", help="folder for the runs, results and figures")
    _add_set(d)
    d.add_argument("--methods", action=ListAction, metavar="METHOD",
                   default=["source_only", "target_bn", "ours"],
                   help=f"source_only first and the method to show last; of {methods}")
    _add_quiet(d)
    _add_no_lock(d)
    d.set_defaults(func=cmd_demo)

    t = _add(sub, "train", "train one method (resumes when the run has checkpoints)",
             "Train a method on a preset or a YAML config. A run folder with checkpoints "
             "resumes where it stopped; Ctrl-C or SIGTERM stops after the step with a "
             "checkpoint. Writes config.yaml, metrics.jsonl, checkpoints and the final "
             "evaluation to the run folder.",
             "cosalign train --config minicity --method ours --out runs/mini_ours",
             "cosalign train --config gta5_to_cityscapes_daformer --method mic --out runs/mic "
             "--set data.source.root=data/gta5 data.target.root=data/cityscapes "
             "data.val.root=data/cityscapes model.weights=data/mit_b5.pth",
             "cosalign train --resume runs/mini_ours")
    t.add_argument("--config", help="a YAML file or a preset: " + ", ".join(preset_names()))
    t.add_argument("--method", choices=list(METHODS), metavar="METHOD",
                   help=f"one of {methods} (default: the config's loss weights as they are)")
    t.add_argument("--out", help="run folder (default runs/<config>_<method>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run (its config by default)")
    _add_set(t)
    _add_quiet(t)
    _add_no_lock(t)
    t.set_defaults(func=cmd_train)

    e = _add(sub, "eval", "evaluate a checkpoint: per-class IoU and mIoU",
             "Score a checkpoint on a labelled split at the run's evaluation size, logits "
             "upsampled to the labels' resolution; writes eval_<split>.json and .md next to "
             "the checkpoint (or at --out).",
             "cosalign eval --checkpoint runs/mini_ours/ckpt_0001000.pt",
             "cosalign eval --checkpoint runs/gta5_ours/ckpt_0120000.pt --data data/cityscapes "
             "--save-predictions runs/gta5_ours/pred",
             "cosalign eval --checkpoint runs/gta5_ours/ckpt_0120000.pt --scales 0.75,1,1.25 "
             "--flip",
             "cosalign eval --checkpoint iter_40000_relevant.pth --config "
             "gta5_to_cityscapes_hrda --data data/cityscapes")
    e.add_argument("--checkpoint", required=True,
                   help="a checkpoint file (ckpt_*.pt), or one of DAFormer's, HRDA's or MIC's "
                   "(with --config)")
    _add_published_config(e)
    e.add_argument("--data", help="dataset root (default: the checkpoint config's val root)")
    e.add_argument("--split", default="val", help="the split to score")
    e.add_argument("--size", type=positive_int, nargs=2, metavar=("W", "H"),
                   help="network input size (default: the run's data.val.size)")
    e.add_argument("--save-predictions", type=Path, metavar="DIR",
                   help="also write each prediction as a trainId PNG")
    e.add_argument("--model", default="student", choices=WHICH,
                   help="a self-training run's student (as DACS and DAFormer report) or its "
                   "EMA teacher")
    e.add_argument("--out", type=Path, help="results path without suffix (.json and .md)")
    _add_quiet(e)
    _add_device(e)
    _add_tta(e)
    e.set_defaults(func=cmd_eval)

    pr = _add(sub, "predict", "segment your own images",
              "Segment image files or folders with a checkpoint. By default each image gets "
              "_trainIds.png, _color.png and _overlay.png, named by its path inside the input "
              "folder; --format writes one PNG per image named as the image, as test servers "
              "take them.",
              "cosalign predict --checkpoint runs/gta5_ours/ckpt_0120000.pt my_photos/ "
              "--out my_predictions",
              "cosalign predict --checkpoint runs/cs2acdc/ckpt_0120000.pt "
              "data/acdc/rgb_anon/night/test --format trainids --out submit/",
              "cosalign predict --checkpoint mic_hrda.pth --config gta5_to_cityscapes_hrda "
              "my_photos/ --out my_predictions")
    pr.add_argument("--checkpoint", required=True,
                    help="a checkpoint file (ckpt_*.pt), or one of DAFormer's, HRDA's or MIC's "
                    "(with --config)")
    _add_published_config(pr)
    pr.add_argument("--model", default="student", choices=WHICH,
                    help="a self-training run's student or its EMA teacher")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, type=Path, help="output folder (not inside an input)")
    pr.add_argument("--size", type=positive_int, nargs=2, metavar=("W", "H"),
                    help="network input size (default: the run's data.val.size)")
    pr.add_argument("--format", choices=FORMATS, help="one PNG per image named as the image, "
                    "in a test server's format: trainids (ACDC, Dark Zurich), labelids "
                    "(Cityscapes), color (default: _trainIds, _color and _overlay PNGs)")
    _add_quiet(pr)
    _add_device(pr)
    _add_tta(pr)
    pr.set_defaults(func=cmd_predict)

    sc = _add(sub, "score", "mIoU of predictions made by any tool",
              "Score a folder of prediction PNGs against a labelled split: per-class IoU and "
              "mIoU over every subset of the class set, the same numbers as cosalign eval. A "
              "missing, extra, doubled or mis-sized prediction is one line naming the file.",
              "cosalign score my_predictions/ data/cityscapes --dataset cityscapes "
              "--format labelids",
              "cosalign score my_predictions/ data/acdc --dataset acdc --split val "
              "--conditions night",
              "cosalign score preds/ own/val --dataset folder --classes mini5.yaml")
    sc.add_argument("predictions", type=Path, help="folder of prediction PNGs")
    sc.add_argument("root", help="the dataset's root")
    sc.add_argument("--dataset", required=True, choices=DATASETS, help="the tree's layout")
    sc.add_argument("--split", help="default val (cityscapes, acdc, darkzurich), else train")
    sc.add_argument("--format", default="trainids", choices=SCORE_FORMATS,
                    help="trainids: class indices of the class set; labelids: label ids")
    sc.add_argument("--classes", default="cityscapes", metavar="SET",
                    help="class set: cityscapes, synthia16, synthia13 or a YAML file")
    _add_conditions(sc)
    sc.add_argument("--list-file", help="score only the images this file lists")
    sc.add_argument("--image-suffix", default="", help="folder: what ends an image file name "
                    "after its path (default: any image extension)")
    sc.add_argument("--label-suffix", default=".png", help="folder: the same for labels")
    sc.add_argument("--label-values", metavar="FILE",
                    help="folder: the tree's own values map onto the class set")
    sc.add_argument("--out", type=Path, help="also write the results as JSON")
    _add_quiet(sc)
    sc.set_defaults(func=cmd_score)

    mem = _add(sub, "memory", "estimate a preset's peak GPU memory without a GPU",
               "Run one training step of a method on fake tensors (shapes, no data) and add up "
               "what it holds: weights, gradients, the optimizer's state, the teacher and "
               "frozen copies, and the step's activations at their peak, per precision. Not "
               "counted: the CUDA context and the allocator's cache (a GPU shows more).",
               "cosalign memory --config gta5_to_cityscapes_hrda --method mic",
               "cosalign memory --config gta5_to_cityscapes_daformer --method dacs "
               "--precisions bf16 --batch 4",
               "cosalign memory --config all --method dacs")
    mem.add_argument("--config", required=True, action=ListAction,
                     help="presets or YAML files, or all: " + ", ".join(preset_names()))
    mem.add_argument("--method", default="dacs", choices=list(METHODS), metavar="METHOD",
                     help=f"one of {methods}")
    mem.add_argument("--precisions", action=ListAction, default=["fp32", "bf16", "fp16"],
                     metavar="P", help="autocast precisions: fp32 (none), bf16, fp16")
    mem.add_argument("--batch", type=positive_int, help="images per domain (default: the "
                     "config's data.batch_size)")
    _add_set(mem)
    mem.set_defaults(func=cmd_memory)

    r = _add(sub, "report", "results across runs and seeds: tables with paired intervals, plots",
             "Group finished runs by method (and by --by keys) and seed; write report.md and "
             "report.csv (per-class IoU and mIoU, mean and std over seeds, each group's gain "
             "over the baseline paired by seed with a 95% Student's t interval), miou.png and "
             "train.png. Reads run folders only: no checkpoint or GPU needed.",
             "cosalign report runs/gta5_*_seed* --baseline source_only --out runs/report",
             "cosalign report runs/sweep --by align.tau --out runs/report_tau",
             "cosalign report benchmarks/records/ablation-v2/seed*/fog_mit_* --by run "
             "--baseline 'dacs [run=fog_mit_DACS]'")
    r.add_argument("runs", nargs="+", help="run folders (a folder of runs stands for them all)")
    r.add_argument("--baseline", default="source_only",
                   help="the group gains are paired against: a method, or with --by, a group "
                   "as the table names it, e.g. 'dacs [run=NAME]'")
    r.add_argument("--by", action=ListAction, default=[], metavar="KEY",
                   help="config keys that also split groups, e.g. align.tau; run: the run "
                   "folder's name")
    r.add_argument("--mixed-input-sizes", action="store_true",
                   help="compare runs evaluated at other network input sizes (data.val.size; "
                   "labels are scored at full resolution either way), e.g. a half-resolution "
                   "baseline against HRDA")
    r.add_argument("--out", default="runs/report", help="folder for report.md/.csv and plots")
    r.set_defaults(func=cmd_report)

    v = _add(sub, "viz", "see the alignment: feature PCA maps, similarity maps",
             "features.png: source and target features at labelled positions mapped to 2-D by "
             "PCA, one panel per checkpoint; similarity.png: for target images, the prediction, "
             "each position's highest cosine to its predicted class's dictionary entries, and "
             "which positions pass tau.",
             "cosalign viz runs/demo/source_only/ckpt_0001000.pt "
             "runs/demo/ours/ckpt_0001000.pt --out runs/viz")
    v.add_argument("checkpoints", nargs="+", help="e.g. a source-only and an adapted checkpoint "
                   "(before and after); the similarity maps use the last")
    v.add_argument("--out", default="runs/viz", help="folder for features.png, similarity.png")
    v.add_argument("--images", type=positive_int, default=20,
                   help="images per domain in the PCA map")
    _add_device(v)
    v.set_defaults(func=cmd_viz)

    pt = _add(sub, "pretrain", "pretrain a MiniCity backbone on randomized scenes (ImageNet's "
              "part)",
              "Train a backbone to segment 14 materials of MiniCity's street layouts under a "
              "random appearance per image and keep the encoder: MiniCity's stand-in for "
              "ImageNet weights. Cached by the hash of the settings and code that made it. 14 "
              "min on 2 AVX2 cores (ResNet), 29 (mit_b0).",
              "cosalign pretrain --out data/pretrain",
              "cosalign pretrain --arch mit_b0")
    pt.add_argument("--out", help="folder for backbone.pt (default data/pretrain, or "
                    "data/pretrain_ARCH for a transformer)")
    pt.add_argument("--arch", choices=ARCHS, default="deeplabv2",
                    help="the network whose encoder to pretrain: the MiniCity ResNet (shipped) "
                    "or a MiT for model.arch=mit_* (its head is MiniCity's DAFormer head)")
    pt.add_argument("--embed", type=positive_int, default=None,
                    help="with a MiT: the pretraining head's width (default 32; dropped "
                    "afterwards)")
    pt.add_argument("--images", type=positive_int, default=2000,
                    help="scenes rendered (a tenth held out)")
    pt.add_argument("--iters", type=positive_int, default=3000, help="training iterations")
    pt.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    pt.add_argument("--seed", type=count, default=0, help="the scenes' and the run's seed")
    pt.add_argument("--workers", type=positive_int, default=2,
                    help="processes rendering the scenes")
    _add_quiet(pt)
    _add_no_lock(pt)
    pt.set_defaults(func=cmd_pretrain)

    data = sub.add_parser("data", help="datasets: make MiniCity, check or convert a tree",
                          formatter_class=Formatter, epilog=_examples(
                              "cosalign data make --out data/minicity",
                              "cosalign data check data/gta5 --dataset gta5",
                              "cosalign data convert data/gta5 --dataset gta5"))
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    mk = _add(dsub, "make", "generate MiniCity",
              "Generate MiniCity: a game-like source in GTA5's layout and a target in "
              "Cityscapes' layout, byte for byte the same on every machine.",
              "cosalign data make --out data/minicity",
              "cosalign data make --out data/minicity_fog --target-style fog")
    mk.add_argument("--out", default="data/minicity", help="the folder to write")
    mk.add_argument("--target-style", default="photo", choices=TARGET_STYLES,
                    help="the target domain's appearance")
    mk.add_argument("--num-source", type=positive_int, default=600, help="source images")
    mk.add_argument("--num-target", type=positive_int, default=600,
                    help="target images (train and val)")
    mk.add_argument("--seed", type=count, default=0, help="the scenes' seed")
    mk.add_argument("--workers", type=positive_int, default=2, help="rendering processes")
    mk.set_defaults(func=cmd_data_make)
    for name, func, helptext, description, examples in (
            ("check", cmd_data_check, "is a dataset tree usable?",
             "Count images and labels, find unpaired, unreadable and mis-sized files and label "
             "values outside the class set, print the class histogram; exit 0 means usable "
             "(cosalign train refuses what it rejects).",
             ("cosalign data check data/cityscapes --dataset cityscapes",
              "cosalign data check data/acdc --dataset acdc --conditions fog,night",
              "cosalign data check own/val --dataset folder --classes mini5.yaml "
              "--image-suffix _leftImg8bit.png --label-suffix _gtFine_labelIds.png")),
            ("convert", cmd_data_convert, "write *_labelTrainIds.png",
             "Write each label file's class indices next to it as *_labelTrainIds.png, which "
             "the readers then prefer (optional: labels are mapped on the fly otherwise).",
             ("cosalign data convert data/gta5 --dataset gta5",
              "cosalign data convert data/cityscapes --dataset cityscapes --split val"))):
        c = _add(dsub, name, helptext, description, *examples)
        c.add_argument("root", help="the dataset's root")
        c.add_argument("--dataset", required=True, choices=DATASETS, help="the tree's layout")
        c.add_argument("--split", help="cityscapes, acdc, darkzurich split (check: cityscapes "
                       "default every split present; darkzurich val; else train)")
        c.add_argument("--list-file", help="only the images this file lists")
        _add_conditions(c)
        _add_quiet(c)
        if name == "convert":
            c.add_argument("--force", action="store_true", help="rewrite existing files")
        else:
            c.add_argument("--classes", default="cityscapes", metavar="SET",
                           help="class set: cityscapes, synthia16, synthia13 or a YAML file")
            c.add_argument("--image-suffix", default="", help="folder: what ends an image "
                           "file name after its path (default: any image extension)")
            c.add_argument("--label-suffix", default=".png", help="folder: the same for labels")
            c.add_argument("--label-values", metavar="FILE",
                           help="folder: the tree's own values map onto the class set")
        c.set_defaults(func=func)
    return p


def _raise_stopped(signum, frame):
    from cosalign.engine.stop import Stopped

    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import errno
    import signal
    import threading

    from cosalign.engine.stop import Stopped
    from cosalign.engine.train import NonFiniteLoss
    from cosalign.outputs import WRITE_ERRORS

    # SIGTERM as Ctrl-C: one line, exit 143 (training installs its own handlers, which stop
    # after the step with a checkpoint); put back afterwards, since tests call main in-process
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:  # a training says where it stopped and what is intact
        print(e if e.where else f"{e}: cosalign {args.command} did not finish", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"stopped by Ctrl-C (SIGINT): cosalign {args.command} did not finish",
              file=sys.stderr)
        return 130
    except OSError as e:  # a file no part of cosalign expected to fail on
        if e.errno not in WRITE_ERRORS:
            raise
        # a permission may be a read's; a full disk, a quota or a read-only one is a write's
        what = "cannot access" if e.errno in (errno.EACCES, errno.EPERM) else "cannot write"
        print(f"error: {e.filename or 'a file'}: {what}: {WRITE_ERRORS[e.errno]}",
              file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
