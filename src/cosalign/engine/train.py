"""One training loop for every method (methods/table.py declares them).

    L = L_seg(source, main) + aux * L_seg(source, aux) + sum over the run's terms of w * L_term

One iteration (:func:`train_step`): the source pass, back-propagated at once (so only one
domain's graph is alive at a time); the target pass when a term is active, then every active
term in the fixed order of ``methods.table.TERMS`` (entropy, alignment, adversarial, the
BatchNorm control), their weighted losses in one backward pass; the optimizer step; each
term's after-step hook (AdvEnt's discriminators); the dictionary update. The class-wise
dictionary takes the source features after every step, whatever the method: that keeps runs of
different methods on the same random stream, and lets a source-only run report the premise
diagnostics. docs/ARCHITECTURE.md draws the data flow.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from cosalign.config import Config, class_set_of, from_dict, to_dict, validate
from cosalign.data import InfiniteSampler, build_dataset
from cosalign.data.check import require_usable
from cosalign.data.classes import ClassSet
from cosalign.data.rcs import RareClassSampler, class_pixel_counts
from cosalign.data.transforms import denormalize
from cosalign.engine import distributed
from cosalign.engine.checkpoint import (
    check_class_set,
    checkpoint_name,
    describe_model,
    load_model_state,
    load_newest,
    load_optimizer,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    term_states,
)
from cosalign.engine.divergence import LossHistory, after_divergence
from cosalign.engine.evaluate import evaluate
from cosalign.engine.logger import Logger, read_metrics
from cosalign.engine.lr import learning_rate
from cosalign.engine.precision import precision_name, resolve_amp, signature
from cosalign.engine.runtime import (
    autocast_for,
    deterministic_mode,
    retain_freed_memory,
    seed_everything,
)
from cosalign.engine.stop import NAMES, Stopped, StopSignals, ignore_in_worker, stop_signals
from cosalign.losses import ClassFeatureDictionary
from cosalign.losses.segmentation import SEG_LOSSES, segmentation_loss
from cosalign.methods import Step, Term, build_terms
from cosalign.models import build_model
from cosalign.models.hrda import cut
from cosalign.models.upsample import upsample_logits
from cosalign.models.weights import load_weights
from cosalign.outputs import WriteError, write_text
from cosalign.runlock import run_lock


class NonFiniteLoss(RuntimeError):
    """A loss term (or, before a checkpoint, a weight) became NaN or inf; the run stops before
    the bad gradient is applied. The loop adds to the message which checkpoints it set aside,
    where a resume starts and what to change (engine/divergence.py)."""

    def __init__(self, iteration: int, term: str, value: float) -> None:
        super().__init__(f"iteration {iteration}: loss term '{term}' is {value}; training "
                         "stopped before applying it")
        self.iteration, self.term = iteration, term


def batches(dataset, batch_size: int, seed: int, start: int, workers: int,
            rcs: tuple[np.ndarray, float, float, float] | None = None):
    """Endless batches; ``start`` = batches already consumed (resume continues the order).
    ``rcs``: (class pixel counts, temperature, min pixels, min crop ratio) for rare class
    sampling."""
    rank, world = distributed.rank(), distributed.world_size()
    if rcs is None:
        sampler = InfiniteSampler(len(dataset), seed, start * batch_size, rank, world)
    else:
        sampler = RareClassSampler(*rcs, seed, start * batch_size, rank, world)
    # its own generator: creating the loader must not draw from the global RNG (resume)
    return iter(DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                           drop_last=True, persistent_workers=workers > 0,
                           generator=torch.Generator().manual_seed(seed),
                           worker_init_fn=ignore_in_worker if workers > 0 else None))


def _check(it: int, terms: dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteLoss` naming the first NaN/inf term (one wait for the GPU)."""
    if torch.isfinite(torch.stack([v.detach().float() for v in terms.values()])).all():
        return
    name, value = next((k, v) for k, v in terms.items() if not torch.isfinite(v).all())
    raise NonFiniteLoss(it, name, float(value.detach()))


def as_floats(terms: dict) -> dict[str, float]:
    """:func:`train_step`'s terms as Python floats (waits for the GPU: call it to log)."""
    return {k: float(v) for k, v in terms.items()}


