"""The MiniCity ablation as data (docs/results/minicity.md): a table of experiments, one small
runner that caches each run by name, and every table printed by ``cosalign report``.

    .venv/bin/python benchmarks/minicity_ablation.py list              # the plan, what is done
    .venv/bin/python benchmarks/minicity_ablation.py run regimes       # one group, in plan order
    .venv/bin/python benchmarks/minicity_ablation.py run regimes --steps 4   # its first 4 steps
    .venv/bin/python benchmarks/minicity_ablation.py run mit --only 4     # its 4th step alone
    .venv/bin/python benchmarks/minicity_ablation.py report            # every table again
    .venv/bin/python benchmarks/minicity_ablation.py classes "pretrained DACS" \
        "pretrained DACS + RCS"       # per-class gains over a run name, paired by seed

Groups, in the order they were run: ``sweep`` (stage 1: every switch of the method on seed 0,
scored on a *selection split*, the last 100 images of the target train split with labels that
training never reads), ``gap`` (the source-only -> oracle gap and the premise, seeds 1-3),
``collapse``, ``methods`` (regime (a), seeds 1-5), ``frozen`` (regime (b), seeds 1-15),
``regimes`` ((c), (c) with BatchNorm frozen, weights chosen on the selection split, the fog and
dusk targets, AdvEnt and ours + MinEnt everywhere).

Protocol. Every run trains the MiniCity preset for ``train.iters``. An experiment either
branches off a source-only *warm-up* of its seed at ``branch`` (the warm-up is trained once per
seed and base, with checkpoints at 250, 500 and 750), so it shares everything with source-only
up to there, or trains from scratch (``branch=None``). A run folder is
``runs/ablation-v2/seed<N>/<folder name>`` (:func:`folder_name`: the experiment's name in
characters a shell needs no quotes for, ``ours + DACS`` -> ``ours+DACS``). A finished run is
*recorded*: its ``config.yaml``, ``metrics.jsonl`` and ``done.json`` are copied to
``benchmarks/records/ablation-v2/seed<N>/<folder name>`` (committed, ~5 KB a run), so
the tables print from a clean clone, and a recorded run is never trained again: an interrupted
ablation continues where it stopped, and one whose ``runs/`` was lost keeps what it recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cosalign.data import build_dataset
from cosalign.engine.checkpoint import (
    checkpoint_iteration,
    checkpoint_name,
    list_checkpoints,
    load_trained,
)
from cosalign.engine.train import train
from cosalign.losses import ClassFeatureDictionary
from cosalign.losses.cosine import flatten_normalized
from cosalign.minicity import STYLES, MiniCitySpec, make_minicity, minicity_config
from cosalign.minicity.pretrain_mit import pretrain_mit
from cosalign.report import load_run, paired_gain, report

# MiniCity v2 (docs/METHOD.md section 9). The v1 tables of docs/results/minicity.md were made
# by this runner at commit 7369110 (v1 scenes and protocol) into runs/ablation.
OUT = Path("runs/ablation-v2")
RECORDS = Path("benchmarks/records/ablation-v2")  # what the tables read (see the docstring)
RECORDED = ("config.yaml", "metrics.jsonl", "done.json")  # done.json last: a whole record
DATA = {"photo": Path("data/minicity"), "fog": Path("data/minicity_fog"),
        "dusk": Path("data/minicity_dusk")}
WARMUP_ITERS = (250, 500, 750)
PRETRAINED = ("model.weights=minicity_pretrained", "model.bn=affine_frozen")
FROZEN = ("model.bn=frozen",)
SELECTION = "<selection split>"  # stands for the overrides of :func:`selection_overrides`
# the overrides of a warm-up and of every run branched off it (or trained from scratch on it)
BASES: dict[str, tuple[str, ...]] = {
    "warmup": (), "warmup-pretrained": PRETRAINED,
    "select-warmup": (SELECTION,), "select-warmup-pretrained": (*PRETRAINED, SELECTION),
}
SEEDS = (1, 2, 3, 4, 5)  # fixed before the regimes were run
# The transformer on MiniCity (docs/METHOD.md section 11): MiT-B0 with a 32-wide
# DAFormer head (its step costs 1.7x the DeepLab's on the CPU; docs/PERFORMANCE.md), its
# encoder from `cosalign pretrain --arch mit_b0` (not shipped: made on first use), DAFormer's
# optimizer (AdamW, weight decay 0.01, head lr x10, poly 1.0 after a linear warm-up of 40
# iterations, DAFormer's 1,500 of 40,000 at MiniCity's 1,000), MIC's 32-pixel patches of a
# 512 crop scaled to MiniCity's 192x96 crops (12: 16 x 8 patches). The learning rate is chosen
# on the selection split (seed 0, source-only) before the seeds run.
MIT_WEIGHTS = Path("data/pretrain_mit_b0/backbone.pt")
MIT = ("model.arch=mit_b0", "model.embed=32", f"model.weights={MIT_WEIGHTS}", "loss.aux=0",
       "optim.name=adamw", "optim.weight_decay=0.01", "optim.power=1.0",
       "optim.warmup_iters=40", "selftrain.mask_patch=12")
MIT_LRS = ("6e-5", "2e-4", "6e-4")  # DAFormer's fine-tuning rate, x3, x10 (the pretraining's)
BASES |= {"select-warmup-mit": (*MIT, SELECTION),
          **{f"warmup-mit lr={lr}": (*MIT, f"optim.lr={lr}") for lr in MIT_LRS}}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of the table: ``method`` with ``overrides`` (from the branch point on), on the
    ``base`` warm-up's settings, branched at ``branch`` (None: from scratch), with MiniCity's
    ``target`` style, on ``seeds``."""

    method: str
    overrides: tuple[str, ...] = ()
    base: str = "warmup"
    branch: int | None = 500
    target: str = "photo"
    seeds: tuple[int, ...] = SEEDS


