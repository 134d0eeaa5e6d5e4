"""The MiniCity ablation that sets the method's defaults (docs/results/minicity.md).

    .venv/bin/python benchmarks/minicity_ablation.py sweep     # stage 1, seed 0, ~65 min
    .venv/bin/python benchmarks/minicity_ablation.py gap       # the gap and the premise, ~20 min
    .venv/bin/python benchmarks/minicity_ablation.py collapse  # diagnostics over time, ~5 min
    .venv/bin/python benchmarks/minicity_ablation.py methods   # stage 2, seeds 1-3, ~40 min
    .venv/bin/python benchmarks/minicity_ablation.py frozen    # BatchNorm frozen at 500, ~10 min
    ... methods --more-seeds 2; ... frozen --more-seeds 2   # seeds 4 and 5 (key methods), ~16 min
    .venv/bin/python benchmarks/minicity_ablation.py regimes   # the regimes: steps 1-9 ~2.5 h
    ... regimes --steps 4   # the first 4 steps: (c), its oracle, (c, BN frozen), AdvEnt in (c)
    .venv/bin/python benchmarks/minicity_ablation.py report    # print the tables again

Protocol. Every run trains ``train.iters`` iterations of the MiniCity preset. Adaptation starts
from a source-only warm-up at ``align.start_iter`` (or from scratch, start_iter 0); the warm-up
checkpoints of a seed are trained once and every variant branches off them, so a variant and
source-only share everything up to the branch point.

Selection is kept apart from the reported numbers:
- stage 1 (``sweep``) scores every variant on a *selection split*: the last 100 images of the
  target train split with their labels (labels that training never reads), seed 0;
- stage 2 (``methods``) trains source-only, MinEnt, ours and ours + MinEnt with the chosen
  defaults on seeds 1, 2, 3 (not used for selection) and scores them on target val.
- ``regimes`` (docs/results/minicity.md, "The regimes") runs every method in four regimes,
  (a) from scratch with BatchNorm training, (b) the same with BatchNorm frozen from the branch
  point, (c) from the pretrained backbone of ``cosalign pretrain`` with BatchNorm as in the paper
  preset, and (c) with BatchNorm frozen, on seeds 1-5, plus weights chosen on the selection
  split and the fog and dusk targets in (c).
Results are cached per run under runs/ablation, so an interrupted ablation continues.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cosalign.data import build_dataset
from cosalign.data.minicity import make_minicity
from cosalign.demo import minicity_config
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.train import evaluate, train
from cosalign.losses import ClassFeatureDictionary
from cosalign.losses.cosine import flatten_normalized
from cosalign.models import build_model

DATA = Path("data/minicity")
OUT = Path("runs/ablation")
WARMUPS = (250, 500, 750)


def base_overrides() -> list[str]:
    return []  # the preset's loss section is the baseline "ours" of the sweep


def selection_overrides() -> list[str]:
    split = OUT / "select.txt"
    images = sorted((DATA / "cityscapes" / "leftImg8bit" / "train").glob("*/*.png"))
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(f"{p.parent.name}/{p.name}" for p in images[-100:]) + "\n")
    return ["data.val.split=train", f"data.val.list_file={split}"]


def warmup(seed: int, extra: list[str], name: str = "warmup") -> Path:
    """Source-only checkpoints at every warm-up iteration for this seed (and these overrides:
    one ``name`` per set of ``extra``)."""
    run = OUT / f"seed{seed}" / name
    have = {int(p.stem.split("_")[1]) for p in list_checkpoints(run)}
    if not set(WARMUPS) <= have:
        cfg = minicity_config(DATA, [f"train.seed={seed}", *extra], "source_only")
        cfg.train.checkpoint_every, cfg.train.keep_checkpoints = WARMUPS[0], 100
        train(cfg, run, progress=False, stop_at=max(WARMUPS))
    return run


def run_variant(seed: int, name: str, overrides: list[str], extra: list[str],
                method: str = "ours", from_scratch: bool = False,
                source_val: bool = False, warmup_name: str = "warmup") -> dict:
    """Train one variant and cache its results. It branches off the seed's warm-up
    (``warmup_name``, trained with ``extra``) at ``align.start_iter`` (ours) or at 500 (the other
    methods) unless ``from_scratch``."""
    run = OUT / f"seed{seed}" / name
    done = run / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = minicity_config(DATA, [f"train.seed={seed}", *extra, *overrides], method)
    shutil.rmtree(run, ignore_errors=True)
    start = 0 if from_scratch else cfg.align.start_iter if method.startswith("ours") else 500
    if start > 0:
        ckpt = warmup(seed, extra, warmup_name) / f"ckpt_{start:07d}.pt"
        run.mkdir(parents=True)
        shutil.copy(ckpt, run)
    t0 = time.perf_counter()
    results = train(cfg, run, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]
    out = {
        "name": name, "seed": seed, "overrides": overrides, "method": method,
        "miou": results["miou"][cfg.data.classes], "iou": results["iou"],
        "premise": results["premise"], "seconds": time.perf_counter() - t0,
        "train_end": {k: last[k] for k in ("cos", "selected", "pair_cos", "eff_rank", "s_q50",
                                           "s_q90", "s_q99") if k in last},
    }
    if source_val:
        out["source_val_miou"] = source_val_miou(run, cfg)
    for p in list_checkpoints(run):  # keep the results, not the weights
        p.unlink()
    done.write_text(json.dumps(out, indent=1))
    print(f"seed {seed} {name}: mIoU {out['miou']:.2f} ({out['seconds']:.0f} s)", flush=True)
    return out


def source_val_miou(run: Path, cfg) -> float:
    """mIoU of a run's last checkpoint on the source val split (gta5/val.txt)."""
    model = build_model(cfg.model, 19)
    model.load_state_dict(load_checkpoint(list_checkpoints(run)[-1])["model"])
    src_val = copy.deepcopy(cfg.data.source)
    src_val.list_file = str(DATA / "gta5" / "val.txt")
    ds = build_dataset(src_val, cfg.data, train=False)
    r = evaluate(model, ds, torch.device("cpu"), subsets=[cfg.data.classes], progress=False)
    return r["miou"][cfg.data.classes]


