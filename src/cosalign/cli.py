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

from cosalign.config import ARCHS, DATASETS, DEVICES, ConfigError, class_set_of
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

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
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
        raise ConfigError("--config is required (a YAML file or a preset: minicity, "
                          "gta5_to_cityscapes, synthia_to_cityscapes)")
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


def cmd_eval(args) -> int:
    from cosalign.data.classes import class_set_from_dict
    from cosalign.engine import distributed
    from cosalign.engine.evaluate import evaluate_checkpoint, format_table

    results = evaluate_checkpoint(
        args.checkpoint, data_root=args.data, split=args.split, size=args.size, tta=_tta(args),
        save_predictions=args.save_predictions, out=args.out,
        device=distributed.setup(args.device), progress=not args.quiet, which=args.model)
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
                           fmt=args.format)
    what = ("<path in the input>_trainIds.png, _color.png, _overlay.png" if args.format is None
            else f"{args.format}: <image name>.png")
    print(f"{len(files)} image(s) -> {args.out} ({what})")
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

    print(report(args.runs, args.out, args.baseline, tuple(args.by)))
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


def _add_no_lock(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-lock", action="store_true", help="write without holding the run "
                   "folder's lock (only where the file system cannot lock files)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: the GPU when there is one")


def _add_tta(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("test-time augmentation (off by default: published protocol)")
    g.add_argument("--scales", type=positive_float, nargs="+", default=[1.0])
    g.add_argument("--flip", action="store_true", help="average with the mirrored image")
    g.add_argument("--window", type=positive_int, nargs=2, metavar=("W", "H"),
                   help="sliding window")
    g.add_argument("--stride", type=positive_int, nargs=2, metavar=("X", "Y"))
    g.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                   help="upsample logits with align_corners=True (--no-align-corners: False); "
                        "default: the run's model.align_corners (DeepLab-v2 presets True, "
                        "DAFormer's False)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cosalign", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="MiniCity end to end: source-only vs ours, table + figure")
    d.add_argument("--data", default="data/minicity", help="MiniCity folder (made if missing)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.iters=200")
    d.add_argument("--methods", default="source_only,target_bn,ours",
                   help="comma-separated, source_only first and the method to show last, e.g. "
                   "source_only,dacs,ours_dacs (self-training, ~6 min)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_no_lock(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train one method (resumes when the run has checkpoints)")
    t.add_argument("--config", help="YAML file or preset name")
    t.add_argument("--method", choices=list(METHODS))
    t.add_argument("--out", help="run folder (default runs/<config>_<method>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run (its config by default)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    t.add_argument("--quiet", action="store_true")
    _add_no_lock(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: per-class IoU and mIoU")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", help="dataset root (default: the checkpoint config's val root)")
    e.add_argument("--split", default="val")
    e.add_argument("--size", type=positive_int, nargs=2, metavar=("W", "H"),
                   help="network input size")
    e.add_argument("--save-predictions", type=Path, metavar="DIR")
    e.add_argument("--model", default="student", choices=WHICH,
                   help="a self-training run's student (default, as DACS and DAFormer report) "
                   "or its EMA teacher")
    e.add_argument("--out", type=Path, help="results path without suffix (.json and .md)")
    e.add_argument("--quiet", action="store_true")
    _add_device(e)
    _add_tta(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="segment your own images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, type=Path)
    pr.add_argument("--size", type=positive_int, nargs=2, metavar=("W", "H"))
    pr.add_argument("--format", choices=FORMATS, help="one PNG per image named as the image, "
                    "in a test server's format: trainids (ACDC, Dark Zurich), labelids "
                    "(Cityscapes), color; default: _trainIds, _color and _overlay PNGs")
    pr.add_argument("--quiet", action="store_true")
    _add_device(pr)
    _add_tta(pr)
    pr.set_defaults(func=cmd_predict)

    sc = sub.add_parser("score", help="mIoU of predictions made by any tool")
    sc.add_argument("predictions", type=Path, help="folder of prediction PNGs")
    sc.add_argument("root", help="the dataset's root")
    sc.add_argument("--dataset", required=True, choices=DATASETS)
    sc.add_argument("--split", help="default val (cityscapes, acdc, darkzurich), else train")
    sc.add_argument("--format", default="trainids", choices=SCORE_FORMATS,
                    help="trainids: class indices of the class set; labelids: label ids")
    sc.add_argument("--classes", default="cityscapes", metavar="SET",
                    help="class set: cityscapes, synthia16, synthia13 or a YAML file")
    sc.add_argument("--conditions", nargs="+", default=[], metavar="COND")
    sc.add_argument("--list-file")
    sc.add_argument("--image-suffix", default="")
    sc.add_argument("--label-suffix", default=".png")
    sc.add_argument("--label-values", metavar="FILE")
    sc.add_argument("--out", type=Path, help="also write the results as JSON")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=cmd_score)

    r = sub.add_parser("report", help="results across runs and seeds: tables with paired "
                       "intervals, plots")
    r.add_argument("runs", nargs="+", help="run folders (a folder of runs stands for them all)")
    r.add_argument("--baseline", default="source_only",
                   help="the group gains are paired against (default source_only)")
    r.add_argument("--by", nargs="*", default=[], metavar="KEY",
                   help="config keys that also split groups, e.g. loss.tau")
    r.add_argument("--out", default="runs/report", help="folder for report.md/.csv and plots")
    r.set_defaults(func=cmd_report)

    v = sub.add_parser("viz", help="see the alignment: feature PCA maps, similarity maps")
    v.add_argument("checkpoints", nargs="+", help="e.g. a source-only and an adapted checkpoint "
                   "(before and after); the similarity maps use the last")
    v.add_argument("--out", default="runs/viz")
    v.add_argument("--images", type=positive_int, default=20,
                   help="images per domain in the PCA map")
    _add_device(v)
    v.set_defaults(func=cmd_viz)

    pt = sub.add_parser("pretrain", help="pretrain a MiniCity backbone on randomized scenes "
                        "(ImageNet's part; cached by the hash of what made it)")
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
    pt.add_argument("--iters", type=positive_int, default=3000)
    pt.add_argument("--batch-size", type=positive_int, default=8)
    pt.add_argument("--seed", type=count, default=0)
    pt.add_argument("--workers", type=positive_int, default=2,
                    help="processes rendering the scenes")
    pt.add_argument("--quiet", action="store_true")
    _add_no_lock(pt)
    pt.set_defaults(func=cmd_pretrain)

    data = sub.add_parser("data", help="datasets: make MiniCity, check or convert a tree")
    dsub = data.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make", help="generate MiniCity")
    mk.add_argument("--out", default="data/minicity")
    mk.add_argument("--target-style", default="photo", choices=TARGET_STYLES)
    mk.add_argument("--num-source", type=positive_int, default=600)
    mk.add_argument("--num-target", type=positive_int, default=600)
    mk.add_argument("--seed", type=count, default=0)
    mk.add_argument("--workers", type=positive_int, default=2)
    mk.set_defaults(func=cmd_data_make)
    for name, func, helptext in (("check", cmd_data_check, "is a dataset tree usable?"),
                                 ("convert", cmd_data_convert, "write *_labelTrainIds.png")):
        c = dsub.add_parser(name, help=helptext)
        c.add_argument("root")
        c.add_argument("--dataset", required=True, choices=DATASETS)
        c.add_argument("--split", help="cityscapes, acdc, darkzurich split (check: cityscapes "
                       "default every split present; darkzurich val; else train)")
        c.add_argument("--list-file")
        c.add_argument("--conditions", nargs="+", default=[], metavar="COND",
                       help="acdc: fog night rain snow (default all); darkzurich: night day "
                       "twilight (default night)")
        c.add_argument("--quiet", action="store_true")
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
