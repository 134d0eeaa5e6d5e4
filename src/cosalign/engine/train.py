"""One training loop for every method: source-only, MinEnt, AdvEnt, ours and their combinations.

    L = L_seg(source, main) + aux * L_seg(source, aux)
      + cos * L_cos(target features, reference) + ent * L_ent(target) + adv * L_adv(target)

A weight of 0 turns a term off (config.METHODS names the weights of each method); with every
target weight 0, ``loss.target_bn`` still sends the target batch through the network in train
mode, without a loss: the BatchNorm control ("target_bn"). The source
pass is back-propagated before the target pass, so only one domain's graph is alive at a time.
The class-wise dictionary is updated with the source features after every step, whatever the
method: that keeps runs of different methods on the same random stream, and lets a source-only
run report the premise diagnostics.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cosalign.config import Config, LossConfig, from_dict, to_dict
from cosalign.data import InfiniteSampler, build_dataset
from cosalign.data.check import require_usable
from cosalign.data.labels import IGNORE_INDEX, NUM_CLASSES, colorize
from cosalign.data.transforms import denormalize
from cosalign.engine import distributed
from cosalign.engine.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_optimizer,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cosalign.engine.diagnostics import PremiseMeter, feature_stats
from cosalign.engine.evaluate import confusion_over, summarize, upsample_logits
from cosalign.engine.logger import Logger
from cosalign.losses import (
    ClassFeatureDictionary,
    cosine_alignment,
    entropy_loss,
    labelled_features,
)
from cosalign.losses.entropy import self_information
from cosalign.models import Discriminator, build_model
from cosalign.models.weights import load_weights

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0
MATMUL_DTYPES = {None: None, True: torch.bfloat16, False: torch.float32}  # loss.bf16_matmul


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the run stops before the bad gradient is applied."""

    def __init__(self, iteration: int, term: str, value: float) -> None:
        super().__init__(f"iteration {iteration}: loss term '{term}' is {value}; training stopped "
                         "before applying it (the last checkpoint on disk is intact)")
        self.iteration, self.term = iteration, term


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * max(0.0, 1.0 - it / total) ** power


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(on: bool, device: torch.device):
    """Deterministic kernels for the duration of a run (``train.deterministic``), then the
    process's previous settings again (the switch is global to the process).

    Ops without a deterministic kernel (on CUDA e.g. the 2-D NLL loss behind cross-entropy)
    warn instead of failing, so a run on CUDA is reproducible up to those ops. On CUDA it sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set; cuBLAS reads it once, so export it before
    starting Python for products that are deterministic too.
    """
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def autocast_for(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"train.amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def batches(dataset, batch_size: int, seed: int, start: int, workers: int):
    """Endless batches; ``start`` = batches already consumed (resume continues the order)."""
    sampler = InfiniteSampler(len(dataset), seed, start * batch_size, distributed.rank(),
                              distributed.world_size())
    # its own generator: creating the loader must not draw from the global RNG (resume)
    return iter(DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                           drop_last=True, persistent_workers=workers > 0,
                           generator=torch.Generator().manual_seed(seed)))