@torch.no_grad()
def similarity_quantiles(warmup_run: Path, seed: int, extra: list[str],
                         start: int = 500) -> dict[str, float]:
    """Quantiles of S between target-train features and the dictionary at the warm-up
    checkpoint: where thresholds tau are placed."""
    state = load_checkpoint(warmup_run / f"ckpt_{start:07d}.pt")
    cfg = minicity_config(DATA, [f"train.seed={seed}", *extra])
    model = build_model(cfg.model, 19)
    model.load_state_dict(state["model"])
    model.eval()
    d = ClassFeatureDictionary(19, cfg.dictionary.capacity, model.feature_dim,
                               cfg.dictionary.per_image)
    d.load_state_dict(state["dictionary"])
    ref, _ = d.reference()
    ds = build_dataset(cfg.data.target, cfg.data, train=False, labels=False)
    sims = []
    for i in range(0, len(ds), 25):
        t = flatten_normalized(model(ds[i]["image"][None]).features)
        sims.append((t @ ref.T).flatten()[::7])
    s = torch.cat(sims)
    qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    return {f"q{int(q * 100)}": float(v) for q, v in zip(qs, torch.quantile(s, torch.tensor(qs)))}


def sweep_variants(quantiles: dict[str, float]) -> dict[str, list[str]]:
    """One factor at a time around the preset's loss section."""
    v: dict[str, list[str]] = {"baseline": []}
    for lam in (0.001, 0.01, 0.1, 1.0):
        v[f"lambda={lam:g}"] = [f"loss.cos={lam}"]
    for q, tau in quantiles.items():
        v[f"tau={tau:.2f} ({q} of S)"] = [f"align.tau={tau:.3f}"]
    v["match=max"] = ["align.match=max"]
    v["match=all"] = ["align.match=all"]
    v["class_restrict=none"] = ["align.class_restrict=none"]
    v["class_restrict=pseudo"] = ["align.class_restrict=pseudo"]
    v["reference=batch"] = ["align.reference=batch"]
    for q in (50, 200, 1000):
        v[f"Q={q}"] = [f"dictionary.capacity={q}"]
    for q in (1, 16):
        v[f"per_image={q}"] = [f"dictionary.per_image={q}"]
    v["enqueue=mean"] = ["dictionary.enqueue=mean"]
    v["features=layer4_pre"] = ["model.feature_layer=layer4_pre"]
    v["features=layer3"] = ["model.feature_layer=layer3"]
    for s in (0, *WARMUPS):
        v[f"start_iter={s}"] = [f"align.start_iter={s}"]
    return v


