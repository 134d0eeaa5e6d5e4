"""Checkpoints: written atomically, the last K kept, everything needed to resume exactly; the
one place that makes and parses their file names (``ckpt_<iteration>.pt``) and loads a trained
model from a run or a checkpoint (:func:`load_trained`).

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``. It is first written to a temporary file in the same
folder, flushed to disk, then renamed over the final name: a crash or a full disk while saving
leaves the previous checkpoint untouched and loadable, and no temporary file.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from cosalign.config import ConfigError, class_set_of, from_dict, load_config
from cosalign.data.classes import ClassSet, class_set_from_dict, load_class_set
from cosalign.models import build_model
from cosalign.models.published import is_published
from cosalign.models.weights import WeightsError, load_weights
from cosalign.outputs import atomic_write

PATTERN = re.compile(r"^ckpt_(\d{7})\.pt$")


def checkpoint_name(iteration: int) -> str:
    return f"ckpt_{iteration:07d}.pt"


def checkpoint_iteration(path: str | Path) -> int | None:
    """The iteration in a checkpoint file name (None if it is not one)."""
    m = PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


class CheckpointError(Exception):
    """A checkpoint file is unreadable or is not a cosalign checkpoint."""


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``
    (:func:`cosalign.outputs.atomic_write`): a full disk is a :class:`WriteError` naming
    ``path``, and leaves no temporary file."""
    with atomic_write(path, durable=True) as f:
        torch.save(obj, f)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if PATTERN.match(p.name))


def save_checkpoint(state: dict, run_dir: Path, iteration: int, keep: int = 3) -> Path:
    """Write ``ckpt_<iteration>.pt`` atomically and delete all but the newest ``keep``."""
    path = Path(run_dir) / checkpoint_name(iteration)
    save_atomic(state, path)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a cosalign checkpoint with ``weights_only=True``; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or pickled foreign objects
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a cosalign checkpoint (expected keys 'model' and 'config', found {keys})"
        )
    return state


def set_aside(path: Path, why: str) -> Path:
    """Rename a checkpoint to ``<name>.<why>`` (kept for a look, no longer resumed from)."""
    target = Path(path).with_name(f"{Path(path).name}.{why}")
    os.replace(path, target)
    return target


def load_newest(run_dir: Path, map_location="cpu",
                aside: bool = False) -> tuple[Path | None, dict | None, str]:
    """``(path, state, note)`` of a run's newest checkpoint that loads, ``(None, None, note)``
    when there is none. A newer one that does not load (truncated, corrupt) is skipped, and
    the note says so; with ``aside`` it is also renamed ``*.unreadable`` (a resume does that)."""
    notes = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            if aside:
                set_aside(path, "unreadable")
            notes.append(f"{path.name} does not load ({str(e).split(': ', 1)[-1]})"
                         + (f", set aside as {path.name}.unreadable" if aside else ""))
            continue
        return path, state, "; ".join(notes)
    return None, None, "; ".join(notes)


def load_model_state(model: torch.nn.Module, weights: dict, path: Path, expected: str = "") -> None:
    """``model.load_state_dict(weights)`` with a :class:`CheckpointError` that names the first
    layer whose shape differs (or that is missing or extra) instead of PyTorch's traceback;
    ``expected`` describes the model that was built (e.g. its depth and class count)."""
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: layer {name} has shape {tuple(tensor.shape)} in the checkpoint, the "
                f"model expects {tuple(own[name].shape)}{expected}")
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model lacks"
        raise CheckpointError(f"{path}: the checkpoint {which} ({len(missing)} missing, "
                              f"{len(extra)} extra layers){expected}")
    model.load_state_dict(weights)


def describe_model(cfg) -> str:
    """" (the run's model: model.depth=101, model.width=1, 19 classes)": what a checkpoint is
    compared to."""
    m, classes = cfg.model, f"{class_set_of(cfg).num_classes} classes of {cfg.data.class_set}"
    if m.arch != "deeplabv2":
        return f" (the run's model: model.arch={m.arch}, model.head={m.head}, {classes})"
    return f" (the run's model: model.depth={m.depth}, model.width={m.width:g}, {classes})"


def saved_class_set(state: dict) -> ClassSet:
    """The class set a checkpoint was trained with (before class sets: the 19 Cityscapes)."""
    saved = state.get("class_set")
    return class_set_from_dict(saved) if saved else load_class_set("cityscapes")


def check_class_set(state: dict, class_set: ClassSet, path: Path) -> None:
    """A run resumes only a checkpoint of its own classes (names, in order)."""
    saved = saved_class_set(state)
    if saved.names != class_set.names:
        raise CheckpointError(
            f"{path}: trained with class set {saved.name!r} ({saved.num_classes} classes: "
            f"{', '.join(saved.names[:4])}...), the run has {class_set.name!r} "
            f"({class_set.num_classes}: {', '.join(class_set.names[:4])}...); a run keeps its "
            "class set (start a new run folder for another)")


WHICH = ("student", "teacher")  # the network a checkpoint is evaluated with


