"""Named CL method presets (what ``jaxcl run --method NAME`` takes).

Each preset module calls ``register(name, description)`` on a factory ``(**hyperparams) -> Method``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any, Callable, Iterable

from jaxcl.core import Method

_PRESET_MODULES = ("baselines", "oliera", "jumplora", "osft")
_REGISTRY: dict[str, tuple[Callable[..., Method], str]] = {}
_loaded = False


def register(name: str, description: str) -> Callable:
    """Decorator: register a factory ``(**hyperparams) -> Method`` under ``name``."""

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name][0] is not factory:
            raise ValueError(f"method name {name!r} registered twice")
        _REGISTRY[name] = (factory, description)
        return factory

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _PRESET_MODULES:
        importlib.import_module(f"jaxcl.methods.{mod}")
    _loaded = True


def available_methods() -> dict[str, str]:
    """{name: one-line description} of every registered preset."""
    _load()
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def method_defaults(name: str) -> dict[str, Any]:
    """{hyper-parameter: default} of preset ``name`` (what ``get_method(name)`` uses when not overridden).

    Raises ValueError naming the known methods for an unknown name."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return {k: p.default for k, p in inspect.signature(_REGISTRY[name][0]).parameters.items()
            if p.default is not inspect.Parameter.empty}


# The papers' learning rates per preset: (first task, later tasks). Preset modules add theirs.
RECOMMENDED_LR: dict[str, tuple[float, float]] = {}


def recommended_learning_rate(name: str, task_index: int = 0) -> float | None:
    """The papers' learning rate for preset ``name`` at task ``task_index`` (None if not declared)."""
    _load()
    if name not in RECOMMENDED_LR:
        return None
    first, later = RECOMMENDED_LR[name]
    return first if task_index == 0 else later


def get_method(name: str, **hyperparams) -> Method:
    """Build the preset ``name`` with optional hyper-parameter overrides.

    Raises ValueError naming the known methods for an unknown name.
    """
    method_defaults(name)  # an unknown name fails here
    try:
        method = _REGISTRY[name][0](**hyperparams)
    except TypeError as e:  # an unknown or missing keyword
        raise ValueError(f"method {name!r}: bad hyper-parameters {sorted(hyperparams)}: {e}") from e
    return method._replace(name=name)


def parse_hyperparams(items: Iterable[str]) -> dict[str, Any]:
    """``["lam=0.1", "rank_rule='fixed'", "targets=q_proj"]`` -> ``{"lam": 0.1, ...}``.

    Values are Python literals (numbers, True/False/None, tuples, quoted strings); anything
    else is kept as a plain string. Raises ValueError for an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad hyper-parameter {item!r}; expected key=value")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out
