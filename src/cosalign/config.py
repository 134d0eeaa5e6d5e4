"""Configuration: nested dataclasses, YAML presets and ``--set a.b=value`` overrides.

A preset (src/cosalign/configs/*.yaml) holds only the fields that differ from the defaults
below. An override must name an existing field and keep its type; a field with a fixed set of
values declares them next to it (:func:`choice`), a numeric field its valid range
(:func:`bounded`), and a value outside them is a one-line error that says what is valid (the
CLI takes its ``choices`` from the same constants). :func:`validate` checks the whole config
when it is loaded (and when a run starts), including what one field cannot say alone: the
class set and its subsets, each domain's dataset options. The sections say one thing
each: ``loss`` the weight of every term (the methods of cosalign/methods/table.py set them),
``align`` the settings of the cosine alignment, ``dictionary`` those of the source feature
dictionary. Keys of the first layout (``loss.tau``, ``loss.capacity``,
``loss.bf16_matmul``...) are read as their new names (:data:`RENAMED`), so old configs and
checkpoints still load.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cosalign.datasets import DATASETS

PRESET_DIR = Path(__file__).parent / "configs"

NORMALIZATIONS = ("caffe", "imagenet")
INTERPOLATIONS = ("bilinear", "bicubic")
FEATURE_LAYERS = ("layer4", "layer4_pre", "layer3")
DEPTHS = (18, 34, 50, 101)  # models/resnet.py
BN_MODES = ("train", "affine_frozen", "frozen")
# deeplabv2: the ResNet DeepLab-v2 of the paper; mit_b*: a Mix Transformer with a fusion head
# (models/transformer.py, DAFormer's network)
ARCHS = ("deeplabv2", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")
FUSION_HEADS = ("daformer", "segformer")
OPTIMIZERS = ("sgd", "adamw")
MATCHES = ("all", "max")
REFERENCES = ("dictionary", "batch")
CLASS_RESTRICTS = ("none", "pseudo")
ENQUEUES = ("pixels", "mean")
MATMULS = ("auto", "bf16", "fp32")
AMPS = ("auto", "none", "bf16", "fp16")  # auto: bf16 where native (engine/precision.py)
DEVICES = ("auto", "cuda", "cpu")
TEACHER_MODES = ("train", "eval")
MIX_CLASSES = ("image", "batch")
ALIGN_ON = ("clean", "mixed")
ALIGN_PSEUDO = ("student", "teacher")
EMA_RULES = ("dacs", "daformer")  # methods/self_training.py
SEG_REDUCTIONS = ("labelled", "all")  # losses/segmentation.py


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and what is valid."""