REFERENCE_METHODS = {  # name: (method, overrides)
    "source-only": ("source_only", []),
    # the target batches pass through the network in train mode (BatchNorm statistics adapt,
    # as in every method below) but the loss weight is nil: what adaptation owes to BatchNorm
    "target BN only (no loss)": ("minent", ["loss.ent=1e-12", "loss.ent_aux=0"]),
    "MinEnt (1e-3, ADVENT)": ("minent", []),
    "MinEnt (1e-2)": ("minent", ["loss.ent=0.01", "loss.ent_aux=0.002"]),
    "MinEnt (1e-1)": ("minent", ["loss.ent=0.1", "loss.ent_aux=0.02"]),
}


def cmd_sweep(args) -> None:
    extra = selection_overrides()
    q = similarity_quantiles(warmup(0, extra), 0, extra)
    (OUT / "quantiles.json").write_text(json.dumps(q, indent=1))
    print("S quantiles at the warm-up:", {k: round(v, 3) for k, v in q.items()}, flush=True)
    for name, (method, overrides) in REFERENCE_METHODS.items():
        run_variant(0, name, overrides, extra, method)
    for name, overrides in sweep_variants(q).items():
        run_variant(0, name, overrides, extra)
    cmd_report(args)


GAP_RUNS = {  # name: (method, overrides); all from scratch, 1000 iterations
    "gap: source-only": ("source_only", []),
    "gap: source-only, no photometric jitter": ("source_only", ["data.source.photometric=0"]),
    "gap: target-trained oracle": ("source_only", [
        "data.source.dataset=cityscapes", f"data.source.root={DATA / 'cityscapes'}",
        "data.source.list_file=null", "data.source.size=[192, 96]"]),
}


def cmd_gap(args) -> None:
    """How large the domain gap is and whether the method's premise holds (target val)."""
    for seed in (1, 2, 3):
        for name, (method, overrides) in GAP_RUNS.items():
            run_variant(seed, name, overrides, [], method, from_scratch=True,
                        source_val=not name.endswith("oracle"))
    cmd_report(args)


def cmd_collapse(args) -> None:
    """A run that collapses (no class restriction, lambda 1), evaluated every 50 iterations
    from the branch point on: the diagnostics move before mIoU does."""
    run = OUT / "collapse"
    metrics = run / "metrics.jsonl"
    if not metrics.is_file() or '"iter": 1000, "kind": "eval"' not in metrics.read_text():
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        shutil.copy(warmup(0, []) / "ckpt_0000500.pt", run)
        cfg = minicity_config(DATA, ["train.seed=0", "align.class_restrict=none", "loss.cos=1",
                                     "train.eval_every=50", "train.log_every=10"], "ours")
        train(cfg, run, progress=False)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    train_rows = {r["iter"]: r for r in rows if r["kind"] == "train"}
    print("\n### Collapse in the logs (seed 0, class_restrict=none, lambda_cos=1, from the "
          "source-only warm-up at 500)\n")
    print("| iteration | selected | S median | pair cos | eff. rank | target val mIoU |")
    print("|---|---|---|---|---|---|")
    cfg = minicity_config(DATA, ["train.seed=0"])
    model = build_model(cfg.model, 19)
    model.load_state_dict(load_checkpoint(warmup(0, []) / "ckpt_0000500.pt")["model"])
    val = build_dataset(cfg.data.val, cfg.data, train=False)
    start = evaluate(model, val, torch.device("cpu"), subsets=["minicity"], progress=False)
    first = min(train_rows)
    t = train_rows[first]
    print(f"| 500 (warm-up) | - | - | - | - | {start['miou']['minicity']:.1f} |")
    print(f"| {first} (first log) | {100 * t['selected']:.0f}% | {t['s_q50']:.2f} | "
          f"{t['pair_cos']:.2f} | {t['eff_rank']:.1f} | - |")
    for r in (r for r in rows if r["kind"] == "eval"):
        t = train_rows.get(r["iter"], {})
        print(f"| {r['iter']} | {100 * t.get('selected', float('nan')):.0f}% | "
              f"{t.get('s_q50', float('nan')):.2f} | {t.get('pair_cos', float('nan')):.2f} | "
              f"{t.get('eff_rank', float('nan')):.1f} | {r['miou']['minicity']:.1f} |")