def train_step(model, batch_s: dict, batch_t: dict, it: int, terms: list[Term],
               dictionary: ClassFeatureDictionary, opt,
               scaler: torch.amp.GradScaler | None = None, aux: float = 0.1,
               autocast=contextlib.nullcontext, diagnose: bool = False,
               seg_reduction: str = "labelled", align_corners: bool = True) -> dict:
    """One iteration of any method: ``terms`` are the run's parts (methods.build_terms),
    ``aux`` the weight of the auxiliary head's source loss, ``scaler`` fp16's loss scaler
    (default: a disabled one), ``seg_reduction`` the source loss's mean
    (losses/segmentation.py), ``align_corners`` how every term upsamples logits
    (``model.align_corners``). Returns the unweighted loss terms
    and diagnostics as detached 0-dim tensors (floats for those made when ``diagnose``):
    reading them waits for the GPU, so the loop reads them (:func:`as_floats`) only when it
    logs."""
    device = next(model.parameters()).device
    x_s, y_s = batch_s["image"].to(device), batch_s["label"].to(device)
    x_t = batch_t["image"].to(device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    opt.zero_grad(set_to_none=True)
    for term in terms:
        term.before_step(it)

    # 1. source: supervised segmentation with both heads
    with autocast():
        out_s = model(x_s)
    size_s = y_s.shape[-2:]
    seg_loss = SEG_LOSSES[seg_reduction]
    pred_s = upsample_logits(out_s.logits, size_s, align_corners)
    logged = {"seg": segmentation_loss(out_s, y_s, reduction=seg_reduction, pred=pred_s)}
    pred_s_aux = None  # a network without an auxiliary head (the transformer)
    if out_s.aux is not None:
        pred_s_aux = upsample_logits(out_s.aux, size_s, align_corners)
        logged["seg_aux"] = seg_loss(pred_s_aux, y_s)
    box = getattr(out_s, "feature_box", None)  # HRDA's detail features: their labels cut
    step = Step(it=it, model=model, x_s=x_s, y_s=y_s, x_t=x_t, f_s=out_s.features.detach(),
                pred_s=pred_s, pred_s_aux=pred_s_aux, dictionary=dictionary, autocast=autocast,
                diagnose=diagnose, out_s=out_s, align_corners=align_corners,
                valid_t=batch_t["valid"].to(device) if "valid" in batch_t else None,
                y_f=None if box is None else cut(y_s, box, tuple(x_s.shape[-2:])))
    active = [t for t in terms if t.active(it)]
    source_terms, weights = {}, {}
    for term in active:  # terms on the source pass (the feature distance)
        source_terms.update(term.source_losses(step))
        weights.update(term.weight)
    logged.update(source_terms)
    _check(it, logged)
    loss = logged["seg"] + aux * logged["seg_aux"] if "seg_aux" in logged else logged["seg"]
    if source_terms:
        loss = loss + sum(weights[k] * v for k, v in source_terms.items())
    scaler.scale(loss).backward()
    step.out_s = None  # its graph is freed

    # 2. target: the student's clean target pass when a term reads it, then every active
    # term's losses, weighted and summed into one backward
    readers = [t for t in active if t.needs_target]
    if readers:
        with torch.set_grad_enabled(any(t.grad for t in readers)), autocast():
            step.out_t = model(x_t)
    losses = {}
    for term in active:
        losses.update(term.losses(step))
    if losses:
        _check(it, losses)
        scaler.scale(sum(weights[k] * v for k, v in losses.items())).backward()
        logged.update(losses)
    scaler.step(opt)
    scaler.update()

    # 3. what the terms do after the network's step (AdvEnt: the discriminators' step)
    for term in active:
        logged.update(term.after_step(step))

    # 4. the dictionary takes this step's source features (gathered from every rank); every
    # rank's BatchNorm statistics become rank 0's
    dictionary.update(step.f_s, step.f_labels, distributed.all_gather_varlen)
    distributed.broadcast_buffers(model)
    return {**{k: v.detach() for k, v in logged.items()}, **step.stats}


@torch.no_grad()
def _log_predictions(logger: Logger, model, val, it: int, device, colorize,
                     align_corners: bool, n: int = 2) -> None:
    """A few val images with their coloured prediction and ground truth, to TensorBoard."""
    was_training = model.training
    model.eval()
    for i in range(min(n, len(val))):
        sample = val[i]
        label = sample["label"].numpy().astype(np.uint8)
        logits = upsample_logits(model(sample["image"][None].to(device)).logits, label.shape,
                                 align_corners)
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        image = cv2.resize(denormalize(sample["image"]), (label.shape[1], label.shape[0]))
        logger.image(it, f"val/{i}", np.concatenate([image, colorize(pred), colorize(label)], 1))
    model.train(was_training)


def _state(it, model, dictionary, opt, terms, scaler, cfg, classes: ClassSet, amp: str,
           machine: str) -> dict:
    """A checkpoint; ``amp`` is the precision ``train.amp`` resolved to on ``machine``
    (engine/precision.py), recorded with it, and ``classes`` the run's class set."""
    return {
        "iteration": it, "config": to_dict(cfg), "precision": precision_name(amp),
        "machine": machine, "model": model.state_dict(),
        "dictionary": dictionary.state_dict(), "optimizer": optimizer_state(opt, model),
        "terms": {t.name: t.state_dict() for t in terms if t.state_dict()},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rng_state(),
        "class_set": classes.to_dict(),
    }


def build_optimizer(model: torch.nn.Module, o) -> torch.optim.Optimizer:
    """``optim.name``: SGD with momentum (DeepLab-v2, DACS) or AdamW with betas (0.9, 0.999)
    (DAFormer), over the network's parameter groups (the head at ``head_lr_mult`` x lr)."""
    groups = model.param_groups(o.lr, o.head_lr_mult)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(0.9, 0.999),
                                 weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def train(cfg: Config, run_dir: str | Path, progress: bool = True,
          stop_at: int | None = None, lock: bool = True) -> dict | None:
    """Train (or resume, when ``run_dir`` holds checkpoints) and return the final evaluation.

    ``stop_at`` pauses the run after that iteration with a checkpoint and no evaluation (returns
    None); calling again resumes it. The demo branches "ours" off a source-only warm-up this way.

    The run folder has one writer: rank 0 holds its lock (cosalign/runlock.py; ``lock=False``
    is ``--no-lock``). Ctrl-C or SIGTERM stops the run after the step it is in, with a
    checkpoint of that step (engine/stop.py), and raises :class:`Stopped`; a file that cannot
    be written (a full disk) raises :class:`WriteError`. Both messages say which checkpoint is
    intact and how to resume.
    """
    validate(cfg)  # a config changed in code after loading, too
    device = distributed.setup(cfg.train.device)
    retain_freed_memory()  # no page faults for the buffers each step frees and takes again
    run_dir = Path(run_dir)
    with run_lock(run_dir, lock and distributed.is_main()), stop_signals() as stop, \
            deterministic_mode(cfg.train.deterministic, device):
        try:
            return _train(cfg, run_dir, device, progress, stop_at, stop)
        except WriteError as e:
            raise WriteError(f"{e}; {_intact(run_dir)}") from None
        except Stopped as e:
            if not e.where:  # a second signal, or one outside a step: stopped at once
                e.args = (f"stopped at once by {NAMES[e.signum]}; {_intact(run_dir)}",)
                e.where = "at once"
            raise


def _resume_hint(run_dir: Path) -> str:
    under = " (under torchrun: the same torchrun line)" if distributed.world_size() > 1 else ""
    return f"`cosalign train --resume {run_dir}` continues it{under}"


def _intact(run_dir: Path) -> str:
    """What of the run is intact: its newest checkpoint that loads, and how to go on."""
    path, state, _ = load_newest(run_dir)
    if path is None:
        return "the run has no checkpoint yet: the same command starts it again"
    return (f"intact: {path} (iteration {state['iteration']}); once that is fixed, "
            f"{_resume_hint(run_dir)}")


def _train(cfg: Config, run_dir: Path, device: torch.device, progress: bool,
           stop_at: int | None, stop: StopSignals) -> dict | None:
    seed_everything(cfg.train.seed)
    main = distributed.is_main()
    amp, said = resolve_amp(cfg.train.amp, device)  # auto: bf16 where native, else fp32
    machine = signature(device, amp)
    if main:
        tqdm.write(f"{run_dir.name}: {said}")
    classes = class_set_of(cfg)
    K = classes.num_classes

    # data: refuse a tree that `cosalign data check` rejects; target labels are never read
    for dom, labels in ((cfg.data.source, True), (cfg.data.target, False), (cfg.data.val, True)):
        for warning in require_usable(dom, classes, progress and main, labels):
            if main:
                tqdm.write(f"warning: {warning}")
    source = build_dataset(cfg.data.source, cfg.data, train=True, class_set=classes)
    target = build_dataset(cfg.data.target, cfg.data, train=True, labels=False,
                           class_set=classes)
    val = build_dataset(cfg.data.val, cfg.data, train=False, class_set=classes)

    # model, dictionary, the method's terms, optimizer
    model = build_model(cfg.model, K)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights, teacher=cfg.model.weights_teacher,
                     classes=list(classes.names))
    model.to(device).train()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    d = cfg.dictionary
    dictionary = ClassFeatureDictionary(K, d.capacity, model.feature_dim,
                                        d.per_image, d.enqueue).to(device)
    terms = build_terms(cfg, K, device, model)
    opt = build_optimizer(model, cfg.optim)
    o = cfg.optim
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    # resume from the newest checkpoint of this run that loads, if any
    start = 0
    path, state, note = load_newest(run_dir, device, aside=main)
    if note and main:
        tqdm.write(f"note: {note}")
    if state is not None:
        check_class_set(state, classes, path)
        changed = _changed_keys(from_dict(state["config"]), cfg)
        model_keys = [k for k in changed if k.startswith("model.")]
        load_model_state(model, state["model"], path, describe_model(cfg) + (
            f"; changed since the checkpoint: {', '.join(model_keys)}" if model_keys else ""))
        try:
            dictionary.load_state_dict(state["dictionary"])
        except ValueError as e:  # e.g. a branch that takes features from another layer
            tqdm.write(f"not resuming the dictionary ({e}); it starts empty")
        opt_note = load_optimizer(opt, model, state["optimizer"])
        saved = term_states(state)
        for term in terms:
            if term.name in saved:
                term.load_state_dict(saved[term.name])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        if main:
            note = f" (config changed: {', '.join(changed)})" if changed else ""
            if state.get("machine", machine) != machine:
                note += (f"; trained so far on {state['machine']}, continued on {machine}: "
                         "not bit for bit the run of one machine")
            note += f"; {opt_note}" if opt_note else ""
            tqdm.write(f"resuming {run_dir} from {path.name} at iteration {start}{note}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", f"# {said}; machine: {machine}\n"
                   + yaml.safe_dump(to_dict(cfg), sort_keys=False))

    net = distributed.wrap(model, device)
    b, w = cfg.data.batch_size, cfg.data.workers
    rcs = None
    if cfg.data.rcs_temperature > 0:
        values = cfg.data.source.label_values
        key = f"{classes}|{Path(values).read_text() if values else ''}"
        rcs = (class_pixel_counts(source, K, progress and main, key),
               cfg.data.rcs_temperature, cfg.data.rcs_min_pixels, cfg.data.rcs_min_crop_ratio)
    src_iter = batches(source, b, cfg.train.seed, start, w, rcs)
    tgt_iter = batches(target, b, cfg.train.seed + 1, start, w)
    logger = Logger(run_dir, resume_at=start)  # drops lines logged after the checkpoint
    history = LossHistory(start, device)
    autocast = autocast_for(amp, device)
    t = cfg.train
    end = t.iters if stop_at is None else min(stop_at, t.iters)
    if 0 < start < end and t.eval_every and start % t.eval_every == 0 \
            and not _eval_logged(run_dir, start):  # a stop came during this evaluation
        _evaluate(model, val, device, dictionary, cfg, classes, logger, start, progress)
    bar = tqdm(range(start, end), initial=start, total=t.iters, desc=run_dir.name,
               disable=not (progress and main), dynamic_ncols=True)
    t0 = time.perf_counter()
    for it in bar:
        with stop.deferred():  # a first Ctrl-C or SIGTERM lets the step finish
            lr = learning_rate(o.lr, it, o.schedule_iters, o.power, o.warmup_iters)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_mult"]
            diagnose = (it + 1) % t.log_every == 0
            try:
                values = train_step(net, next(src_iter), next(tgt_iter), it, terms, dictionary,
                                    opt, scaler, cfg.loss.aux, autocast, diagnose,
                                    cfg.loss.seg_reduction, cfg.model.align_corners)
            except NonFiniteLoss as e:
                raise _diverged(e, run_dir, history, cfg, logger) from None
            history.add(values["seg"])
            if diagnose:  # where the loop waits for the GPU to read numbers (and, under
                # torchrun, stop.agreed every 10 steps)
                values = as_floats(values)
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()
                                 if k in ("seg", "cos", "ent", "adv")})
                logger.log(it + 1, "train", {"lr": lr, "sec": time.perf_counter() - t0,
                                             **values})
            signum = stop.agreed(device, it)
        last = it + 1 == t.iters
        # the evaluation is logged before the checkpoint is written: a run resumed from a
        # checkpoint has every line up to it. A signal abandons it (it changes nothing the
        # checkpoint holds; the resume evaluates)
        if signum is None and ((t.eval_every and (it + 1) % t.eval_every == 0) or last):
            try:
                results = _evaluate(model, val, device, dictionary, cfg, classes, logger,
                                    it + 1, progress)
            except Stopped as e:
                signum = e.signum
        saving = (it + 1) % t.checkpoint_every == 0 or it + 1 == end or signum is not None
        if main and saving:
            with stop.deferred():
                try:
                    _check_weights(it + 1, model, terms)
                except NonFiniteLoss as e:
                    raise _diverged(e, run_dir, history, cfg, logger) from None
                save_checkpoint(_state(it + 1, model, dictionary, opt, terms, scaler, cfg,
                                       classes, amp, machine), run_dir, it + 1,
                                t.keep_checkpoints)
        if signum is not None:
            if distributed.world_size() > 1:  # every rank leaves after rank 0's checkpoint
                torch.distributed.barrier()
            logger.close()
            bar.close()
            e = Stopped(signum, f"stopped by {NAMES[signum]} after iteration {it + 1} of "
                        f"{t.iters}: wrote {run_dir / checkpoint_name(it + 1)}; "
                        f"{_resume_hint(run_dir)}")
            e.where = "after a step"
            raise e
    if end < t.iters:
        logger.close()
        return None
    if start >= t.iters:  # nothing left to train: the final evaluation, logged if it is not
        results = _evaluate(model, val, device, dictionary, cfg, classes,
                            None if _eval_logged(run_dir, start) else logger, start, progress)
    logger.close()
    return results