# the target's train split with its labels as the source, read as the target is (384x192,
# the preset's 192x96 crops)
ORACLE = ("data.source.dataset=cityscapes", f"data.source.root={DATA['photo'] / 'cityscapes'}",
          "data.source.list_file=null", "data.source.size=[384, 192]")
# the methods of every regime: display name -> (method, overrides)
METHODS = {
    "source-only": ("source_only", ()),
    "target BN only (no loss)": ("target_bn", ()),
    "MinEnt (1e-3, ADVENT)": ("minent", ()),
    "AdvEnt (1e-3, ADVENT)": ("advent", ()),
    "ours": ("ours", ()),
    "ours + MinEnt": ("ours_minent", ()),
    "DACS": ("dacs", ()),
    "ours + DACS": ("ours_dacs", ()),
}
# regime -> (run-name prefix, base, overrides from the branch point on)
REGIMES = {"a": ("final", "warmup", ()), "b": ("frozen-bn", "warmup", FROZEN),
           "c": ("pretrained", "warmup-pretrained", ()),
           "c-frozen": ("pretrained frozen-bn", "warmup-pretrained", FROZEN)}


def regime(name: str, methods: tuple[str, ...], seeds=SEEDS, target: str = "photo",
           label: str = "") -> dict[str, Experiment]:
    """The ``methods`` in regime ``name``, paired with its source-only."""
    prefix, base, branch = REGIMES[name]
    out = {}
    for m in methods:
        method, overrides = METHODS[m]
        display = "BatchNorm control" if (name == "a" and method == "target_bn") else m
        out[f"{label}{prefix} {display}"] = Experiment(method, (*overrides, *branch), base,
                                                       target=target, seeds=seeds)
    return out


KEY = ("source-only", "target BN only (no loss)", "MinEnt (1e-3, ADVENT)", "ours")
NO_CONTROL = ("source-only", "MinEnt (1e-3, ADVENT)", "ours")  # BatchNorm frozen: the control
# is source-only itself
MINENT_WEIGHTS = {"MinEnt (1e-2)": ("loss.ent=0.01", "loss.ent_aux=0.002"),
                  "MinEnt (1e-1)": ("loss.ent=0.1", "loss.ent_aux=0.02")}
CANDIDATES = {  # weights tried on the selection split in (c), seed 0 (the first: the default)
    "ours": (("loss.cos=0.1",), ("loss.cos=0.01",), ("loss.cos=1",)),
    "minent": (("loss.ent=0.001", "loss.ent_aux=0.0002"), ("loss.ent=0.01", "loss.ent_aux=0.002"),
               ("loss.ent=0.1", "loss.ent_aux=0.02")),
}
# what the selection chose (docs/results/minicity.md): ours kept 0.1; MinEnt 0.1, run on
# seeds 1-5 where it differs from the default
SELECTED = {"selected pretrained MinEnt loss.ent=0.1 loss.ent_aux=0.02":
            Experiment("minent", CANDIDATES["minent"][2], "warmup-pretrained")}


def sweep(quantiles: dict[str, float]) -> dict[str, Experiment]:
    """Stage 1: one switch at a time around the preset, seed 0, the selection split; the
    thresholds tau at measured quantiles of S at the warm-up."""
    def ours(*overrides: str, branch: int | None = 500) -> Experiment:
        return Experiment("ours", overrides, "select-warmup", branch, seeds=(0,))

    v = {"source-only": Experiment("source_only", (), "select-warmup", seeds=(0,)),
         "BatchNorm control": Experiment("target_bn", (), "select-warmup", seeds=(0,)),
         "MinEnt (1e-3, ADVENT)": Experiment("minent", (), "select-warmup", seeds=(0,)),
         **{n: Experiment("minent", w, "select-warmup", seeds=(0,))
            for n, w in MINENT_WEIGHTS.items()},
         "baseline": ours()}
    for lam in (0.001, 0.01, 0.1, 1.0):
        v[f"lambda={lam:g}"] = ours(f"loss.cos={lam}")
    for q, tau in quantiles.items():
        v[f"tau={tau:.2f} ({q} of S)"] = ours(f"align.tau={tau:.3f}")
    switches = (("align.match", ("max", "all")), ("align.class_restrict", ("none", "pseudo")),
                ("align.reference", ("batch",)), ("dictionary.capacity", (50, 200, 1000)),
                ("dictionary.per_image", (1, 16)), ("dictionary.enqueue", ("mean",)),
                ("model.feature_layer", ("layer4_pre", "layer3")))
    for key, values in switches:
        short = {"dictionary.capacity": "Q", "model.feature_layer": "features"}.get(
            key, key.split(".")[1])
        for value in values:
            v[f"{short}={value}"] = ours(f"{key}={value}")
    for s in (0, *WARMUP_ITERS):
        v[f"start_iter={s}"] = ours(f"align.start_iter={s}", branch=s or None)
    return v