MORE_SEEDS = tuple(range(4, 16))  # seeds 4-15
KEY_METHODS = ("source-only", "target BN only (no loss)", "MinEnt (1e-3, ADVENT)", "ours")


def cmd_methods(args) -> None:
    """Seeds 1-3: every method; seeds 4 and 5 (``--more-seeds``): the key ones."""
    variants = {**REFERENCE_METHODS, "ours": ("ours", []), "ours + MinEnt": ("ours_minent", [])}
    for seed in (1, 2, 3, *MORE_SEEDS[: args.more_seeds]):
        for name, (method, overrides) in variants.items():
            if seed <= 3 or name in KEY_METHODS:
                run_variant(seed, f"final {name}", overrides, [], method)
    cmd_report(args)


FROZEN_METHODS = {  # BatchNorm frozen (statistics and affine, eval mode) from the branch point
    "source-only": ("source_only", []),
    "MinEnt (1e-3, ADVENT)": ("minent", []),
    "ours": ("ours", []),
}


def cmd_frozen(args) -> None:
    """Regime (b): the seeds' warm-ups, then BatchNorm frozen from the branch point at 500, so
    that the target batches cannot move its statistics and the losses act alone."""
    for seed in (1, 2, 3, *MORE_SEEDS[: args.more_seeds]):
        for name, (method, overrides) in FROZEN_METHODS.items():
            run_variant(seed, f"frozen-bn {name}", [*overrides, "model.bn=frozen"], [], method)
    cmd_report(args)


PRETRAINED = ["model.weights=minicity_pretrained", "model.bn=affine_frozen"]
FROZEN = ["model.bn=frozen"]
# name: (run-name prefix, warm-up name, overrides of the warm-up and every run, overrides from
# the branch point on). (a) and (b) keep the run names of the stages above.
REGIMES = {
    "a": ("final", "warmup", [], []),
    "b": ("frozen-bn", "warmup", [], FROZEN),
    "c": ("pretrained", "warmup-pretrained", PRETRAINED, []),
    "c-frozen": ("pretrained frozen-bn", "warmup-pretrained", PRETRAINED, FROZEN),
}
REGIME_METHODS = {  # name: (method, overrides); (a)'s cached control is the minent equivalent
    "source-only": ("source_only", []),
    "target BN only (no loss)": ("target_bn", []),
    "MinEnt (1e-3, ADVENT)": ("minent", []),
    "AdvEnt (1e-3, ADVENT)": ("advent", []),
    "ours": ("ours", []),
    "ours + MinEnt": ("ours_minent", []),
}
KEY = ("source-only", "target BN only (no loss)", "MinEnt (1e-3, ADVENT)", "ours")
SEEDS = range(1, 6)  # fixed before the regimes were run


def regime_run(regime: str, seed: int, method_name: str, more: list[str] | None = None,
               label: str = "", display: str | None = None) -> dict:
    """One method in one regime, branched off the regime's warm-up of this seed; ``more``
    overrides are added from the branch point on; the run is named ``label``, the regime's
    prefix and ``display`` (default: the method's name)."""
    prefix, warmup_name, extra, branch = REGIMES[regime]
    method, overrides = REGIME_METHODS[method_name]
    if regime == "a" and method == "target_bn":  # cached under its earlier, equivalent form
        method, overrides = "minent", ["loss.ent=1e-12", "loss.ent_aux=0"]
    return run_variant(seed, f"{label}{prefix} {display or method_name}",
                       [*overrides, *branch, *(more or [])], extra, method,
                       warmup_name=warmup_name)


def grid(regimes: tuple[str, ...], methods: tuple[str, ...]) -> None:
    for seed in SEEDS:
        for regime in regimes:
            for name in methods:
                if not (name.startswith("target BN") and regime.endswith("frozen")):
                    regime_run(regime, seed, name)  # BN frozen: the control is source-only


