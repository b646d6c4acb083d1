"""The one abstraction every CL method in jaxcl is built from: a ``Method`` composed of ``Part``s.

A CL method is a NamedTuple of pure functions, like an ``optax.GradientTransformation``:

    memory    = method.init_memory(params)                          # once, before the first task
    params, memory = method.begin_task(params, memory, task)        # at each task start
    trainable = method.init(key, params, memory)                    # what this task trains
    tx        = method.tx(optimizer, memory)                        # optax transform (wraps optimizer)
    loss      = task_loss(method.apply(params, trainable, memory, progress=p))
                + sum(method.penalty(params, trainable, memory, progress=p).values())
    trainable = method.post_update(params, trainable, memory, progress=p)   # after each optimizer step
    params, memory = method.end_task(params, trainable, memory, task)       # at each task end

``params`` is the base model's pytree (see ``jaxcl.models.llama``), ``trainable`` and ``memory``
are plain dicts of arrays (``memory`` is what a task hands to the next one: frozen adapters,
accumulated updates, bases, ranks; orbax saves it as is). ``progress`` is a ``Progress(step,
total)`` of the current task (``None`` means "task finished", e.g. at inference).

Methods are built with ``compose(*parts)``, the way ``optax.chain`` builds optimizers. A ``Part``
fills any subset of these slots (all optional):

    init_memory(params) -> dict                      merged into memory (keys must not collide)
    init(key, params, memory) -> dict                merged into trainable (keys must not collide)
    delta(params, trainable, memory, deltas, progress) -> deltas
        ``deltas`` maps a target path ("layers/q_proj") to {source: Delta(raw, scale)}; the
        effective update of a leaf is Σ_source scale·raw. LoRA writes source "current", the
        incremental part writes "past", a gate rewrites "current". Parts run in order.
    merge(w, total_delta) -> w_eff                   how a leaf and its summed update combine;
        at most one part may set it (default: additive, ``w + Δ``; OLieRA: ``w ⊙ exp(Δ)``)
    apply(params, trainable, memory, progress) -> params      a final params rewrite (full FT)
    penalty(params, trainable, memory, deltas, progress) -> {name: scalar}
    tx(optimizer, memory) -> optax.GradientTransformation     wraps the optimizer (projections)
    post_update(params, trainable, memory, progress) -> trainable   (e.g. a threshold init at step k0)
    begin_task(params, memory, task) -> (params, memory)
    end_task(params, trainable, memory, task, deltas) -> (params, memory)
        ``deltas`` are the final (progress=None) updates of the task, for parts that store them.
    report(params, trainable, memory, deltas) -> {name: float}    numbers to log (e.g. sparsity)

Everything is jit-compatible: ``apply``/``penalty``/``post_update`` run inside the compiled
train step; ``begin_task``/``end_task`` run once per task, outside (they may use Python control
flow and data). Nothing mutates its arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Params = dict[str, Any]
Memory = dict[str, Any]
Trainable = dict[str, Any]


class Progress(NamedTuple):
    """Where training is inside the current task: optimizer step ``step`` (0-based) of ``total``."""

    step: jax.Array | int
    total: jax.Array | int

    @property
    def fraction(self) -> jax.Array:
        return jnp.asarray(self.step, jnp.float32) / jnp.maximum(jnp.asarray(self.total, jnp.float32), 1.0)


class Delta(NamedTuple):
    """One contribution to a target leaf's update: ``scale * raw`` (raw has the leaf's shape)."""

    raw: jax.Array
    scale: float | jax.Array = 1.0

    @property
    def value(self) -> jax.Array:
        return self.scale * self.raw


Deltas = dict[str, dict[str, Delta]]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What ``begin_task``/``end_task`` know about a task.

    Attributes:
      index: position of the task in the stream (0-based).
      name: task name.
      num_tasks: length of the stream, if known.
      config: the model's ``LlamaConfig`` (for parts that run the model, e.g. OSFT's importance).
      batches: a callable returning an iterable of this task's training batches (the engine's
        batch dicts), for parts that need data statistics; may be None.
      num_steps: optimizer steps planned for this task.
    """

    index: int
    name: str = ""
    num_tasks: int | None = None
    config: Any = None
    batches: Callable[[], Iterable[dict]] | None = None
    num_steps: int | None = None