GAP = {  # the gap and the premise: from scratch, seeds 1-3
    "gap: source-only": Experiment("source_only", (), branch=None, seeds=(1, 2, 3)),
    "gap: source-only, no photometric jitter": Experiment(
        "source_only", ("data.source.photometric=0",), branch=None, seeds=(1, 2, 3)),
    "gap: target-trained oracle, rerun": Experiment("source_only", ORACLE, branch=None,
                                                    seeds=(1, 2, 3)),
    "pretrained gap: target-trained oracle": Experiment("source_only", ORACLE,
                                                        "warmup-pretrained", None, seeds=SEEDS),
}
COLLAPSE = {"collapse": Experiment("ours", ("align.class_restrict=none", "loss.cos=1",
                                            "train.eval_every=50", "train.log_every=10"),
                                   seeds=(0,))}

SELF_TRAINING = ("source-only", "ours", "DACS", "ours + DACS")
# the switches of ours + DACS chosen on the selection split (seed 0) before seeds 1-5 ran
ALIGN_SWITCHES = {f"on={on} pseudo={who}": (f"selftrain.align_on={on}",
                                            f"selftrain.align_pseudo={who}")
                  for on in ("clean", "mixed") for who in ("student", "teacher")}

# the groups of the plan: each an ordered list of steps (most informative first)
PLAN: dict[str, list[tuple[str, dict[str, Experiment]]]] = {
    "gap": [("the gap and the premise, from scratch and from the pretrained backbone", GAP)],
    "collapse": [("a collapsing run, evaluated every 50 iterations", COLLAPSE)],
    "methods": [
        ("(a): the key methods, seeds 1-5", regime("a", KEY)),
        ("(a): ours + MinEnt and MinEnt at other weights, seeds 1-3", {
            **regime("a", ("ours + MinEnt",), seeds=(1, 2, 3)),
            **{f"final {n}": Experiment("minent", w, seeds=(1, 2, 3))
               for n, w in MINENT_WEIGHTS.items()}}),
    ],
    # seeds 1-5 planned, 6-10 added after seeing 1-5, 11-15 a confirmation fixed beforehand
    "frozen": [("(b): BatchNorm frozen from the branch point, seeds 1-15",
                regime("b", NO_CONTROL, seeds=tuple(range(1, 16))))],
    "selftrain": [
        ("(c), selection split, seed 0: DACS, and ours + DACS with each alignment switch", {
            "select-c source-only": Experiment("source_only", (), "select-warmup-pretrained",
                                               seeds=(0,)),
            "select-c DACS": Experiment("dacs", (), "select-warmup-pretrained", seeds=(0,)),
            **{f"select-c ours + DACS {n}": Experiment("ours_dacs", o, "select-warmup-pretrained",
                                                       seeds=(0,))
               for n, o in ALIGN_SWITCHES.items()},
            # then lambda_cos for the best switches (on=mixed pseudo=student: 44.23 against
            # 44.22, 44.08, 44.08 and DACS's 44.22)
            **{f"select-c ours + DACS on=mixed pseudo=student lambda={lam}": Experiment(
                "ours_dacs", (*ALIGN_SWITCHES["on=mixed pseudo=student"], f"loss.cos={lam}"),
                "select-warmup-pretrained", seeds=(0,)) for lam in ("0.01", "1")}}),
        ("(c), photo: source-only, ours, DACS, ours + DACS, seeds 1-5",
         regime("c", SELF_TRAINING)),
        ("(c): the target-trained oracle, seeds 1-5",
         {k: v for k, v in GAP.items() if k.startswith("pretrained")}),
        ("(c), fog target", regime("c", SELF_TRAINING, target="fog", label="fog ")),
        ("(c), dusk target", regime("c", SELF_TRAINING, target="dusk", label="dusk ")),
    ],
    "regimes": [
        ("(c): source-only, the control, MinEnt, ours", regime("c", KEY)),
        ("(c): the target-trained oracle",
         {k: v for k, v in GAP.items() if k.startswith("pretrained")}),
        ("(c, BN frozen): source-only, MinEnt, ours", regime("c-frozen", NO_CONTROL)),
        ("AdvEnt in (c)", regime("c", ("AdvEnt (1e-3, ADVENT)",))),
        ("(a): the target-trained oracle, re-run",
         {k: v for k, v in GAP.items() if k.endswith("rerun")}),
        ("(c): weights on the selection split (seed 0), then the chosen ones on seeds 1-5", {
            "select-c source-only": Experiment("source_only", (), "select-warmup-pretrained",
                                               seeds=(0,)),
            **{f"select-c {'MinEnt (1e-3, ADVENT)' if m == 'minent' else m} {' '.join(w)}":
               Experiment(m, w, "select-warmup-pretrained", seeds=(0,))
               for m, ws in CANDIDATES.items() for w in ws},
            **SELECTED}),
        ("AdvEnt in (c, BN frozen)", regime("c-frozen", ("AdvEnt (1e-3, ADVENT)",))),
        ("(c) with the fog target", regime("c", KEY, target="fog", label="fog ")),
        ("(c) with the dusk target", regime("c", KEY, target="dusk", label="dusk ")),
        ("AdvEnt in (a) and (b)", {**regime("a", ("AdvEnt (1e-3, ADVENT)",)),
                                   **regime("b", ("AdvEnt (1e-3, ADVENT)",))}),
        ("ours + MinEnt in (b), (c), (c, BN frozen)",
         {k: v for r in ("b", "c", "c-frozen") for k, v in regime(r, ("ours + MinEnt",)).items()}),
    ],
}