def choice(default, choices: tuple):
    """A field whose value must be one of ``choices``."""
    assert default in choices
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class Range:
    """The valid numbers of a field (each item, for a list): ``low`` <= x (or < x when
    ``open_low``), x <= ``high`` (or < when ``open_high``); None: unbounded."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x) -> bool:
        return ((self.low is None or (x > self.low if self.open_low else x >= self.low)) and
                (self.high is None or (x < self.high if self.open_high else x <= self.high)))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"a number in {'(' if self.open_low else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.open_high else ']'}")
        if self.low is not None:
            return f"a number {'>' if self.open_low else '>='} {self.low:g}"
        return f"a number {'<' if self.open_high else '<='} {self.high:g}"


def bounded(default, low: float | None = None, high: float | None = None, *,
            open_low: bool = False, open_high: bool = False, **kw):
    """A numeric field (or list of numbers) that must lie in a :class:`Range`."""
    rng = Range(low, high, open_low, open_high)
    return field(default=default, metadata={"range": rng}, **kw)


@dataclass
class DomainConfig:
    """One dataset split as read from disk."""

    dataset: str = choice("gta5", DATASETS)
    root: str = "data/gta5"
    split: str = "train"  # cityscapes, acdc, darkzurich: train, val (test: no labels)
    # acdc: fog, night, rain, snow (default all); darkzurich: night, day, twilight (default
    # night; val has night only)
    conditions: list[str] = field(default_factory=list)
    # optional list of images (relative to the image folder; folder: "image label" pairs)
    list_file: str | None = None
    # folder: ROOT/images/<path><image_suffix> pairs with ROOT/labels/<path><label_suffix>
    # (image_suffix "" = any image extension); label_values: a YAML file with this domain's own
    # `values` (and `ignore`) onto the class set, when its files use other values
    image_suffix: str = ""
    label_suffix: str = ".png"
    label_values: str | None = None
    # resize to (width, height); None keeps size
    size: tuple[int, int] | None = bounded((1280, 720), 1)
    # keep_ratio: scale by min(max(size) / long side, min(size) / short side) instead, as mmcv's
    # imrescale (DAFormer: a 1914x1052 GTA5 frame becomes 1280x704); false stretches (ADVENT, DACS)
    keep_ratio: bool = False
    crop: tuple[int, int] | None = bounded(None, 1)  # random crop (width, height) after resizing
    # re-draw the crop (up to 10 times) while one class covers this share or more of its
    # labelled pixels (mmseg's RandomCrop cat_max_ratio; DAFormer's source 0.75); 1: off
    cat_max_ratio: float = bounded(1.0, 0, 1, open_low=True)
    flip: bool = False  # random horizontal flip
    # strength of random brightness/contrast/saturation/colour gains
    photometric: float = bounded(0.0, 0)
    # target: (top, bottom, left, right) pixels of the resized image where pseudo-labels weigh
    # 0, cropped and flipped with the image (HRDA's crop_pseudo_margins, Cityscapes only)
    margins: tuple[int, int, int, int] | None = bounded(None, 0)


@dataclass
class DataConfig:
    source: DomainConfig = field(default_factory=DomainConfig)
    target: DomainConfig = field(default_factory=lambda: DomainConfig(
        dataset="cityscapes", root="data/cityscapes", size=(1024, 512)))
    val: DomainConfig = field(default_factory=lambda: DomainConfig(
        dataset="cityscapes", root="data/cityscapes", split="val", size=(1024, 512)))
    # the classes predicted: cityscapes (19), synthia16, synthia13, or a YAML file
    # (data/classes.py)
    class_set: str = "cityscapes"
    # headline class subset for mIoU, one of the class set's (a file's set: its name, the
    # default when this is left at cityscapes19)
    classes: str = "cityscapes19"
    extra_classes: list[str] = field(default_factory=list)  # also reported, e.g. synthia13
    normalization: str = choice("caffe", NORMALIZATIONS)  # caffe: BGR - mean
    interpolation: str = choice("bilinear", INTERPOLATIONS)  # image resize
    batch_size: int = bounded(1, 1)  # per domain and per process
    workers: int = bounded(2, 0)
    cache: bool = False  # keep decoded, resized images in memory (small datasets)
    # rare class sampling of source images (data/rcs.py; DAFormer: temperature 0.01); 0: off
    rcs_temperature: float = bounded(0.0, 0)
    # pixels of its label (at the file's resolution) a class must have for the image to be
    # drawn for it (DAFormer 3000); then the crop is re-drawn (up to 10 times) until it holds
    # more than rcs_min_crop_ratio x rcs_min_pixels of the class (DAFormer 0.5, HRDA 2; 0: off)
    rcs_min_pixels: float = bounded(3000.0, 0)
    rcs_min_crop_ratio: float = bounded(0.5, 0)


@dataclass
class HRDAConfig:
    """HRDA's two scales around the MiT segmenter (models/hrda.py; docs/METHOD.md section 15).
    Sizes are (width, height) in input pixels."""

    enabled: bool = False
    detail_crop: tuple[int, int] = bounded((512, 512), 1)  # HRDA: half the 1024 outer crop
    detail_weight: float = bounded(0.1, 0, 1, open_high=True)  # lambda_d (hr_loss_weight)
    classwise: bool = True  # one attention map per class (attention_classwise)
    attention_embed: int = bounded(256, 1)  # the attention head's E (attention_embed_dim)
    overlap: bool = True  # detail windows at half-window stride (hr_slide_overlapping)
    # outer windows at test time, stride half a window (test_cfg mode slide); null: whole image
    window: tuple[int, int] | None = bounded((1024, 1024), 1)
    # the head map the alignment and its dictionary see in training: the context's (HRDA's
    # feature distance's scale) or the detail crop's (docs/METHOD.md section 15)
    align_features: str = choice("context", ("context", "detail"))


@dataclass
class ModelConfig:
    arch: str = choice("deeplabv2", ARCHS)
    # deeplabv2's fields
    depth: int = choice(101, DEPTHS)
    width: float = bounded(1.0, 0, open_low=True)  # channels x width
    rates: tuple[int, ...] = bounded((6, 12, 18, 24), 1)  # ASPP dilation rates
    feature_layer: str = choice("layer4", FEATURE_LAYERS)
    bn: str = choice("affine_frozen", BN_MODES)
    weights: str | None = None  # a local weights file, or minicity_pretrained
    weights_teacher: bool = False  # a DAFormer/HRDA/MIC checkpoint's EMA teacher, not its student
    # how logits are upsampled to labels, pseudo-labels and the evaluated resolution: true as
    # the ADVENT/DACS line (DeepLab-v2), false as DAFormer, HRDA and MIC (mmseg's heads)
    align_corners: bool = True
    # mit_b*'s fields: the head and its embedding width E (the features the alignment sees)
    head: str = choice("daformer", FUSION_HEADS)
    embed: int = bounded(256, 1)
    hrda: HRDAConfig = field(default_factory=HRDAConfig)


@dataclass
class LossConfig:
    """The weight of every term; 0 turns a term off (docs/METHOD.md section 4)."""

    aux: float = bounded(0.1, 0)  # the auxiliary segmentation head (source)
    cos: float = bounded(0.0, 0)  # lambda_cos, the cosine alignment
    ent: float = bounded(0.0, 0)  # MinEnt, main head
    ent_aux: float = bounded(0.0, 0)
    adv: float = bounded(0.0, 0)  # AdvEnt, main head
    adv_aux: float = bounded(0.0, 0)
    st: float = bounded(0.0, 0)  # self-training: the pseudo-labelled, class-mixed image (DACS)
    # MIC's masked consistency: the patch-masked target image against the same pseudo-labels
    mic: float = bounded(0.0, 0)
    # feature distance to the frozen pretrained network, thing classes (DAFormer)
    fd: float = bounded(0.0, 0)
    # the BatchNorm control: target batches go through the network in train mode (BatchNorm
    # statistics move toward the target, as under every adaptation loss), with no loss
    target_bn: bool = False
    # the source cross-entropy's mean: over labelled pixels (ADVENT, DACS) or over all pixels,
    # ignored ones counting 0 (mmseg's, DAFormer's)
    seg_reduction: str = choice("labelled", SEG_REDUCTIONS)


@dataclass
class AlignConfig:
    """The cosine alignment (losses/cosine.py)."""

    tau: float = bounded(0.5, -1, 1)  # cosine threshold
    match: str = choice("all", MATCHES)
    reference: str = choice("dictionary", REFERENCES)
    class_restrict: str = choice("none", CLASS_RESTRICTS)
    start_iter: int = bounded(0, 0)  # applied from this iteration on
    # the products: auto = the features' precision (bf16 under train.amp=bf16); norms,
    # thresholds and sums stay fp32 in every case
    matmul: str = choice("auto", MATMULS)


@dataclass
class DictionaryConfig:
    """The class-wise source feature dictionary (losses/dictionary.py)."""

    capacity: int = bounded(1000, 1)  # Q, slots per class
    per_image: int = bounded(16, 1)  # q, positions enqueued per image and class
    enqueue: str = choice("pixels", ENQUEUES)


@dataclass
class SelfTrainConfig:
    """Self-training (methods/self_training.py, docs/METHOD.md section 10): an EMA teacher's
    confident pseudo-labels on class-mixed images (DACS, DAFormer)."""

    alpha: float = bounded(0.999, 0, 1)  # EMA of the student's parameters (DAFormer; DACS 0.99)
    # dacs: the first update copies the student after its first step; daformer: the student is
    # copied at the first step and the teacher is the running mean of theta_0 .. theta_k
    ema: str = choice("dacs", EMA_RULES)
    teacher: str = choice("train", TEACHER_MODES)  # train: batch statistics (DACS, DAFormer)
    threshold: float = bounded(0.968, 0, 1)  # max probability that counts a pixel as confident
    # fraction of rows whose pseudo-labels weigh 0 (DAFormer 15/512)
    ignore_top: float = bounded(0.0, 0, 1, open_high=True)
    ignore_bottom: float = bounded(0.0, 0, 1, open_high=True)  # (DAFormer 120/512)
    mix: str = choice("image", MIX_CLASSES)  # half of the classes of each source image (DACS)
    # or of the whole source batch (DAFormer)
    # colour jitter strength on the mixed image (DAFormer; DACS 0.25)
    jitter: float = bounded(0.2, 0)
    jitter_p: float = bounded(0.8, 0, 1)
    blur_p: float = bounded(0.5, 0, 1)  # Gaussian blur, sigma U(0.15, 1.15)
    # ours_dacs: which target features the alignment sees (the clean target image through the
    # student, or the target-origin positions of the mixed image), and whose predictions
    # restrict its classes under align.class_restrict=pseudo
    # (defaults chosen on MiniCity's selection split: docs/results/minicity.md)
    align_on: str = choice("mixed", ALIGN_ON)
    align_pseudo: str = choice("student", ALIGN_PSEUDO)
    # MIC (Hoyer et al., CVPR 2023): square patches of this many pixels of the network's input
    # (32 at 512 crops, 64 at 1024) dropped with probability mask_ratio
    mask_patch: int = bounded(32, 1)
    mask_ratio: float = bounded(0.7, 0, 1, open_high=True)


@dataclass
class OptimConfig:
    # sgd (DeepLab-v2, DACS) with momentum, or adamw (DAFormer) with betas (0.9, 0.999); both
    # take weight_decay, which the transformer's norms do not get
    name: str = choice("sgd", OPTIMIZERS)
    lr: float = bounded(2.5e-4, 0, open_low=True)
    momentum: float = bounded(0.9, 0, 1, open_high=True)
    weight_decay: float = bounded(5e-4, 0)
    power: float = bounded(0.9, 0)  # poly decay (1 - it / schedule_iters) ** power
    schedule_iters: int = bounded(250_000, 1)
    head_lr_mult: float = bounded(10.0, 0, open_low=True)
    lr_d: float = bounded(1e-4, 0, open_low=True)  # AdvEnt discriminator (Adam, betas 0.9, 0.99)
    # mmcv's linear warm-up over these iterations: the poly rate x (1 - (1 - it/W)(1 - 1e-6))
    # (DAFormer 1500; engine/lr.py)
    warmup_iters: int = bounded(0, 0)


@dataclass
class TrainConfig:
    iters: int = bounded(120_000, 0)  # 0: no training, evaluate the initial weights
    seed: int = bounded(0, 0)
    # autocast precision: none (fp32), bf16, fp16 (CUDA, with loss scaling), or auto: bf16 where
    # the device computes it natively (a GPU with bf16, a CPU with AMX or AVX512-BF16), fp32
    # elsewhere; the run prints and records what it chose (engine/precision.py)
    amp: str = choice("none", AMPS)
    channels_last: bool = False  # NHWC convolutions (faster on recent CPUs and GPUs)
    log_every: int = bounded(50, 1)
    eval_every: int = bounded(5000, 0)  # 0: only at the end
    checkpoint_every: int = bounded(5000, 1)
    keep_checkpoints: int = bounded(3, 0)  # the newest K; 0 keeps all
    deterministic: bool = False  # deterministic kernels where they exist (warns where not)
    device: str = choice("auto", DEVICES)  # auto: GPU LOCAL_RANK if CUDA is there; cpu: gloo


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    dictionary: DictionaryConfig = field(default_factory=DictionaryConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# keys of the first layout -> (new key, value map)
RENAMED: dict[str, tuple[str, dict | None]] = {
    **{f"loss.{k}": (f"align.{k}", None)
       for k in ("tau", "match", "reference", "class_restrict", "start_iter")},
    **{f"loss.{k}": (f"dictionary.{k}", None) for k in ("capacity", "per_image", "enqueue")},
    "loss.bf16_matmul": ("align.matmul", {None: "auto", True: "bf16", False: "fp32"}),
}


def _keys(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _keys(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _suggest(cfg: Config, key: str) -> str:
    """"; did you mean align.tau? (keys of loss: ...)": the nearest keys (old names by their
    new ones) and the keys of the section named."""
    import difflib

    keys = _keys(cfg)
    names = {**{k: k for k in keys}, **{old: new for old, (new, _) in RENAMED.items()},
             **{k.split(".", 1)[1]: k for k in keys if k.count(".") == 1}}
    close = {names[m] for m in difflib.get_close_matches(key, names, n=3, cutoff=0.8)}
    section = key.split(".")[0]
    inside = [k.split(".", 1)[1] for k in keys if k.startswith(section + ".")]
    where = (f"keys of {section}: {', '.join(inside)}" if inside else
             f"sections: {', '.join(sorted({k.split('.')[0] for k in keys}))}")
    return (f"; did you mean {' or '.join(sorted(close))}?" if close else "") + f" ({where})"


def _coerce(value, hint, key: str):
    """Check ``value`` against the type hint of field ``key`` (ints pass for floats, lists for
    tuples, None for optional fields, ``"a,b"`` for a list; YAML 1.1 reads ``1e-3`` as a string,
    so a string that Python reads as a number passes for a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        if isinstance(value, str):  # --set KEY=a,b: the command line's list syntax
            value = [yaml.safe_load(v) for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else object
        items = [_coerce(v, item, key) for v in value]
        fixed = origin is tuple and len(args) > 1 and args[1] is not Ellipsis
        if fixed and len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    is_bool_for_int = hint is int and isinstance(value, bool)
    if hint is object or (isinstance(value, hint) and not is_bool_for_int):
        return value
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")


def set_key(cfg: Config, key: str, value) -> None:
    """Set ``cfg.<key>`` (dotted) to ``value`` after checking the key exists, the type fits and
    the value is one of the field's choices. Old key names (:data:`RENAMED`) are read as new."""
    if key in RENAMED:
        key, values = RENAMED[key]
        value = values.get(value, value) if values else value
    parts = key.split(".")
    obj = cfg
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
        if not dataclasses.is_dataclass(obj):
            break
    fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if parts[-1] not in fields or dataclasses.is_dataclass(getattr(obj, parts[-1])):
        raise ConfigError(f"unknown config key {key!r}{_suggest(cfg, key)}")
    hints = typing.get_type_hints(type(obj))
    value = _coerce(value, hints[parts[-1]], key)
    _check_value(key, fields[parts[-1]], value)
    setattr(obj, parts[-1], value)


def _check_value(key: str, f: dataclasses.Field, value) -> None:
    """The field's declared choices and range."""
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    valid = f.metadata.get("range")
    items = value if isinstance(value, tuple | list) else () if value is None else (value,)
    if valid is not None and any(isinstance(x, bool) or not isinstance(x, int | float)
                                 or x not in valid for x in items):
        each = " for each value" if isinstance(value, tuple | list) else ""
        raise ConfigError(f"{key}: expected {valid}{each}, got {value!r}")


def _fields(obj, prefix: str = ""):
    """``(key, field, value)`` for every leaf field."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def validate(cfg: Config) -> Config:
    """The whole config: every field's choices and range (again, for a config changed in code
    after loading), then what one field cannot say alone: class subsets by name, the
    pseudo-label bands, the dictionary's sizes. Raises :class:`ConfigError` naming the key;
    returns ``cfg``."""
    for key, f, value in _fields(cfg):
        _check_value(key, f, value)

    sets = class_set_of(cfg)
    if cfg.data.classes == "cityscapes19" and "cityscapes19" not in sets.subset_names:
        cfg.data.classes = sets.subset_names[0]  # the default: the set's full subset
    for key, name in [("data.classes", cfg.data.classes),
                      *(("data.extra_classes", n) for n in cfg.data.extra_classes)]:
        if name not in sets.subset_names:
            raise ConfigError(f"{key}: expected a class subset of data.class_set "
                              f"{cfg.data.class_set!r}: one of {', '.join(sets.subset_names)}; "
                              f"got {name!r}")
    st = cfg.selftrain
    if st.ignore_top + st.ignore_bottom >= 1:
        raise ConfigError(f"selftrain.ignore_top + selftrain.ignore_bottom: expected < 1 (rows "
                          f"left for pseudo-labels), got {st.ignore_top} + {st.ignore_bottom}")
    if cfg.loss.mic > 0 and not cfg.loss.st > 0:
        raise ConfigError(f"loss.mic: the masked consistency learns from self-training's "
                          f"pseudo-labels; it needs loss.st > 0 (--method mic), got "
                          f"loss.st={cfg.loss.st}")
    h = cfg.model.hrda
    if cfg.model.arch != "deeplabv2" or h.enabled:  # no auxiliary head
        network = (f"model.arch {cfg.model.arch}" if cfg.model.arch != "deeplabv2" else
                   "model.hrda.enabled (HRDA fuses DeepLab-v2's main head only)")
        for key in ("aux", "ent_aux", "adv_aux"):
            if getattr(cfg.loss, key) > 0:
                raise ConfigError(f"loss.{key}: {network} has no auxiliary head; expected 0, "
                                  f"got {getattr(cfg.loss, key)}")
    if h.enabled:
        for name in ("source", "target"):
            crop = getattr(cfg.data, name).crop or getattr(cfg.data, name).size
            if crop and any(c < d for c, d in zip(crop, h.detail_crop)):
                raise ConfigError(f"model.hrda.detail_crop: expected at most data.{name}'s "
                                  f"crop {list(crop)} (width, height), got {list(h.detail_crop)}")
    d = cfg.dictionary
    if d.per_image > d.capacity:
        raise ConfigError(f"dictionary.per_image: expected at most dictionary.capacity "
                          f"({d.capacity}), got {d.per_image}")
    from cosalign.data import check_domain

    for name in ("source", "target", "val"):
        dom = getattr(cfg.data, name)
        try:
            check_domain(dom, sets)
        except ValueError as e:
            raise ConfigError(f"data.{name}.{e}") from None
    return cfg


def class_set_of(cfg: Config):
    """The run's :class:`cosalign.data.classes.ClassSet` (``data.class_set``)."""
    from cosalign.data.classes import ClassSetError, load_class_set

    try:
        return load_class_set(cfg.data.class_set)
    except ClassSetError as e:
        raise ConfigError(f"data.class_set: {e}") from None


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested sections -> ``{"section.key": value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def preset_names() -> list[str]:
    """The bundled presets (src/cosalign/configs/*.yaml), by name."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled preset (``minicity``, ``gta5_to_cityscapes``...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = PRESET_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise ConfigError(f"{name_or_path}: no such config file or preset (presets: "
                      f"{preset_names()})")


def load_config(path: str | None = None, overrides: list[str] | None = None,
                method: dict | None = None, method_name: str | None = None) -> Config:
    """Defaults, then the YAML file (or preset name), then ``method``'s ``{key: value}``
    (:func:`cosalign.methods.method_config` passes a method's weights), then the file's own
    settings for that method (its ``methods: {<method_name>: {...}}`` section, e.g. DACS's batch
    and crops in the paper presets), then ``key=value`` overrides (so ``--set loss.ent=0.01``
    wins over ``--method minent``)."""
    cfg = Config()
    per_method: dict = {}
    if path is not None:
        file = resolve_preset(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of config sections")
        per_method = data.pop("methods", None) or {}
        if not isinstance(per_method, dict):
            raise ConfigError(f"{file}: methods: expected a mapping of method names to settings")
        bad = [name for name, section in per_method.items() if not isinstance(section, dict)]
        if bad:
            raise ConfigError(f"{file}: methods.{bad[0]}: expected a mapping of config sections")
        for section in (data, *per_method.values()):  # every method's section, checked now
            for key, value in flatten(section).items():
                try:
                    set_key(cfg if section is data else Config(), key, value)
                except ConfigError as e:
                    raise ConfigError(f"{file}: {e}") from None
    for key, value in (method or {}).items():
        set_key(cfg, key, value)
    for key, value in flatten(per_method.get(method_name) or {}).items():
        set_key(cfg, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. align.tau=0.6")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        set_key(cfg, key.strip(), value)
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    return json_safe(dataclasses.asdict(cfg))


def json_safe(obj):
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (for configs stored in checkpoints)."""
    cfg = Config()
    for key, value in flatten(d).items():
        set_key(cfg, key, value)
    return cfg