def _eval_logged(run_dir: Path, it: int) -> bool:
    return any(r["kind"] == "eval" and r["iter"] == it for r in read_metrics(run_dir))


def _evaluate(model, val, device, dictionary, cfg: Config, classes: ClassSet,
              logger: Logger | None, it: int, progress: bool) -> dict:
    """Evaluate on ``val``, log it (unless ``logger`` is None) and print the headline mIoU."""
    subsets = [cfg.data.classes, *cfg.data.extra_classes]
    main = distributed.is_main()
    results = evaluate(model, val, device, dictionary=dictionary, tau=cfg.align.tau,
                       subsets=subsets, progress=progress and main,
                       class_set=classes, align_corners=cfg.model.align_corners)
    if logger is not None:
        logger.log(it, "eval", {k: v for k, v in results.items() if k != "confusion"})
        if logger.tb is not None:
            _log_predictions(logger, model, val, it, device, classes.colorize,
                             cfg.model.align_corners)
    if main:
        tqdm.write(f"iter {it}: mIoU ({subsets[0]}) {results['miou'][subsets[0]]:.2f}")
    return results


def _diverged(e: NonFiniteLoss, run_dir: Path, history: LossHistory, cfg: Config,
              logger: Logger) -> NonFiniteLoss:
    """``e`` with the advice of engine/divergence.py, after setting aside the checkpoints
    written during the blow-up that led to it."""
    logger.close()
    if distributed.is_main():
        advice = after_divergence(run_dir, e.iteration, history.recent(), e.term, cfg)
        e.args = (f"{e}; {advice}",)
    return e


def _check_weights(it: int, model, terms: list[Term]) -> None:
    """Raise :class:`NonFiniteLoss` if a weight of the network or of a term (a teacher, the
    discriminators) is NaN or inf: such a checkpoint is never written."""
    tensors = [*model.state_dict().values()]
    for term in terms:
        tensors += [v for v in _tensors(term.state_dict())]
    floats = [v for v in tensors if v.is_floating_point()]
    # one flag per tensor, gathered on the model's device: an optimizer's state mixes devices
    # (Adam's ``step`` stays a CPU tensor next to CUDA moments)
    device = next(model.parameters()).device
    if floats and not torch.stack([v.isfinite().all().to(device) for v in floats]).all():
        raise NonFiniteLoss(it, "weights", float("nan"))


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


def _changed_keys(old: Config, new: Config) -> list[str]:
    a, b = to_dict(old), to_dict(new)
    out = []
    for section in a:
        for key in a[section]:
            if a[section][key] != b[section][key]:
                out.append(f"{section}.{key}")
    return out