PLAN["v2"] = [  # MiniCity v2, most informative first; seeds 1-5 fixed before running
    ("(c): the target-trained oracle, seeds 1-3 (every class >= 20 IoU?)",
     {"pretrained gap: target-trained oracle": Experiment(
         "source_only", ORACLE, "warmup-pretrained", None, seeds=(1, 2, 3))}),
    ("(c): source-only, the BatchNorm control, ours", regime(
        "c", ("source-only", "target BN only (no loss)", "ours"))),
    ("(c), photo: DACS and ours + DACS", regime("c", ("DACS", "ours + DACS"))),
    ("(c), photo: DACS with rare class sampling, and with the feature distance", {
        # rcs_min_pixels was then a share of the label (0.0015 of 320x180: more than 86
        # pixels) and the crop was not re-drawn; the same run in today's absolute terms
        "pretrained DACS + RCS": Experiment(
            "dacs", ("data.rcs_temperature=0.01", "data.rcs_min_pixels=86",
                     "data.rcs_min_crop_ratio=0"), "warmup-pretrained"),
        "pretrained DACS + FD": Experiment("dacs", ("loss.fd=0.005",), "warmup-pretrained")}),
    # split on 2026-12-03 after MinEnt's and AdvEnt's seed 1 (an AdvEnt run takes ~17 min here,
    # MinEnt ~4): MinEnt's five seeds first
    ("(c): MinEnt", regime("c", ("MinEnt (1e-3, ADVENT)",))),
    ("(c): AdvEnt", regime("c", ("AdvEnt (1e-3, ADVENT)",))),
    # moved before fog and dusk on 2026-12-03 (two runs that complete a table to 5 seeds)
    ("(c): the target-trained oracle, seeds 4-5",
     {"pretrained gap: target-trained oracle": Experiment(
         "source_only", ORACLE, "warmup-pretrained", None, seeds=(4, 5))}),
    ("(c), fog target", regime("c", SELF_TRAINING, target="fog", label="fog ")),
    ("(c), dusk target", regime("c", SELF_TRAINING, target="dusk", label="dusk ")),
]


PLAN["mit"] = [  # the transformer on MiniCity v2, most informative first; later steps follow
    # from this one's choice (mit_steps)
    ("the MiT's learning rate: source-only on the selection split, seed 0",
     {f"select-mit source-only lr={lr}": Experiment(
         "source_only", (f"optim.lr={lr}",), "select-warmup-mit", None, seeds=(0,))
      for lr in MIT_LRS}),
]
MIT_METHODS = {"source-only": "source_only", "DACS": "dacs", "MIC": "mic",
               "ours + DACS": "ours_dacs", "ours + MIC": "ours_mic"}

# The transformer again once DAFormer's step was made faithful to its code (docs/METHOD.md
# section 14): DAFormer's EMA (the running mean from the student it starts as), logits
# upsampled without corners, mmseg's cross-entropy mean over all pixels; and, in every run of
# the code since, the teacher without dropout and stochastic depth, kornia's colour jitter,
# a blur sigma per image, the heads' mmcv initialization (so the stand-in encoder is remade)
# and mmcv's warm-up. The learning rate stays the one the selection split chose (6e-4);
# seeds 1-5 fixed before running, 1-3 first, photo and dusk. In fp32 on every machine
# (train.amp=none), as the earlier MiT table: under bf16 autocast on an AMX CPU, seed 1's MIC
# stopped on a NaN source loss that did not recur from its last checkpoint (the results page).
MIT_REF = ("model.align_corners=false", "loss.seg_reduction=all", "selftrain.ema=daformer",
           "train.amp=none")
BASES |= {"warmup-mit-ref lr=6e-4": (*MIT, "optim.lr=6e-4", *MIT_REF)}
MIT_REF_METHODS = {m: MIT_METHODS[m] for m in ("DACS", "MIC", "ours + DACS", "ours + MIC")}


def _ref_cells(seeds: tuple[int, ...], targets: tuple[str, ...]) -> dict[str, Experiment]:
    return {f"{'' if target == 'photo' else target + ' '}mit-ref {m}": Experiment(
        method, (), "warmup-mit-ref lr=6e-4", target=target, seeds=seeds)
            for target in targets for m, method in MIT_REF_METHODS.items()}


# photo's seeds 1-3 before dusk's, so that the first table with intervals comes first
PLAN["mit-ref"] = [("photo, seeds 1-3", _ref_cells((1, 2, 3), ("photo",))),
                   ("dusk, seeds 1-3", _ref_cells((1, 2, 3), ("dusk",))),
                   ("photo and dusk, seeds 4-5", _ref_cells((4, 5), ("photo", "dusk")))]