def oracle(name: str, extra: list[str]) -> None:
    """A target-trained oracle on seeds 1-3 (the gap): from the pretrained backbone in (c)
    (``extra=PRETRAINED``), and (a)'s again with today's code, since the gap table's first runs
    are from the first session, whose numbers differ from later ones."""
    method, overrides = GAP_RUNS["gap: target-trained oracle"]
    for seed in (1, 2, 3):
        run_variant(seed, name, overrides, extra, method, from_scratch=True)


CANDIDATES = {  # method: weights tried on the selection split (the first is the default);
    # AdvEnt is not in it: at ~5.5 min a run it did not fit the session that ran this
    "ours": [["loss.cos=0.1"], ["loss.cos=0.01"], ["loss.cos=1"]],
    "MinEnt (1e-3, ADVENT)": [["loss.ent=0.001", "loss.ent_aux=0.0002"],
                              ["loss.ent=0.01", "loss.ent_aux=0.002"],
                              ["loss.ent=0.1", "loss.ent_aux=0.02"]],
}


def select_weights(regime: str) -> dict[str, list[str]]:
    """Seed 0, the selection split: each method at each candidate weight, branched off the
    regime's seed-0 warm-up; returns the best candidate per method (selection mIoU)."""
    prefix, warmup_name, extra, branch = REGIMES[regime]
    extra = [*extra, *selection_overrides()]
    run_variant(0, f"select-{regime} source-only", branch, extra, "source_only",
                warmup_name=f"select-{warmup_name}")
    best = {}
    for name, candidates in CANDIDATES.items():
        method = REGIME_METHODS[name][0]
        scores = [run_variant(0, f"select-{regime} {name} {' '.join(c)}", [*c, *branch],
                              extra, method, warmup_name=f"select-{warmup_name}")["miou"]
                  for c in candidates]
        best[name] = candidates[int(np.argmax(scores))]
        print(f"regime ({regime}), {name}: selection mIoU "
              + ", ".join(f"{' '.join(c)}: {v:.2f}" for c, v in zip(candidates, scores))
              + f" -> {' '.join(best[name])}", flush=True)
    return best


def selected_c() -> None:
    """Weights chosen on the selection split in regime (c), on seeds 1-5 where they differ
    from the paper's."""
    best = select_weights("c")
    for seed in SEEDS:
        for name, weights in best.items():
            if weights != CANDIDATES[name][0]:
                regime_run("c", seed, name, weights, label="selected ",
                           display=f"{name.split(' (')[0]} {' '.join(weights)}")


STYLES = {"fog": Path("data/minicity_fog"), "dusk": Path("data/minicity_dusk")}


def style_overrides(style: str) -> list[str]:
    """The same source (MiniCity's game-style half), another target style."""
    from dataclasses import replace

    from cosalign.data.minicity import MiniCitySpec
    from cosalign.data.minicity_render import STYLES as RENDER_STYLES

    make_minicity(STYLES[style], replace(MiniCitySpec(), target_style=RENDER_STYLES[style]),
                  progress=False)
    return [f"data.target.root={STYLES[style] / 'cityscapes'}",
            f"data.val.root={STYLES[style] / 'cityscapes'}"]


def other_target(style: str) -> None:
    """Regime (c) with the fog or dusk target, from the same warm-ups (source-only)."""
    target = style_overrides(style)
    for seed in SEEDS:
        for name in KEY:
            regime_run("c", seed, name, target, label=f"{style} ")


# most informative cells first; everything is cached per run
PLAN = [
    ("(c): source-only, the control, MinEnt, ours", lambda: grid(("c",), KEY)),
    ("(c): the target-trained oracle",
     lambda: oracle("pretrained gap: target-trained oracle", PRETRAINED)),
    ("(c, BN frozen): source-only, MinEnt, ours", lambda: grid(("c-frozen",), KEY)),
    ("AdvEnt in (c)", lambda: grid(("c",), ("AdvEnt (1e-3, ADVENT)",))),
    ("(a): the target-trained oracle, re-run",
     lambda: oracle("gap: target-trained oracle, rerun", [])),
    ("(c): weights chosen on the selection split", selected_c),
    # AdvEnt costs ~5 min a run here (its discriminators dominate the small network)
    ("AdvEnt in (c, BN frozen)", lambda: grid(("c-frozen",), ("AdvEnt (1e-3, ADVENT)",))),
    ("(c) with the fog target", lambda: other_target("fog")),
    ("(c) with the dusk target", lambda: other_target("dusk")),
    ("AdvEnt in (a) and (b)", lambda: grid(("a", "b"), ("AdvEnt (1e-3, ADVENT)",))),
    ("ours + MinEnt in (b), (c), (c, BN frozen)",
     lambda: grid(("b", "c", "c-frozen"), ("ours + MinEnt",))),
]