def _check(it: int, terms: dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteLoss` naming the first NaN/inf term (one wait for the GPU)."""
    if torch.isfinite(torch.stack([v.detach().float() for v in terms.values()])).all():
        return
    name, value = next((k, v) for k, v in terms.items() if not torch.isfinite(v).all())
    raise NonFiniteLoss(it, name, float(value.detach()))


def as_floats(terms: dict) -> dict[str, float]:
    """:func:`train_step`'s terms as Python floats (waits for the GPU: call it to log)."""
    return {k: float(v) for k, v in terms.items()}


def train_step(model, batch_s: dict, batch_t: dict, it: int, cfg: LossConfig,
               dictionary: ClassFeatureDictionary, opt, discs=None, opt_d=None,
               autocast=contextlib.nullcontext, scaler=None, diagnose: bool = False) -> dict:
    """One iteration of every method. Returns the unweighted loss terms and diagnostics as
    detached 0-dim tensors (floats for those made when ``diagnose``): reading them waits for
    the GPU, so the loop reads them (:func:`as_floats`) only when it logs."""
    device = next(model.parameters()).device
    x_s, y_s = batch_s["image"].to(device), batch_s["label"].to(device)
    x_t = batch_t["image"].to(device)
    weights = {"seg": 1.0, "seg_aux": cfg.aux, "cos": cfg.cos, "ent": cfg.ent,
               "ent_aux": cfg.ent_aux, "adv": cfg.adv, "adv_aux": cfg.adv_aux}
    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler else loss).backward()

    opt.zero_grad(set_to_none=True)
    if discs is not None:
        discs.requires_grad_(False)

    # 1. source: supervised segmentation with both heads
    with autocast():
        out_s = model(x_s)
    size_s, size_t = y_s.shape[-2:], x_t.shape[-2:]
    pred_s, pred_s_aux = upsample_logits(out_s.logits, size_s), upsample_logits(out_s.aux, size_s)
    terms = {"seg": F.cross_entropy(pred_s, y_s, ignore_index=IGNORE_INDEX),
             "seg_aux": F.cross_entropy(pred_s_aux, y_s, ignore_index=IGNORE_INDEX)}
    _check(it, terms)
    backward(terms["seg"] + cfg.aux * terms["seg_aux"])
    f_s = out_s.features.detach()
    stats: dict[str, float] = {}

    # 2. target: the adaptation terms
    use_cos = cfg.cos > 0 and it >= cfg.start_iter
    if use_cos or cfg.ent > 0 or cfg.adv > 0:
        with autocast():
            out_t = model(x_t)
        if cfg.ent > 0 or cfg.adv > 0:  # both work on predictions at input resolution
            pred_t = upsample_logits(out_t.logits, size_t)
            pred_t_aux = upsample_logits(out_t.aux, size_t)
        target_terms = {}
        if cfg.ent > 0:
            target_terms["ent"] = entropy_loss(pred_t)
            target_terms["ent_aux"] = entropy_loss(pred_t_aux)
        if use_cos:
            if cfg.reference == "dictionary":
                ref, ref_cls = dictionary.reference()
            else:
                ref, ref_cls = labelled_features(f_s, y_s)
            pseudo = out_t.logits.argmax(1) if cfg.class_restrict == "pseudo" else None
            al = cosine_alignment(
                out_t.features, ref, tau=cfg.tau, match=cfg.match,
                ref_cls=None if pseudo is None else ref_cls, pseudo=pseudo,
                matmul_dtype=MATMUL_DTYPES[cfg.bf16_matmul])
            target_terms["cos"] = al.loss
            stats["selected"] = al.selected / max(al.pairs, 1)  # a tensor: no wait here
            if diagnose:
                stats.update(feature_stats(out_t.features, ref))
        if cfg.adv > 0:
            for name, pred in (("adv", pred_t), ("adv_aux", pred_t_aux)):
                d_out = discs[name](self_information(pred))
                target_terms[name] = F.binary_cross_entropy_with_logits(
                    d_out, torch.full_like(d_out, SOURCE_LABEL))
        _check(it, target_terms)
        backward(sum(weights[k] * v for k, v in target_terms.items()))
        terms.update(target_terms)
    elif cfg.target_bn:  # the BatchNorm control: target statistics only, nothing to back-propagate
        with torch.no_grad(), autocast():
            model(x_t)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()

    # 3. AdvEnt discriminators: source maps are labelled 0, target maps 1
    if discs is not None and cfg.adv > 0:
        discs.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        for name, p_s, p_t in (("adv", pred_s, pred_t), ("adv_aux", pred_s_aux, pred_t_aux)):
            for pred, label in ((p_s, SOURCE_LABEL), (p_t, TARGET_LABEL)):
                d_out = discs[name](self_information(pred.detach()))
                loss_d = F.binary_cross_entropy_with_logits(d_out, torch.full_like(d_out, label))
                (loss_d / 2).backward()
                terms[f"d_{name}_{'src' if label == SOURCE_LABEL else 'tgt'}"] = loss_d.detach()
        opt_d.step()

    # 4. the dictionary takes this step's source features (gathered from every rank)
    dictionary.update(f_s, y_s, distributed.all_gather_varlen)
    return {**{k: v.detach() for k, v in terms.items()}, **stats}


def evaluate(model, val_set, device, *, dictionary=None, tau: float = 0.5,
             subsets: list[str], progress: bool = True, batch_size: int = 1) -> dict:
    """mIoU on ``val_set`` (sharded over ranks, confusion matrices summed) and, when a
    dictionary is given, the premise diagnostics of engine/diagnostics.py."""
    shard = Subset(val_set, range(distributed.rank(), len(val_set), distributed.world_size()))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=0)
    meter = PremiseMeter(NUM_CLASSES)
    on_batch = None
    if dictionary is not None and len(dictionary) > 0:
        ref, ref_cls = dictionary.reference()

        def on_batch(batch, pred, out):
            meter.update(out.features, batch["label"].to(device), ref, ref_cls, tau)

    cm = confusion_over(model, loader, NUM_CLASSES, device, progress=progress,
                        on_batch=on_batch)
    cm = distributed.all_reduce_sum(torch.as_tensor(cm, device=device)).cpu().numpy()
    results = summarize(cm, subsets)
    results["premise"] = meter.result()  # per rank (rank 0's shard under torchrun)
    results["confusion"] = cm.tolist()
    return results


@torch.no_grad()
def _log_predictions(logger: Logger, model, val, it: int, device, n: int = 2) -> None:
    """A few val images with their coloured prediction and ground truth, to TensorBoard."""
    was_training = model.training
    model.eval()
    for i in range(min(n, len(val))):
        sample = val[i]
        label = sample["label"].numpy().astype(np.uint8)
        logits = upsample_logits(model(sample["image"][None].to(device)).logits, label.shape)
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        image = cv2.resize(denormalize(sample["image"]), (label.shape[1], label.shape[0]))
        logger.image(it, f"val/{i}", np.concatenate([image, colorize(pred), colorize(label)], 1))
    model.train(was_training)


def _state(it, model, dictionary, opt, discs, opt_d, scaler, cfg) -> dict:
    return {
        "iteration": it, "config": to_dict(cfg), "model": model.state_dict(),
        "dictionary": dictionary.state_dict(), "optimizer": optimizer_state(opt, model),
        "discriminators": None if discs is None else discs.state_dict(),
        "optimizer_d": None if opt_d is None else opt_d.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(), "rng": rng_state(),
    }


def train(cfg: Config, run_dir: str | Path, progress: bool = True,
          stop_at: int | None = None) -> dict | None:
    """Train (or resume, when ``run_dir`` holds checkpoints) and return the final evaluation.

    ``stop_at`` pauses the run after that iteration with a checkpoint and no evaluation (returns
    None); calling again resumes it. The demo branches "ours" off a source-only warm-up this way.
    """
    device = distributed.setup(cfg.train.device)
    with deterministic_mode(cfg.train.deterministic, device):
        return _train(cfg, Path(run_dir), device, progress, stop_at)


def _train(cfg: Config, run_dir: Path, device: torch.device, progress: bool,
           stop_at: int | None) -> dict | None:
    seed_everything(cfg.train.seed)
    main = distributed.is_main()
    subsets = [cfg.data.classes, *cfg.data.extra_classes]

    # data: refuse a tree that `cosalign data check` rejects; target labels are never read
    for dom, labels in ((cfg.data.source, True), (cfg.data.target, False), (cfg.data.val, True)):
        require_usable(dom.root, dom.dataset, dom.split, dom.list_file, progress and main, labels)
    source = build_dataset(cfg.data.source, cfg.data, train=True)
    target = build_dataset(cfg.data.target, cfg.data, train=True, labels=False)
    val = build_dataset(cfg.data.val, cfg.data, train=False)

    # model, dictionary, discriminators, optimizers
    model = build_model(cfg.model, NUM_CLASSES)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    model.to(device).train()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    dictionary = ClassFeatureDictionary(NUM_CLASSES, cfg.loss.capacity, model.feature_dim,
                                        cfg.loss.per_image, cfg.loss.enqueue).to(device)
    discs = None
    if cfg.loss.adv > 0:
        discs = torch.nn.ModuleDict({"adv": Discriminator(NUM_CLASSES),
                                     "adv_aux": Discriminator(NUM_CLASSES)}).to(device)
    o = cfg.optim
    opt = torch.optim.SGD(model.param_groups(o.lr, o.head_lr_mult), lr=o.lr, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    opt_d = None if discs is None else torch.optim.Adam(discs.parameters(), o.lr_d, (0.9, 0.99))
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None

    # resume from the newest checkpoint of this run, if any
    start = 0
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        state = load_checkpoint(ckpts[-1], map_location=device)
        model.load_state_dict(state["model"])
        try:
            dictionary.load_state_dict(state["dictionary"])
        except ValueError as e:  # e.g. a branch that takes features from another layer
            tqdm.write(f"not resuming the dictionary ({e}); it starts empty")
        opt_note = load_optimizer(opt, model, state["optimizer"])
        if discs is not None and state.get("discriminators") is not None:
            discs.load_state_dict(state["discriminators"])
            opt_d.load_state_dict(state["optimizer_d"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        changed = _changed_keys(from_dict(state["config"]), cfg)
        if main:
            note = f" (config changed: {', '.join(changed)})" if changed else ""
            note += f"; {opt_note}" if opt_note else ""
            tqdm.write(f"resuming {run_dir} from {ckpts[-1].name} at iteration {start}{note}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    net = model
    if distributed.world_size() > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    b, w = cfg.data.batch_size, cfg.data.workers
    src_iter = batches(source, b, cfg.train.seed, start, w)
    tgt_iter = batches(target, b, cfg.train.seed + 1, start, w)
    logger = Logger(run_dir)
    autocast = autocast_for(cfg.train.amp, device)
    t = cfg.train
    end = t.iters if stop_at is None else min(stop_at, t.iters)
    bar = tqdm(range(start, end), initial=start, total=t.iters, desc=run_dir.name,
               disable=not (progress and main), dynamic_ncols=True)
    t0 = time.perf_counter()
    for it in bar:
        lr = poly_lr(o.lr, it, o.schedule_iters, o.power)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        if opt_d is not None:
            for group in opt_d.param_groups:
                group["lr"] = poly_lr(o.lr_d, it, o.schedule_iters, o.power)
        diagnose = (it + 1) % t.log_every == 0
        terms = train_step(net, next(src_iter), next(tgt_iter), it, cfg.loss, dictionary, opt,
                           discs, opt_d, autocast, scaler, diagnose)
        if diagnose:  # the only place the loop waits for the GPU to read numbers
            terms = as_floats(terms)
            bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()
                             if k in ("seg", "cos", "ent", "adv")})
            logger.log(it + 1, "train", {"lr": lr, "sec": time.perf_counter() - t0, **terms})
        last = it + 1 == t.iters
        if main and ((it + 1) % t.checkpoint_every == 0 or it + 1 == end):
            save_checkpoint(_state(it + 1, model, dictionary, opt, discs, opt_d, scaler, cfg),
                            run_dir, it + 1, t.keep_checkpoints)
        if (t.eval_every and (it + 1) % t.eval_every == 0) or last:
            results = evaluate(model, val, device, dictionary=dictionary, tau=cfg.loss.tau,
                               subsets=subsets, progress=progress and main)
            logger.log(it + 1, "eval", {k: v for k, v in results.items() if k != "confusion"})
            if logger.tb is not None:
                _log_predictions(logger, model, val, it + 1, device)
            if main:
                tqdm.write(f"iter {it + 1}: mIoU ({subsets[0]}) {results['miou'][subsets[0]]:.2f}")
    logger.close()
    if end < t.iters:
        return None
    if start >= t.iters:  # nothing left to train: evaluate the checkpoint as it is
        results = evaluate(model, val, device, dictionary=dictionary, tau=cfg.loss.tau,
                           subsets=subsets, progress=progress and main)
    return results


def _changed_keys(old: Config, new: Config) -> list[str]:
    a, b = to_dict(old), to_dict(new)
    out = []
    for section in a:
        for key in a[section]:
            if a[section][key] != b[section][key]:
                out.append(f"{section}.{key}")
    return out