# HRDA on MiniCity (issue 44; docs/METHOD.md section 15), fixed before any run: HRDA's ratios
# at MiniCity's scale. Cityscapes at 2048x1024 is MiniCity's target at 384x192 (x0.1875):
# HRDA's 1024 outer crop -> 192x192 (the full height), its context at half resolution 96x96,
# its 512 detail crop -> 96x96 (boxes on multiples of 8), the test's 1024 windows -> 192
# (stride 96: 3 windows over 384x192), MIC's 64 blocks of 1024 -> 12 of 192; the attention head
# as wide as the main head (32; HRDA's is 256 with a 256-wide head). The source at its rendered
# 320x180, padded to 192 rows as HRDA pads. No pseudo-label margins (MiniCity's images have no
# rectification border). Against it DAFormer's DACS at the matching low resolution: both
# domains at half size (target 192x96, source 160x90) with 96x96 crops, evaluated at 192x96,
# the input HRDA's context sees. Both branch off their own source-only warm-up at 500, as the
# mit-ref plan; fp32; seeds 1-5, 1-3 first, photo then dusk.
HRDA = (*MIT, "optim.lr=6e-4", *MIT_REF, "model.hrda.enabled=true",
        "model.hrda.detail_crop=96,96", "model.hrda.window=192,192",
        "model.hrda.attention_embed=32", "data.source.crop=192,192",
        "data.target.crop=192,192", "selftrain.mask_patch=12")
LOWRES = (*MIT, "optim.lr=6e-4", *MIT_REF, "data.source.size=160,90",
          "data.source.crop=96,96", "data.target.size=192,96", "data.target.crop=96,96",
          "data.val.size=192,96", "selftrain.mask_patch=6")
BASES |= {"warmup-hrda": HRDA, "warmup-lowres": LOWRES}
HRDA_METHODS = {"HRDA": "dacs", "MIC(HRDA)": "mic", "ours + HRDA": "ours_dacs",
                "ours + MIC(HRDA)": "ours_mic"}


def _hrda_cells(seeds: tuple[int, ...], targets: tuple[str, ...]) -> dict[str, Experiment]:
    cells = {}
    for target in targets:
        label = "" if target == "photo" else target + " "
        cells[f"{label}lowres DACS"] = Experiment("dacs", (), "warmup-lowres", target=target,
                                                  seeds=seeds)
        cells |= {f"{label}hrda {m}": Experiment(method, (), "warmup-hrda", target=target,
                                                 seeds=seeds)
                  for m, method in HRDA_METHODS.items()}
    return cells


# Which features the alignment pulls on (issue 44, point 4), added 2026-12-06 after seed 1 of
# step 1 (except ours + MIC(HRDA)) had run and before any of this: the detail crop's head map
# instead of the context's, against ours + HRDA (context, the default), photo seeds 1-3.
DETAIL = "hrda ours + HRDA (detail features)"
PLAN["hrda"] = [("photo, seeds 1-3", _hrda_cells((1, 2, 3), ("photo",))),
                ("dusk, seeds 1-3", _hrda_cells((1, 2, 3), ("dusk",))),
                ("photo and dusk, seeds 4-5", _hrda_cells((4, 5), ("photo", "dusk"))),
                ("the alignment on the detail features, photo, seeds 1-3", {DETAIL: Experiment(
                    "ours_dacs", ("model.hrda.align_features=detail",), "warmup-hrda",
                    seeds=(1, 2, 3))})]


def chosen_mit_lr() -> str | None:
    """The rule fixed before the selection ran: the learning rate whose source-only run scores
    the highest mIoU on the selection split (the lower one on a tie); None until all ran."""
    scores = {}
    for lr in MIT_LRS:
        folder = record_of(0, f"select-mit source-only lr={lr}")
        if not (folder / "done.json").is_file():
            return None
        run = load_run(folder)
        scores[lr] = run.final["miou"][run.cfg.data.classes]
    return max(MIT_LRS, key=lambda lr: (scores[lr], -float(lr)))


def mit_steps() -> list[tuple[str, dict[str, Experiment]]]:
    """The transformer's plan: the selection, then (once it ran) the five methods branched off
    the MiT's source-only warm-up at 500, as the DeepLab's: photo seeds 1-3, then 4-5, then the
    fog and dusk targets (seeds 1-5 fixed before running)."""
    lr = chosen_mit_lr()
    if lr is None:
        return PLAN["mit"]

    def cells(target: str, label: str, seeds: tuple[int, ...]) -> dict[str, Experiment]:
        return {f"{label}mit {m}": Experiment(method, (), f"warmup-mit lr={lr}", target=target,
                                              seeds=seeds)
                for m, method in MIT_METHODS.items()}

    return [*PLAN["mit"],
            (f"photo, seeds 1-3 (lr {lr})", cells("photo", "", (1, 2, 3))),
            (f"photo, seeds 4-5 (lr {lr})", cells("photo", "", (4, 5))),
            (f"fog target (lr {lr})", cells("fog", "fog ", SEEDS)),
            (f"dusk target (lr {lr})", cells("dusk", "dusk ", SEEDS))]