def cmd_regimes(args) -> None:
    """The regimes of docs/results/minicity.md: every method paired with source-only from the
    same branch point, in the order of PLAN (``--steps N``: only the first N steps)."""
    for i, (title, step) in enumerate(PLAN[: args.steps], 1):
        print(f"## step {i}/{len(PLAN)}: {title}", flush=True)
        step()
    cmd_report(args)


def finished(pattern: str) -> list[Path]:
    """Run folders matching ``pattern`` under runs/ablation that finished (an interrupted run
    leaves a folder that `cosalign report` rightly refuses)."""
    return [p for p in sorted(OUT.glob(pattern)) if (p / "done.json").is_file()]


def regimes_report() -> None:
    from cosalign.report import report

    for regime, (prefix, *_rest) in REGIMES.items():
        if regime in ("a", "b"):
            continue  # printed by methods_report and frozen_report
        runs = [p for p in finished(f"seed*/{prefix} *")
                if "gap:" not in p.name and (regime.endswith("frozen") or "frozen" not in p.name)]
        runs += finished(f"seed*/selected {prefix} *")  # weights chosen on selection
        if runs:
            print(f"\n### Regime ({regime}) by `cosalign report {OUT}/seed*/'{prefix} '* --out "
                  f"{OUT / ('report_' + regime)}` (without other regimes' and gap folders)\n")
            print(report(runs, OUT / f"report_{regime}", baseline="source_only"))
    for style in STYLES:
        runs = finished(f"seed*/{style} *")
        if runs:
            print(f"\n### Target style {style}, regime (c), by `cosalign report "
                  f"{OUT}/seed*/'{style} '* --out {OUT / ('report_' + style)}`\n")
            print(report(runs, OUT / f"report_{style}", baseline="source_only"))


def frozen_report() -> None:
    from cosalign.report import report

    runs = finished("seed*/frozen-bn *")
    if runs:
        print(f"\n### BatchNorm frozen from the branch point, by `cosalign report "
              f"{OUT}/seed*/frozen-bn* --out {OUT / 'report_frozen'}`\n")
        print(report(runs, OUT / "report_frozen", baseline="source_only"))


def methods_report() -> None:
    """Stage 2 through `cosalign report`: per-class IoU, mean ± std over seeds 1-3, gains paired
    by seed with 95% intervals, and the curves (runs/ablation/report_methods)."""
    from cosalign.report import report

    runs = finished("seed*/final *")
    if runs:
        print(f"\n### Stage 2 by `cosalign report {OUT}/seed*/final* --out "
              f"{OUT / 'report_methods'}`\n")
        print(report(runs, OUT / "report_methods", baseline="source_only"))


def _load(seed_dirs) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in seed_dirs:
        for f in sorted(d.glob("*/done.json")):
            r = json.loads(f.read_text())
            out.setdefault(r["name"], []).append(r)
    return out