class Part(NamedTuple):
    """A small piece of a CL method; any slot may be None (identity). See the module docstring."""

    name: str
    init_memory: Callable | None = None
    init: Callable | None = None
    delta: Callable | None = None
    merge: Callable | None = None
    apply: Callable | None = None
    penalty: Callable | None = None
    tx: Callable | None = None
    post_update: Callable | None = None
    begin_task: Callable | None = None
    end_task: Callable | None = None
    report: Callable | None = None


class Method(NamedTuple):
    """A composed CL method (pure functions). Build one with ``compose``."""

    name: str
    parts: tuple[Part, ...]
    init_memory: Callable[[Params], Memory]
    init: Callable[[jax.Array, Params, Memory], Trainable]
    apply: Callable[..., Params]
    penalty: Callable[..., dict[str, jax.Array]]
    tx: Callable[[optax.GradientTransformation, Memory], optax.GradientTransformation]
    post_update: Callable[..., Trainable]
    begin_task: Callable[[Params, Memory, TaskInfo], tuple[Params, Memory]]
    end_task: Callable[[Params, Trainable, Memory, TaskInfo], tuple[Params, Memory]]
    deltas: Callable[..., Deltas]
    report: Callable[..., dict[str, float]]
    regime: str = "sequential"  # "sequential" (one task after another) or "joint" (all tasks' data mixed: MTL)


# ----------------------------------------------------------------------------- tree paths