def _selftrain(prefix: str, oracle: bool = False) -> tuple:
    """A self-training table: source-only, ours, DACS, ours + DACS (and the oracle) of one
    target style, one group per run name, gains over source-only and over DACS."""
    names = {f"{prefix}pretrained {m}" for m in SELF_TRAINING}
    names |= {"pretrained gap: target-trained oracle"} if oracle else set()
    return (lambda seed, name: seed > 0 and name in names, ("run",),
            (f"source_only [run={prefix}pretrained source-only]",
             f"dacs [run={prefix}pretrained DACS]"))


# every table: name -> (which run folders: keep(seed, run name); --by keys; baseline group(s):
# one report for each)
TABLES: dict[str, tuple[Callable[[int, str], bool], tuple[str, ...], str | tuple[str, ...]]] = {
    "selftrain": _selftrain("", oracle=True),
    "selftrain-fog": _selftrain("fog "),
    "selftrain-dusk": _selftrain("dusk "),
    # the transformer's methods next to the DeepLab's source-only, DACS and ours + DACS
    **{f"mit{suffix}": (lambda seed, name, p=prefix: seed > 0 and (
        name in {f"{p}mit {m}" for m in MIT_METHODS} or name in {
            f"{p}pretrained {m}" for m in ("source-only", "DACS", "ours + DACS")}), ("run",),
        (f"source_only [run={prefix}mit source-only]", f"dacs [run={prefix}mit DACS]",
         f"mic [run={prefix}mit MIC]"))
       for suffix, prefix in (("", ""), ("-fog", "fog "), ("-dusk", "dusk "))},
    # the same after the faithfulness fixes: DACS, MIC, ours on each, paired by seed
    **{f"mit-ref{suffix}": (lambda seed, name, p=prefix: seed > 0 and name in {
        f"{p}mit-ref {m}" for m in MIT_REF_METHODS}, ("run",),
        (f"dacs [run={prefix}mit-ref DACS]", f"mic [run={prefix}mit-ref MIC]"))
       for suffix, prefix in (("", ""), ("-dusk", "dusk "))},
    # DACS at half resolution, HRDA and MIC(HRDA), ours on each (the half-resolution DACS sees
    # a 192x96 input, scored on the same full-resolution labels: MIXED_INPUT)
    **{f"hrda{suffix}": (lambda seed, name, p=prefix: seed > 0 and name in {
        p + "lowres DACS", *(f"{p}hrda {m}" for m in HRDA_METHODS), p + DETAIL}, ("run",),
        (f"dacs [run={prefix}lowres DACS]", f"dacs [run={prefix}hrda HRDA]",
         f"mic [run={prefix}hrda MIC(HRDA)]"))
       for suffix, prefix in (("", ""), ("-dusk", "dusk "))},
    "sweep": (lambda seed, name: seed == 0 and name in sweep_names(), ("run",),
              "source_only [run=source-only]"),
    "gap": (lambda seed, name: "gap:" in name and seed > 0, ("run",), ""),
    "collapse": (lambda seed, name: name == "collapse", (), ""),
    "a": (lambda seed, name: name.startswith("final ") and seed > 0, (), "source_only"),
    "b": (lambda seed, name: name.startswith("frozen-bn ") and seed > 0, (), "source_only"),
    "c": (lambda seed, name: seed > 0 and (name.startswith("selected pretrained ") or (
        name.startswith("pretrained ") and "frozen" not in name and "gap:" not in name
        and "DACS +" not in name)), (), "source_only"),
    # DACS with rare class sampling (a data setting: the same method name) and with the
    # feature distance, against DACS
    "rcs-fd": (lambda seed, name: seed > 0 and name in {
        "pretrained source-only", "pretrained DACS", "pretrained DACS + RCS",
        "pretrained DACS + FD"}, ("run",), "dacs [run=pretrained DACS]"),
    "c-frozen": (lambda seed, name: name.startswith("pretrained frozen-bn "), (), "source_only"),
    "select-c": (lambda seed, name: seed == 0 and name.startswith("select-c "), ("run",),
                 "source_only [run=select-c source-only]"),
    # regime (c) on fog and dusk (the transformer's runs there have tables of their own)
    "fog": (lambda seed, name: name.startswith("fog pretrained "), (), "source_only"),
    "dusk": (lambda seed, name: name.startswith("dusk pretrained "), (), "source_only"),
}


# tables whose runs see other network input sizes (`cosalign report --mixed-input-sizes`)
MIXED_INPUT = {"hrda", "hrda-dusk"}


def sweep_names() -> set[str]:
    q = OUT / "quantiles.json"
    return set(sweep(json.loads(q.read_text()))) if q.is_file() else set()


def selection_overrides() -> list[str]:
    """Score on the selection split: the last 100 images of the target train split, labelled."""
    split = OUT / "select.txt"
    images = sorted((DATA["photo"] / "cityscapes" / "leftImg8bit" / "train").glob("*/*.png"))
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(f"{p.parent.name}/{p.name}" for p in images[-100:]) + "\n")
    return ["data.val.split=train", f"data.val.list_file={split}"]


def base_overrides(base: str) -> list[str]:
    return [o for b in BASES[base] for o in (selection_overrides() if b == SELECTION else [b])]