def cmd_report(args) -> None:
    runs = _load(sorted(OUT.glob("seed*")))
    sweep = {k: v for k, v in runs.items()
             if not k.startswith(("final ", "gap: ", "frozen-bn ", "pretrained ", "select-",
                                  "selected ", *(f"{style} " for style in STYLES)))}
    final = {k[len("final "):]: v for k, v in runs.items() if k.startswith("final ")}
    gap = {k[len("gap: "):]: v for k, v in runs.items() if k.startswith("gap: ")}
    gap.update({"(c) pretrained backbone, " + k[len("pretrained gap: "):]: v
                for k, v in runs.items() if k.startswith("pretrained gap: ")})
    for run_name, row in (("final source-only", "(a) source-only, seeds 1-5 (stage 2 runs)"),
                          ("frozen-bn source-only", "(b) source-only, BN frozen from 500"),
                          ("pretrained source-only", "(c) pretrained backbone, source-only"),
                          ("pretrained frozen-bn source-only",
                           "(c) pretrained, BN frozen from 500, source-only")):
        if run_name in runs:
            gap[row] = [r for r in runs[run_name] if 1 <= r["seed"] <= 5]
    if sweep:
        quantiles = OUT / "quantiles.json"
        order = list(REFERENCE_METHODS)
        if quantiles.is_file():
            order += list(sweep_variants(json.loads(quantiles.read_text())))
        sweep = dict(sorted(sweep.items(), key=lambda kv: order.index(kv[0])
                            if kv[0] in order else len(order)))
        base = statistics.mean(r["miou"] for r in sweep.get("source-only", [{"miou": np.nan}]))
        print("\n### Stage 1: sweep (seed 0, selection split: 100 labelled target-train images)\n")
        print("| variant | mIoU | vs source-only | NN acc. | selected | pair cos | eff. rank |")
        print("|---|---|---|---|---|---|---|")
        for name, rs in sweep.items():
            r = rs[0]
            te, pr = r["train_end"], r["premise"]
            sel = f"{100 * te['selected']:.1f}%" if "selected" in te else "-"
            print(f"| {name} | {r['miou']:.2f} | {r['miou'] - base:+.2f} | "
                  f"{pr.get('nn_accuracy', float('nan')):.1f} | {sel} | "
                  f"{_num(te, 'pair_cos', 2)} | {_num(te, 'eff_rank', 1)} |")
    if gap:
        _gap_report(gap)
    frozen_report()
    regimes_report()
    if final:
        methods_report()
        order = [*REFERENCE_METHODS, "ours", "ours + MinEnt"]
        by_seed = {name: {r["seed"]: r["miou"] for r in rs} for name, rs in final.items()}
        seeds = sorted({s for vals in by_seed.values() for s in vals})
        print(f"\n### Stage 2: methods, seeds {', '.join(map(str, seeds))}, MiniCity target "
              "val (100 images)\n")
        print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | gain "
              "over source-only, same seed: mean ± std |")
        print("|---" * (len(seeds) + 3) + "|")
        base = by_seed.get("source-only", {})
        for name in sorted(by_seed, key=lambda n: order.index(n) if n in order else 99):
            vals = by_seed[name]
            cells = " | ".join(f"{vals[s]:.2f}" if s in vals else "-" for s in seeds)
            gains = [vals[s] - base[s] for s in vals if s in base]
            print(f"| {name} | {cells} | {_mean_std(list(vals.values()))} | "
                  f"{_mean_std(gains, signed=True)} |")


def _num(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "-"


def _mean_std(vals: list[float], signed: bool = False) -> str:
    if not vals:
        return "-"
    std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return f"{statistics.mean(vals):{'+' if signed else ''}.2f} ± {std:.2f}"


def _gap_report(gap: dict[str, list[dict]]) -> None:
    print("\n### The gap and the premise (1,000 iterations, MiniCity target val, mean ± std "
          "over seeds)\n")
    print("| model | target val mIoU | source val mIoU | NN class acc. (chance) | "
          "S same-class | S different-class |")
    print("|---|---|---|---|---|---|")
    for name, rs in gap.items():
        def ms(key, sub=None, rs=rs):
            vals = [(r[sub] if sub else r).get(key) for r in rs]
            return _mean_std([v for v in vals if v is not None])
        chance = rs[0]["premise"].get("nn_chance", float("nan"))
        print(f"| {name} | {ms('miou')} | {ms('source_val_miou')} | "
              f"{ms('nn_accuracy', 'premise')} ({chance:.0f}) | {ms('s_same', 'premise')} | "
              f"{ms('s_diff', 'premise')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["sweep", "gap", "collapse", "methods", "frozen",
                                     "regimes", "report"])
    p.add_argument("--more-seeds", type=int, default=0, choices=range(len(MORE_SEEDS) + 1),
                   help="methods, frozen: also this many of seeds 4-15 (key methods only)")
    p.add_argument("--steps", type=int, default=len(PLAN),
                   help="regimes: only the first N entries of PLAN")
    args = p.parse_args()
    torch.set_num_threads(2)
    make_minicity(DATA)
    {"sweep": cmd_sweep, "gap": cmd_gap, "collapse": cmd_collapse, "methods": cmd_methods,
     "frozen": cmd_frozen, "regimes": cmd_regimes, "report": cmd_report}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
