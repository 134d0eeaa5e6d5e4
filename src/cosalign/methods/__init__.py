"""Methods as declared sets of target-side terms (table.py), and the parts they are made of."""

from cosalign.methods.base import Step, Term
from cosalign.methods.table import (
    METHODS,
    TERMS,
    Method,
    apply_method,
    build_terms,
    enabled_terms,
    method_config,
    method_name,
    method_weights,
    register_method,
    register_term,
)

__all__ = ["METHODS", "TERMS", "Method", "Step", "Term", "apply_method", "build_terms",
           "enabled_terms", "method_config", "method_name", "method_weights", "register_method",
           "register_term"]
