"""``cosalign demo``: the method end to end on MiniCity, on a CPU, in a few minutes.

1. Generate MiniCity under ``data_dir`` (skipped when an identical copy is there).
2. Train source-only up to the warm-up iteration ``align.start_iter``, from the pretrained
   backbone that ships with the package (:data:`REGIME`); branch "ours" and the BatchNorm
   control off that checkpoint (the runs are identical until then, so the warm-up is trained
   once).
3. Finish the three runs, evaluate them on target val, print the per-class table and the gains,
   write ``results.json``, ``figure.png`` (target image, ground truth, each run), and
   ``features.png`` and ``similarity.png`` (source-only against ours, as ``cosalign viz``).

``--methods`` runs another set the same way, e.g. ``source_only,dacs,ours_dacs``: self-training
and the alignment on top of it (docs/METHOD.md section 10).

The control ("target_bn") sends the target batches through the network in train mode with no
loss: in this regime BatchNorm's statistics still follow the batches (as in the paper preset),
so the control gets what any adaptation method gets from the target batches' statistics alone.
Ours minus the control is the method's own effect.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cosalign.config import ConfigError, to_dict
from cosalign.data import build_dataset
from cosalign.data.transforms import denormalize
from cosalign.engine import distributed
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint, load_trained
from cosalign.engine.evaluate import format_table
from cosalign.engine.precision import resolve_amp
from cosalign.engine.stop import Stopped
from cosalign.engine.train import train
from cosalign.minicity import MiniCitySpec, content_hash, make_minicity, minicity_config
from cosalign.models.upsample import upsample_logits
from cosalign.outputs import claim, remove_run_files, write_text
from cosalign.runlock import run_lock
from cosalign.viz import comparison_figure
from cosalign.viz_alignment import run_viz

CONTROL = "BatchNorm control"  # target_bn: the target batches through BatchNorm, no loss
# Regime (c) of docs/results/minicity.md, the one where the method's own effect shows: the
# backbone from `cosalign pretrain` (ImageNet's part), BatchNorm affine fixed and statistics
# updated in train mode, as in the paper preset. `--set model.weights=null model.bn=train`
# gives the from-scratch regime (a).
REGIME = ["model.weights=minicity_pretrained", "model.bn=affine_frozen"]


def environment() -> dict[str, str]:
    """Versions of what generates MiniCity and trains on it: numbers of different sessions can
    differ, and this is where to look first."""
    import platform

    import cv2
    import skimage

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, "scikit-image": skimage.__version__,
            "machine": platform.machine(), "threads": str(torch.get_num_threads())}


def _predict(run_dir: Path, samples: list[dict]) -> list[np.ndarray]:
    model, _, _ = load_trained(run_dir)
    out = []
    with torch.no_grad():
        for s in samples:
            logits = upsample_logits(model(s["image"][None]).logits, s["label"].shape)
            out.append(logits.argmax(1)[0].numpy().astype(np.uint8))
    return out


DISPLAY = {"source_only": "source-only", "target_bn": CONTROL, "minent": "MinEnt",
           "advent": "AdvEnt", "ours": "ours", "ours_minent": "ours + MinEnt",
           "ours_advent": "ours + AdvEnt", "dacs": "DACS", "ours_dacs": "ours + DACS",
           "mic": "MIC", "ours_mic": "ours + MIC"}
DEFAULT_METHODS = ("source_only", "target_bn", "ours")
OUTPUTS = ("results.json", "figure.png", "features.png", "similarity.png")  # in --out


def run_demo(data_dir: str | Path = "data/minicity", out_dir: str | Path = "runs/demo",
             overrides: list[str] | None = None, progress: bool = True,
             spec: MiniCitySpec = MiniCitySpec(),
             methods: tuple[str, ...] = DEFAULT_METHODS, lock: bool = True) -> dict:
    """``methods``: source-only first, the method to show last (its gains are the headline),
    baselines between; e.g. ``("source_only", "dacs", "ours_dacs")``. The demo holds the lock
    of ``out_dir`` and of each run folder for its lifetime (``lock=False``: ``--no-lock``)."""
    if not methods or methods[0] != "source_only" or len(set(methods)) != len(methods):
        raise ConfigError(f"--methods: expected source_only first, then other methods once "
                          f"each, got {','.join(methods)}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    overrides = [*REGIME, *(overrides or [])]
    cfg = minicity_config(data_dir, overrides)  # every config checked before any work
    print("cosalign demo: " + resolve_amp(cfg.train.amp, distributed.setup(cfg.train.device))[1])
    names = {m: DISPLAY.get(m, m) for m in methods}
    runs = {names[m]: minicity_config(data_dir, overrides, m) for m in methods}
    dirs = {names[m]: out_dir / m for m in methods}
    with contextlib.ExitStack() as held:
        held.enter_context(run_lock(out_dir, lock))
        # a fresh demo each time: an earlier demo's runs are replaced, nothing else is touched
        claim(out_dir, "cosalign demo", (*methods, *OUTPUTS))
        for folder in dirs.values():
            held.enter_context(run_lock(folder, lock))
        try:
            return _demo(data_dir, out_dir, cfg, runs, dirs, names, methods, spec, progress, t0)
        except Stopped as e:
            if e.where:  # a training stopped: its line says what is intact
                e.args = (f"{e} (`cosalign demo` starts the demo afresh)",)
            raise


def _demo(data_dir, out_dir: Path, cfg, runs: dict, dirs: dict, names: dict,
          methods: tuple[str, ...], spec: MiniCitySpec, progress: bool, t0: float) -> dict:
    for d in dirs.values():
        remove_run_files(d)
    make_minicity(Path(data_dir), spec, progress=progress)
    t_data = time.perf_counter() - t0

    base, shown = names["source_only"], names[methods[-1]]
    warmup = cfg.align.start_iter
    if warmup > 0:
        print(f"source-only warm-up: {warmup} iterations (shared by all runs), from "
              f"model.weights={cfg.model.weights}, model.bn={cfg.model.bn}")
        train(runs[base], dirs[base], progress, stop_at=warmup)
        for name in list(runs)[1:]:
            dirs[name].mkdir(parents=True, exist_ok=True)
            shutil.copy(list_checkpoints(dirs[base])[-1], dirs[name])
    results, seconds = {}, {}
    for name, run_cfg in runs.items():
        t = time.perf_counter()
        results[name] = train(run_cfg, dirs[name], progress)
        seconds[name] = time.perf_counter() - t

    subset = cfg.data.classes
    table = format_table(results, subset)
    miou = {name: r["miou"][subset] for name, r in results.items()}
    gain = miou[shown] - miou[base]
    own = miou[shown] - miou[CONTROL] if CONTROL in miou else None
    print("\nMiniCity target val, per-class IoU (%):\n" + table + "\n")
    for name in list(runs)[1:]:
        print(f"gain of {name} over source-only: {miou[name] - miou[base]:+.1f} mIoU")
    if own is not None:
        print(f"gain of {shown} over the BatchNorm control: {own:+.1f} (the control sends the "
              f"target batches through BatchNorm with no loss, and gains "
              f"{miou[CONTROL] - miou[base]:+.1f} by that alone)")
    print("one seed: docs/results/minicity.md has seeds and intervals")
    for name, r in results.items():
        p = r.get("premise", {})
        if p:
            print(f"{name}: nearest-entry class accuracy {p['nn_accuracy']:.1f}% "
                  f"(chance {p['nn_chance']:.1f}%), S same-class {p['s_same']:.3f} "
                  f"vs different-class {p['s_diff']:.3f}")

    val = build_dataset(cfg.data.val, cfg.data, train=False)
    samples = [val[i] for i in np.linspace(0, len(val) - 1, 4).astype(int)]
    preds = {name: _predict(dirs[name], samples) for name in runs}
    rows = []
    for i, s in enumerate(samples):
        label = s["label"].numpy().astype(np.uint8)
        rows.append({"target image": denormalize(s["image"]), "ground truth": label,
                     **{f"{name} ({results[name]['miou'][subset]:.1f})": preds[name][i]
                        for name in runs}})
    title = f"MiniCity: {shown} {gain:+.1f} mIoU over source-only"
    if own is not None:
        title += f", {own:+.1f} over the BatchNorm control"
    comparison_figure(rows, out_dir / "figure.png", title)
    run_viz([list_checkpoints(dirs[name])[-1] for name in (base, shown)], out_dir)
    total = time.perf_counter() - t0
    final = load_checkpoint(list_checkpoints(dirs[shown])[-1])
    summary = {
        "methods": list(methods), "miou": miou, "gain": gain, "gain_over_control": own,
        "class_subset": subset,
        "iou": {name: r["iou"] for name, r in results.items()},
        "premise": {name: r.get("premise", {}) for name, r in results.items()},
        "seconds": {"data": t_data, **seconds, "total": total},
        "environment": environment(),
        **{k: final.get(k) for k in ("precision", "machine")},  # as the runs resolved them
        "minicity_content_sha256": content_hash(data_dir),
        "config": to_dict(runs[shown]),
    }
    write_text(out_dir / "results.json", json.dumps(summary, indent=1))
    print(f"\nwrote {out_dir / 'results.json'}, {out_dir / 'figure.png'}, and "
          f"features.png and similarity.png there (cosalign viz) ({total / 60:.1f} min in all)")
    return summary