def data_root(target: str) -> Path:
    """MiniCity with ``target``'s style (the same source and scenes), made when missing."""
    make_minicity(DATA[target], dataclasses.replace(MiniCitySpec(), target_style=STYLES[target]),
                  progress=False)
    return DATA[target]


def folder_name(name: str) -> str:
    """An experiment's folder: its name in characters a shell needs no quotes for
    (``dusk mit ours + DACS`` -> ``dusk_mit_ours+DACS``, ``MinEnt (1e-3, ADVENT)`` ->
    ``MinEnt_1e-3_ADVENT``). Idempotent, so a folder name stands for its experiment too."""
    return re.sub(r"[^\w.+=-]+", "_", name.replace(" + ", "+")).strip("_")


def in_folder(parent: Path, name: str) -> Path:
    """``parent/<folder_name(name)>``, or ``parent/<name>`` where only a folder of the earlier
    naming (the name as it is, spaces and all) exists: such runs and records are still read."""
    new, old = parent / folder_name(name), parent / name
    return old if old.exists() and not new.exists() else new


def warmup(base: str, seed: int, until: int = max(WARMUP_ITERS)) -> Path:
    """Source-only checkpoints of ``seed`` on ``base`` at every warm-up iteration up to
    ``until`` (a later call with a larger ``until`` resumes the same run)."""
    run = in_folder(OUT / f"seed{seed}", base)
    wanted = {i for i in WARMUP_ITERS if i <= until}
    if not wanted <= {checkpoint_iteration(p) for p in list_checkpoints(run)}:
        cfg = minicity_config(data_root("photo"), [f"train.seed={seed}", *base_overrides(base)],
                              "source_only")
        cfg.train.checkpoint_every, cfg.train.keep_checkpoints = WARMUP_ITERS[0], 100
        train(cfg, run, progress=False, stop_at=max(wanted))
    return run


def record_of(seed: int, name: str) -> Path:
    return in_folder(RECORDS / f"seed{seed}", name)


def save_record(folder: Path, record: Path) -> None:
    """Copy what the tables read of a finished run folder into its record."""
    record.mkdir(parents=True, exist_ok=True)
    for f in RECORDED:
        shutil.copy(folder / f, record / f)


def run(name: str, exp: Experiment, seed: int) -> Path:
    """Train one experiment on one seed unless it is recorded; return its record."""
    folder, record = in_folder(OUT / f"seed{seed}", name), record_of(seed, name)
    if not (record / "done.json").is_file() and (folder / "done.json").is_file():
        save_record(folder, record)  # finished before this runner kept records
    if (record / "done.json").is_file():
        return record
    if f"model.weights={MIT_WEIGHTS}" in BASES[exp.base]:  # made once, cached by what made it
        pretrain_mit(MIT_WEIGHTS.parent, progress=False)
    target = [] if exp.target == "photo" else [
        f"data.target.root={data_root(exp.target) / 'cityscapes'}",
        f"data.val.root={data_root(exp.target) / 'cityscapes'}"]
    cfg = minicity_config(data_root("photo"), [f"train.seed={seed}", *base_overrides(exp.base),
                                               *exp.overrides, *target], exp.method)
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted run of ours: start it again
    if exp.branch:
        folder.mkdir(parents=True)
        shutil.copy(warmup(exp.base, seed, exp.branch) / checkpoint_name(exp.branch), folder)
    t0 = time.perf_counter()
    results = train(cfg, folder, progress=False)
    for p in list_checkpoints(folder):  # keep the logs, not the weights
        p.unlink()
    seconds = time.perf_counter() - t0
    (folder / "done.json").write_text(json.dumps({"seconds": seconds}))
    save_record(folder, record)
    print(f"seed {seed} {name}: mIoU {results['miou'][cfg.data.classes]:.2f} ({seconds:.0f} s)",
          flush=True)
    return record


@torch.no_grad()
def similarity_quantiles(seed: int = 0, base: str = "select-warmup") -> dict[str, float]:
    """Quantiles of S between target-train features and the dictionary at the warm-up's
    checkpoint at 500: where the sweep places its thresholds tau."""
    ckpt = warmup(base, seed, 500) / checkpoint_name(500)
    model, cfg, _ = load_trained(ckpt)
    d = ClassFeatureDictionary(19, cfg.dictionary.capacity, model.feature_dim,
                               cfg.dictionary.per_image)
    d.load_state_dict(torch.load(ckpt, weights_only=True)["dictionary"])
    ref, _ = d.reference()
    ds = build_dataset(cfg.data.target, cfg.data, train=False, labels=False)
    s = torch.cat([(flatten_normalized(model(ds[i]["image"][None]).features) @ ref.T)
                   .flatten()[::7] for i in range(0, len(ds), 25)])
    qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    return {f"q{int(q * 100)}": float(v) for q, v in zip(qs, torch.quantile(s, torch.tensor(qs)))}


def steps(group: str) -> list[tuple[str, dict[str, Experiment]]]:
    if group == "mit":
        return mit_steps()
    if group != "sweep":
        return PLAN[group]
    q = OUT / "quantiles.json"
    if not q.is_file():
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_text(json.dumps(similarity_quantiles(), indent=1))
    return [("stage 1: every switch, seed 0, the selection split",
             sweep(json.loads(q.read_text())))]