def path_of(keypath: tuple) -> str:
    """"layers/q_proj" for the key path of params["layers"]["q_proj"]."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)


def leaf_paths(params: PyTree) -> list[str]:
    return [path_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def get_path(tree: Mapping, path: str) -> Any:
    node = tree
    for k in path.split("/"):
        node = node[k]
    return node


def set_path(tree: Mapping, path: str, value: Any) -> dict:
    """A copy of the nested dict ``tree`` with ``path`` replaced by ``value`` (no mutation)."""
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = set_path(tree[head], rest, value) if rest else value
    return out


# ----------------------------------------------------------------------------- compose


def _merge_dicts(dicts: Iterable[tuple[str, Mapping]], what: str) -> dict:
    out: dict = {}
    for part_name, d in dicts:
        for k, v in d.items():
            if k in out:
                raise ValueError(f"compose: part '{part_name}' sets {what} key '{k}' already set by another part")
            out[k] = v
    return out


def additive_merge(w: jax.Array, total_delta: jax.Array) -> jax.Array:
    """The default merge: ``w + Δ``."""
    return w + total_delta.astype(w.dtype)


def compose(*parts: Part, name: str | None = None, regime: str = "sequential") -> Method:
    """Combine parts into a ``Method`` (in order, like ``optax.chain``).

    Raises ValueError at construction for a non-Part argument, two parts named alike, two
    parts that both set ``merge``, or an unknown regime.
    """
    for p in parts:
        if not isinstance(p, Part):
            raise TypeError(f"compose takes Part objects, got {type(p).__name__}")
    names = [p.name for p in parts]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"compose: parts must have distinct names, repeated: {sorted(dup)}")
    mergers = [p for p in parts if p.merge is not None]
    if len(mergers) > 1:
        raise ValueError(f"compose: only one part may set merge, got {[p.name for p in mergers]}")
    if regime not in ("sequential", "joint"):
        raise ValueError(f"unknown regime {regime!r}: 'sequential' or 'joint'")
    merge = mergers[0].merge if mergers else additive_merge
    method_name = name or "+".join(names)

    def init_memory(params):
        return _merge_dicts(((p.name, p.init_memory(params)) for p in parts if p.init_memory), "memory")

    def init(key, params, memory):
        keys = jax.random.split(key, max(len(parts), 1))
        return _merge_dicts(
            ((p.name, p.init(k, params, memory)) for p, k in zip(parts, keys) if p.init), "trainable"
        )

    def deltas(params, trainable, memory, progress=None) -> Deltas:
        d: Deltas = {}
        for p in parts:
            if p.delta:
                d = p.delta(params, trainable, memory, d, progress)
        return d

    def apply(params, trainable, memory, progress=None):
        d = deltas(params, trainable, memory, progress)
        for path, sources in d.items():
            if not sources:
                continue
            total = sum(s.value for s in sources.values())
            params = set_path(params, path, merge(get_path(params, path), total))
        for p in parts:
            if p.apply:
                params = p.apply(params, trainable, memory, progress)
        return params

    def penalty(params, trainable, memory, progress=None):
        d = deltas(params, trainable, memory, progress)
        terms: dict[str, jax.Array] = {}
        for p in parts:
            if p.penalty:
                for k, v in p.penalty(params, trainable, memory, d, progress).items():
                    terms[f"{p.name}/{k}"] = v
        return terms

    def tx(optimizer, memory):
        for p in parts:
            if p.tx:
                optimizer = p.tx(optimizer, memory)
        return optimizer

    def post_update(params, trainable, memory, progress):
        for p in parts:
            if p.post_update:
                trainable = p.post_update(params, trainable, memory, progress)
        return trainable

    def begin_task(params, memory, task):
        for p in parts:
            if p.begin_task:
                params, memory = p.begin_task(params, memory, task)
        return params, memory

    def end_task(params, trainable, memory, task):
        d = deltas(params, trainable, memory, None)
        for p in parts:
            if p.end_task:
                params, memory = p.end_task(params, trainable, memory, task, d)
        return params, memory

    def report(params, trainable, memory):
        d = deltas(params, trainable, memory, None)
        out: dict[str, float] = {}
        for p in parts:
            if p.report:
                for k, v in p.report(params, trainable, memory, d).items():
                    out[f"{p.name}/{k}"] = float(v)
        return out

    return Method(
        name=method_name, parts=tuple(parts), init_memory=init_memory, init=init, apply=apply,
        penalty=penalty, tx=tx, post_update=post_update, begin_task=begin_task, end_task=end_task,
        deltas=deltas, report=report, regime=regime,
    )


def deployed_params(method: Method, params: Params, memory: Memory) -> Params:
    """The weights a method deploys between tasks (no task id): ``apply(params, init(params, memory), memory)``.

    After ``end_task`` a method's knowledge lives in ``params`` and ``memory``; a fresh ``init``
    must contribute a zero update (LoRA's B = 0, a fresh generator = identity), except for
    parts that resume from memory (SeqLoRA's carried adapter, full fine-tuning's copy).
    """
    trainable = method.init(jax.random.PRNGKey(0), params, memory)
    return method.apply(params, trainable, memory, None)


def total_penalty(terms: Mapping[str, jax.Array]) -> jax.Array:
    """Sum of a penalty dict (0.0 when empty)."""
    return sum(terms.values(), jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------- targets

LORA_TARGETS = r"layers/(q_proj|v_proj)$"  # the papers' default (PEFT's q,v)
ALL_LINEAR_TARGETS = r"layers/(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def select_targets(params: PyTree, targets: str | Iterable[str]) -> list[str]:
    """Leaf paths of ``params`` matched by a regex (``re.search``) or listed explicitly.

    Raises ValueError naming the pattern and the available paths when nothing matches, or an
    explicitly listed path that does not exist.
    """
    import re

    paths = leaf_paths(params)
    if isinstance(targets, str):
        chosen = [p for p in paths if re.search(targets, p)]
        if not chosen:
            raise ValueError(f"targets {targets!r} match no params leaf; available: {paths}")
        return chosen
    chosen = list(targets)
    missing = [t for t in chosen if t not in paths]
    if missing:
        raise ValueError(f"targets {missing} are not params leaves; available: {paths}")
    if not chosen:
        raise ValueError("targets is empty")
    return chosen
