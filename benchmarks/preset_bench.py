"""Every preset at its real size on the CPU: generated trees of full-size images in each
dataset's published layout (GTA5 1914x1052, SYNTHIA 1280x760, Cityscapes 2048x1024, ACDC and
Dark Zurich 1920x1080) and generated initial weights in the published layouts (SegFormer's
``mit_b5.pth``, the DeepLab ``Scale.`` ResNet-101 checkpoint); each preset's methods train 2
iterations as the preset sets them (networks, batch, crops, resizes), stopping after the first
with a checkpoint and resuming for the second, then evaluate the 2 full-size val images.

    .venv/bin/python benchmarks/preset_bench.py                       # every preset and method
    .venv/bin/python benchmarks/preset_bench.py --presets gta5_to_cityscapes_daformer \\
        --methods source_only mic                                      # some rows
    .venv/bin/python benchmarks/preset_bench.py --shrink               # small networks, real images

Each row runs in its own process, so that its peak memory (``ru_maxrss``) is its own: s for the
first step (the run's setup excluded: building the network, loading the weights, rare class
sampling's class statistics), s for the second (after the resume), s for the resume's setup and
the evaluation together, and the peak resident memory.
``--shrink`` swaps the networks for small ones (a 1/8-width ResNet-18, MiT-B0 with a 32-wide
head) and keeps everything else: what tests/test_presets.py runs in the suite. A row that fails
prints its error and the table goes on.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.trees: the published layouts the suite writes

from cosalign.config import load_config, preset_names  # noqa: E402

SIZES = {"gta5": (1914, 1052), "synthia": (1280, 760), "cityscapes": (2048, 1024),
         "acdc": (1920, 1080), "darkzurich": (1920, 1080)}
PRESETS = [p for p in preset_names() if p != "minicity"]
# the methods of a preset: source-only, the paper's baselines and ours on DeepLab-v2 (section 4
# of docs/METHOD.md), and the self-training methods its `methods:` section sets up
DEEPLAB_METHODS = ("source_only", "minent", "advent", "ours", "dacs", "ours_dacs")
MIT_METHODS = ("source_only", "ours", "dacs", "ours_dacs", "mic", "ours_mic")
SHRINK = {"deeplabv2": ["model.depth=18", "model.width=0.125"],
          "mit": ["model.arch=mit_b0", "model.embed=32"]}


def preset_methods(preset: str) -> tuple[str, ...]:
    return MIT_METHODS if load_config(preset).model.arch.startswith("mit") else DEEPLAB_METHODS


def make_trees(root: Path) -> dict[str, Path]:
    """One tree per dataset at its real size: 3 GTA5 and SYNTHIA images, Cityscapes train and
    val (2 each), ACDC's four conditions (train and val, one each: 4 and 4), Dark Zurich
    (train night, day, twilight; val night: 1 each)."""
    from tests.trees import make_acdc, make_cityscapes, make_darkzurich, make_gta5, make_synthia

    trees = {"gta5": root / "gta5", "synthia": root / "synthia", "cityscapes": root / "cityscapes",
             "acdc": root / "acdc", "darkzurich": root / "darkzurich"}
    if (root / "done").is_file():
        return trees
    make_gta5(trees["gta5"], n=3, size=SIZES["gta5"], odd_one=False)
    make_synthia(trees["synthia"], n=3, size=SIZES["synthia"])
    for split in ("train", "val"):
        make_cityscapes(trees["cityscapes"], split, per_city=1, size=SIZES["cityscapes"])
    make_acdc(trees["acdc"], ("fog", "night", "rain", "snow"), per_seq=1, size=SIZES["acdc"])
    make_darkzurich(trees["darkzurich"], per_seq=1, size=SIZES["darkzurich"])
    (root / "done").touch()
    return trees


def make_weights(root: Path, arch: str, shrink: bool) -> Path:
    """An ImageNet file in the published layout of the preset's network (random values)."""
    from cosalign.config import ModelConfig
    from cosalign.models import build_model
    from cosalign.models.mit import MiT

    torch.manual_seed(0)
    if arch.startswith("mit"):
        preset = "b0" if shrink else arch[-2:]
        path = root / f"mit_{preset}.pth"
        if not path.is_file():
            state = MiT(preset).state_dict()
            width = state["norm4.weight"].shape[0]
            torch.save({"state_dict": {**state, "head.weight": torch.zeros(1000, width),
                                       "head.bias": torch.zeros(1000)}}, path)
        return path
    depth, width = (18, 0.125) if shrink else (101, 1.0)
    path = root / f"deeplab_r{depth}_{width}.pth"
    if not path.is_file():
        model = build_model(ModelConfig(depth=depth, width=width), 19)
        state = {f"Scale.{k[len('backbone.'):]}": v for k, v in model.state_dict().items()
                 if k.startswith("backbone.")}
        state["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(19, 2048, 3, 3)
        torch.save(state, path)
    return path


def overrides(preset: str, trees: dict[str, Path], weights: Path, shrink: bool) -> list[str]:
    cfg = load_config(preset)
    sets = [f"data.{d}.root={trees[getattr(cfg.data, d).dataset]}"
            for d in ("source", "target", "val")]
    sets += [f"model.weights={weights}", "data.workers=0", "data.source.list_file=null",
             "train.iters=2", "train.log_every=1", "train.eval_every=0",
             "train.checkpoint_every=1", "train.device=cpu"]
    if shrink:
        sets += SHRINK["mit" if cfg.model.arch.startswith("mit") else "deeplabv2"]
    return sets


def labelled_pixels(cfg) -> int:
    """Labelled pixels of the val images at their files' full resolution."""
    from cosalign.data import build_dataset

    val = build_dataset(cfg.data.val, cfg.data, train=False)
    return sum(int((val[i]["label"] != 255).sum()) for i in range(len(val)))


def run_row(preset: str, method: str, root: Path, shrink: bool, extra: list[str]) -> dict:
    """Train 2 iterations (a stop after the first, a resume), evaluate; in this process."""
    from cosalign.engine.logger import read_metrics
    from cosalign.engine.train import train
    from cosalign.methods import method_config

    trees = make_trees(root / "trees")  # made by the caller: reused
    weights = make_weights(root, load_config(preset).model.arch, shrink)
    cfg = method_config(preset, overrides(preset, trees, weights, shrink) + extra, method)
    run = Path(tempfile.mkdtemp(dir=root))
    assert train(cfg, run, progress=False, stop_at=1) is None
    t0 = time.perf_counter()
    results = train(cfg, run, progress=False)
    second = time.perf_counter() - t0
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    steps = [r["sec"] for r in rows]  # each call's seconds since its loop started
    return {"preset": preset, "method": method, "arch": cfg.model.arch,
            "batch": cfg.data.batch_size, "amp": cfg.train.amp,
            "step1_s": steps[0], "step2_s": steps[1],
            "eval_s": second - steps[1],
            "scored_pixels": sum(map(sum, results["confusion"])),
            "labelled_pixels": labelled_pixels(cfg),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "terms": sorted(k for k in rows[-1] if k not in ("kind", "iter", "lr", "sec"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: each preset's (DeepLab-v2: {', '.join(DEEPLAB_METHODS)}; "
                        f"MiT: {', '.join(MIT_METHODS)})")
    p.add_argument("--shrink", action="store_true", help="small networks, real image sizes")
    p.add_argument("--root", type=Path, default=Path("runs/preset_bench"),
                   help="where the trees, weights and runs go (reused)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides for every row, e.g. train.amp=bf16")
    p.add_argument("--row", nargs=2, metavar=("PRESET", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(2)
    args.root.mkdir(parents=True, exist_ok=True)
    if args.row:
        print(json.dumps(run_row(*args.row, args.root, args.shrink, args.set)))
        return
    make_trees(args.root / "trees")
    for preset in args.presets:
        make_weights(args.root, load_config(preset).model.arch, args.shrink)
    print("| preset | method | network | batch | precision | s/step (1st) | s/step (after "
          "resume) | resume + eval of the val images (s) | peak MiB |\n"
          + "|---" * 9 + "|", flush=True)
    for preset in args.presets:
        for method in args.methods or preset_methods(preset):
            cmd = [sys.executable, __file__, "--row", preset, method, "--root", str(args.root),
                   "--set", *args.set]
            out = subprocess.run(cmd + (["--shrink"] if args.shrink else []),
                                 capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {preset} | {method} | failed: {last} ||||||", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {preset} | {method} | {r['arch']} | {r['batch']} + {r['batch']} | "
                  f"{'fp32' if r['amp'] == 'none' else r['amp']} | {r['step1_s']:.1f} | "
                  f"{r['step2_s']:.1f} | {r['eval_s']:.1f} | "
                  f"{r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