def cmd_run(args) -> None:
    i = 0
    while i < len(todo := steps(args.group)[: args.steps]):  # a step may make the next ones
        title, experiments = todo[i]
        i += 1
        if args.only is not None and i != args.only:
            continue
        print(f"## {args.group} step {i}/{len(todo)}: {title}", flush=True)
        for seed in sorted({s for e in experiments.values() for s in e.seeds}):
            for name, exp in experiments.items():
                if seed in exp.seeds:
                    run(name, exp, seed)


def cmd_list(args) -> None:
    q = OUT / "quantiles.json"
    plan = {**PLAN, "mit": mit_steps(),
            "sweep": [("stage 1", sweep(json.loads(q.read_text())) if q.is_file() else {})]}
    for group, group_steps in plan.items():
        for i, (title, experiments) in enumerate(group_steps, 1):
            cells = [(n, s) for n, e in experiments.items() for s in e.seeds]
            done = sum((record_of(s, n) / "done.json").is_file() for n, s in cells)
            print(f"{group} step {i}: {title}: {done}/{len(cells)} runs done")


def experiment_names() -> dict[str, str]:
    """Every experiment of the plan (as far as what has run says), by folder name."""
    q = OUT / "quantiles.json"
    groups = [*PLAN.values(), mit_steps(),
              [("sweep", sweep(json.loads(q.read_text())) if q.is_file() else {})]]
    return {folder_name(n): n for group in groups for _, exps in group for n in exps}


def finished(keep) -> list[Path]:
    """The records whose (seed, experiment name) ``keep`` accepts."""
    names = experiment_names()
    return [d.parent for d in sorted(RECORDS.glob("seed*/*/done.json"))
            if keep(int(d.parent.parent.name[4:]), names.get(d.parent.name, d.parent.name))]


def by_folder(baseline: str) -> str:
    """A baseline group as `cosalign report` names it: ``[run=...]`` holds the folder name."""
    return re.sub(r"\[run=([^\]]*)\]", lambda m: f"[run={folder_name(m.group(1))}]", baseline)


def cmd_report(args) -> None:
    for table in args.tables or TABLES:
        keep, by, baselines = TABLES[table]
        runs = finished(keep)
        if not runs:
            print(f"### {table}: no finished run of this table is recorded under {RECORDS}/seed*/ "
                  f"(`minicity_ablation.py list` says which group trains it)", file=sys.stderr)
            continue
        for i, baseline in enumerate((baselines,) if isinstance(baselines, str) else baselines):
            out = OUT / f"report_{table}" if i == 0 else OUT / f"report_{table}_{i}"
            print(f"\n### {table}: `cosalign report` over {len(runs)} run records of "
                  f"{RECORDS}/seed*/, baseline {baseline or 'none'} (`minicity_ablation.py report "
                  f"{table}`; written to {out})\n")
            print(report(runs, out, baseline=by_folder(baseline), by=by,
                         mixed_input=table in MIXED_INPUT))


def cmd_classes(args) -> None:
    """Per-class IoU gains of each run name over ``args.base``, paired by seed, 95% intervals
    (Student's t), from each run's last evaluation."""
    def iou(name: str) -> dict[int, dict[str, float]]:
        out = {}
        for folder in sorted({*RECORDS.glob(f"seed*/{folder_name(name)}"),
                              *RECORDS.glob(f"seed*/{name}")}):
            if (folder / "done.json").is_file():
                run = load_run(folder)
                out[run.seed] = run.final["iou"]
        return out

    base = iou(args.base)
    if not base:
        sys.exit(f"{args.base!r}: no recorded run of that name under {RECORDS}/seed*/")
    classes = list(next(iter(base.values())))
    print(f"| {args.base} -> | " + " | ".join(classes) + " | seeds |")
    print("|---" * (len(classes) + 2) + "|")
    for name in args.runs:
        runs = iou(name)
        cells = []
        for c in classes:
            g = paired_gain({s: r[c] for s, r in runs.items()}, {s: r[c] for s, r in base.items()})
            h = g["half"]
            cells.append(f"{g['mean']:+.1f}" + ("" if h is None else
                                                 f" [{g['mean'] - h:+.1f}, {g['mean'] + h:+.1f}]"))
        print(f"| {name} | " + " | ".join(cells) + f" | {sorted(set(runs) & set(base))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train a group of the plan (cached, resumable)")
    r.add_argument("group", choices=["sweep", *PLAN])
    r.add_argument("--steps", type=int, default=None, help="only the first N steps")
    r.add_argument("--only", type=int, default=None, metavar="N",
                   help="only step N (1-based; `list` numbers them)")
    r.set_defaults(func=cmd_run)
    sub.add_parser("list", help="the plan and how much of it is done").set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="print the tables (cosalign report)")
    rep.add_argument("tables", nargs="*", choices=[[], *TABLES], metavar="TABLE",
                     help=f"some of {', '.join(TABLES)} (default: all)")
    rep.set_defaults(func=cmd_report)
    cls = sub.add_parser("classes", help="per-class gains over one run name, paired by seed")
    cls.add_argument("base", help='a run name, e.g. "pretrained DACS"')
    cls.add_argument("runs", nargs="+", help="run names to compare with it")
    cls.set_defaults(func=cmd_classes)
    args = p.parse_args()
    torch.set_num_threads(2)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