def load_trained(path: str | Path, device: torch.device | str = "cpu", which: str = "student",
                 config: str | None = None):
    """``(model, config, checkpoint path)``: the network of a cosalign checkpoint (or of a run
    folder's newest), on ``device``, in eval mode, and the config it was trained with. Used by
    eval, predict, viz, the demo and the benchmarks. ``which="teacher"``: the EMA teacher of a
    self-training run instead of the student. A checkpoint of DAFormer's, HRDA's or MIC's
    (models/published.py) is read into the network of ``config`` (a preset or YAML file), which
    it then needs."""
    path = Path(path)
    if path.is_file() and _published(path):
        return _load_published(path, device, which, config)
    if path.is_dir():  # a run folder: its newest checkpoint that loads
        folder = path
        path, state, note = load_newest(folder, device)
        if path is None:
            raise CheckpointError(f"{folder}: a folder without a loadable checkpoint "
                                  "(ckpt_*.pt)" + (f"; {note}" if note else ""))
        if note:
            print(f"note: {note}; using {path.name}")
    else:
        state = load_checkpoint(path, map_location=device)
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not load ({e})") from None
    model = build_model(cfg.model, saved_class_set(state).num_classes)
    weights = state["model"]
    if which == "teacher":
        teacher = term_states(state).get("self_training")
        if teacher is None:
            raise CheckpointError(f"{path}: no teacher in this checkpoint (it is not a "
                                  "self-training run); evaluate the student")
        weights = teacher["teacher"]
    load_model_state(model, weights, path)
    return model.to(device).eval(), cfg, path


def _published(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not readable this way: load_checkpoint says why
        return False
    return isinstance(state, dict) and is_published(state)


def _load_published(path: Path, device, which: str, config: str | None):
    if config is None:
        raise CheckpointError(f"{path}: a DAFormer/HRDA/MIC checkpoint holds no config; give "
                              "its network with --config PRESET (e.g. gta5_to_cityscapes_daformer "
                              "or gta5_to_cityscapes_hrda)")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CheckpointError(f"--config {config}: {e}") from None
    classes = class_set_of(cfg)
    model = build_model(cfg.model, classes.num_classes)
    try:
        load_weights(model, path, teacher=which == "teacher", classes=list(classes.names))
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    return model.to(device).eval(), cfg, path


def term_states(state: dict) -> dict[str, dict]:
    """The checkpoint state of each term of the method (``{term name: state}``); checkpoints
    written before the method table held AdvEnt's as top-level keys, read here as the
    adversarial term's."""
    if "terms" in state:
        return state["terms"]
    if state.get("discriminators") is not None:
        return {"adversarial": {"discriminators": state["discriminators"],
                                "optimizer": state["optimizer_d"]}}
    return {}


def optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """``opt.state_dict()`` plus the name of each parameter in the optimizer's order, so that a
    run resumed with another parameter set (a BatchNorm mode, a frozen layer) can map it."""
    names = {p: n for n, p in model.named_parameters()}
    return {**opt.state_dict(),
            "param_names": [names[p] for g in opt.param_groups for p in g["params"]]}


def load_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module, saved: dict) -> str:
    """Load :func:`optimizer_state`. When the parameters differ from the saved ones, each
    parameter found by name (with the same shape) keeps its state (e.g. SGD momentum) and the
    others start afresh. Returns what happened, for the resume line ("" when nothing to say)."""
    names = {p: n for n, p in model.named_parameters()}
    params = [p for g in opt.param_groups for p in g["params"]]
    current = [names[p] for p in params]
    saved_names = saved.get("param_names")
    plain = {k: v for k, v in saved.items() if k != "param_names"}
    if saved_names == current:
        opt.load_state_dict(plain)
        return ""
    if saved_names is None:  # a checkpoint from before parameter names were saved
        try:
            opt.load_state_dict(plain)
            return ""
        except ValueError:
            return ("optimizer state starts afresh: the parameter set changed and the "
                    "checkpoint does not name its parameters")
    index = {n: i for i, n in enumerate(saved_names)}
    fresh = opt.state_dict()  # the current layout: parameters numbered 0.. in group order
    for j, (name, p) in enumerate(zip(current, params)):
        state = plain["state"].get(index.get(name, -1))
        if state is not None and all(not torch.is_tensor(v) or v.dim() == 0 or
                                     v.shape == p.shape for v in state.values()):
            fresh["state"][j] = state
    opt.load_state_dict(fresh)
    return (f"optimizer state mapped by parameter name: {len(fresh['state'])} of "
            f"{len(current)} parameters keep theirs, the others start afresh "
            f"({len(set(saved_names) - set(current))} saved ones are no longer trained)")


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return _plain(state)


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`. Every generator takes a CPU byte tensor, whatever
    ``map_location`` the checkpoint was loaded with (a resume on a GPU loads it to the GPU)."""
    state = _on_cpu(state)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a run resumed on fewer GPUs: the first
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _on_cpu(obj):
    """``obj`` with every tensor in it moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, tuple | list):
        return [_on_cpu(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    return obj


def _plain(obj):
    """RNG states as types ``weights_only`` loading accepts (lists, ints, tensors)."""
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64))
    return obj
