"""Method parameters: defaults read from function signatures, values made JSON-ready.

Each option's default is written once, in the signature of the function that uses it;
dispatchers (:func:`qsmprep.qsm.background.remove_background`,
:func:`qsmprep.qsm.masking.brain_mask`), wrappers that pass an option through, and the
configuration read it from there with :func:`keyword_defaults`.
"""

from __future__ import annotations

import inspect

import numpy as np


def keyword_defaults(func, *, exclude=()):
    """``{name: default}`` of the keyword-only parameters of ``func`` that have a default."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and name not in exclude}


def jsonable(value):
    """numpy scalars/arrays/tuples to plain JSON types (recursively through lists and tuples)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
