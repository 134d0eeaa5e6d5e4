"""The methods, in one table: each names its terms and their default weights.

A method is a set of target-side terms (the parts in ``TERMS``) with default weights in
``cfg.loss``; everything else follows from it: which parts a run builds
(:func:`build_terms`), what a checkpoint holds (each part's ``state_dict``), the names logged
(each part's weight names), and the name ``cosalign report`` gives a run (:func:`method_name`,
from the terms its config switches on). Adding a method is one :func:`register_method` call
(plus :func:`register_term` when it needs a new part); tests/test_methods.py adds one from
outside the package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from cosalign.config import Config, ConfigError, load_config, set_key
from cosalign.methods.adversarial import Adversarial
from cosalign.methods.alignment import CosineAlignment
from cosalign.methods.base import Term
from cosalign.methods.batchnorm import TargetBatchNorm
from cosalign.methods.entropy import Entropy
from cosalign.methods.feature_distance import FeatureDistance
from cosalign.methods.masked_consistency import MaskedConsistency
from cosalign.methods.self_training import SelfTraining

# every part, in the order the step runs them (the order of the summed losses too);
# self-training first: the alignment may read its mixed pass, MIC its pseudo-labels
TERMS: dict[str, type[Term]] = {t.name: t for t in (SelfTraining, MaskedConsistency,
                                                    FeatureDistance, Entropy, CosineAlignment,
                                                    Adversarial, TargetBatchNorm)}


@dataclass(frozen=True)
class Method:
    """``weights``: ``cfg.loss`` field -> default (None keeps the config's value; it must then
    be > 0 there, as ``loss.cos`` for ours, whose lambda the preset chooses)."""

    terms: tuple[str, ...]
    weights: dict[str, float | bool | None] = field(default_factory=dict)
    about: str = ""
    optional: tuple[str, ...] = ()  # terms a run of it may switch on too (off by default)


METHODS: dict[str, Method] = {}


def register_term(term: type[Term]) -> None:
    """Make a new part available to methods (it runs after the built-in ones)."""
    TERMS[term.name] = term


def register_method(name: str, terms: tuple[str, ...], weights: dict | None = None,
                    about: str = "", optional: tuple[str, ...] = ()) -> Method:
    """Add a method: its terms (names in ``TERMS``) and their default weights, and the terms a
    run of it may add (``optional``, e.g. DAFormer's feature distance for self-training). Every
    other term's weights are set to 0 when the method is chosen."""
    unknown = [t for t in (*terms, *optional) if t not in TERMS]
    if unknown:
        raise ValueError(f"method {name}: unknown terms {unknown}; known: {list(TERMS)}")
    METHODS[name] = Method(tuple(terms), dict(weights or {}), about, tuple(optional))
    return METHODS[name]


register_method("source_only", (), about="supervised on the source only")
register_method("target_bn", ("target_bn",), {"target_bn": True},
                about="the BatchNorm control: target batches through BatchNorm, no loss")
register_method("minent", ("entropy",), {"ent": 1e-3, "ent_aux": 2e-4}, about="MinEnt")
register_method("advent", ("adversarial",), {"adv": 1e-3, "adv_aux": 2e-4}, about="AdvEnt")
register_method("ours", ("alignment",), {"cos": None}, about="the cosine alignment")
register_method("ours_minent", ("alignment", "entropy"),
                {"cos": None, "ent": 1e-3, "ent_aux": 2e-4}, about="ours + MinEnt")
register_method("ours_advent", ("alignment", "adversarial"),
                {"cos": None, "adv": 1e-3, "adv_aux": 2e-4}, about="ours + AdvEnt")
register_method("dacs", ("self_training",), {"st": 1.0},
                about="self-training: EMA teacher, ClassMix, confidence-weighted pseudo-labels",
                optional=("feature_distance",))
register_method("ours_dacs", ("self_training", "alignment"), {"st": 1.0, "cos": None},
                about="the cosine alignment on top of self-training",
                optional=("feature_distance",))
register_method("mic", ("self_training", "masked_consistency"), {"st": 1.0, "mic": 1.0},
                about="self-training with MIC's masked image consistency",
                optional=("feature_distance",))
register_method("ours_mic", ("self_training", "masked_consistency", "alignment"),
                {"st": 1.0, "mic": 1.0, "cos": None},
                about="the cosine alignment on top of MIC", optional=("feature_distance",))


def method_weights(name: str) -> dict[str, float | bool]:
    """``{"loss.<key>": value}`` that select ``name``: its weights, every other term's off."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    method = METHODS[name]
    out = {}
    for term_name, term in TERMS.items():
        for key in term.weights:
            out[f"loss.{key}"] = method.weights.get(key, 0.0)
        if term is TargetBatchNorm:
            out["loss.target_bn"] = term_name in method.terms
    return {k: v for k, v in out.items() if v is not None}


def method_config(path: str | None = None, overrides: list[str] | None = None,
                  method: str | None = None) -> Config:
    """:func:`cosalign.config.load_config` with the weights of ``method`` applied between the
    file and the overrides (``--set loss.ent=0.01`` wins over ``--method minent``)."""
    if method is None:
        return load_config(path, overrides)
    return _kept_weights_set(load_config(path, overrides, method_weights(method), method), method)


def apply_method(cfg: Config, name: str) -> Config:
    """Set ``cfg``'s weights to those of method ``name`` (in place; returns ``cfg``)."""
    for key, value in method_weights(name).items():
        set_key(cfg, key, value)
    return _kept_weights_set(cfg, name)


def _kept_weights_set(cfg: Config, name: str) -> Config:
    """The weights the method keeps from the config (None in its table entry) must be > 0."""
    for key, value in METHODS[name].weights.items():
        if value is None and not getattr(cfg.loss, key) > 0:
            raise ConfigError(f"method {name!r} needs loss.{key} > 0 (the preset's or --set)")
    return cfg


def enabled_terms(cfg: Config) -> list[str]:
    """The parts a run with ``cfg`` builds, in step order."""
    return [name for name, term in TERMS.items() if term.enabled(cfg.loss)]


def build_terms(cfg: Config, num_classes: int, device: torch.device,
                model: torch.nn.Module | None = None) -> list[Term]:
    """The run's parts, set up with the student ``model`` when given (self-training copies it
    into its teacher; the others do not need it)."""
    terms = [TERMS[name](cfg, num_classes, device) for name in enabled_terms(cfg)]
    for term in terms if model is not None else []:
        term.setup(model)
    return terms


def method_name(cfg: Config) -> str:
    """The method whose terms ``cfg`` switches on, with the weights that differ from its
    defaults, e.g. ``minent (loss.ent=0.1)`` (of several methods with those terms, the one
    with the fewest differences); ``custom (...)`` when no method matches."""
    on = set(enabled_terms(cfg))
    named = []
    for name, method in METHODS.items():
        if set(method.terms) <= on <= set(method.terms) | set(method.optional):
            diff = [f"{k}={getattr(cfg.loss, k[5:]):g}"
                    for k, v in method_weights(name).items()
                    if not isinstance(v, bool) and getattr(cfg.loss, k[5:]) != v]
            named.append((len(diff), f"{name} ({', '.join(diff)})" if diff else name))
    if named:
        return min(named, key=lambda n: n[0])[1]
    known = {k for t in TERMS.values() for k in t.weights}
    weights = [f.name for f in dataclasses.fields(cfg.loss) if f.name in known]
    return "custom (" + ", ".join(f"loss.{k}={getattr(cfg.loss, k):g}" for k in weights) + ")"
