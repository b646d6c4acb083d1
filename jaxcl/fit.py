"""Train one task with a ``Method``: the loss, a jit-compiled step, and ``fit_task``.

The loss of a step is the mean cross-entropy over the answer tokens of the batch (the format of
``jaxcl.batch``) plus the method's penalty terms:

    L(trainable) = CE(apply(params, trainable, memory)) + Σ_k penalty_k(params, trainable, memory)

Gradients are taken w.r.t. ``trainable`` only; ``params`` (the base model) and ``memory`` (what
earlier tasks left) are inputs of the compiled step, never constants baked into it: the engine
compiles one step per task (memory shapes may grow between tasks) and none per batch. After ``end_task`` evaluate ``jaxcl.core.deployed_params(method, params, memory)``,
not ``apply(params, trainable, memory)``: the finished adapter already lives in memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.core import Method, Progress, TaskInfo, total_penalty
from jaxcl.models import llama


def answer_logits(config: llama.LlamaConfig, params, batch) -> jax.Array:
    """float32 logits [B, A, V] at the answer positions only (after the batch's shared ``prefix``, if any)."""
    h_BTD = llama.hidden_states(config, params, batch["tokens"], batch["attention_mask"], prefix_P=batch.get("prefix"))
    h_BAD = jnp.take_along_axis(h_BTD, batch["target_pos"][..., None], axis=1)
    return llama.logits_from_hidden(config, params, h_BAD)


def answer_loss(config: llama.LlamaConfig, params, batch) -> jax.Array:
    """Mean token cross-entropy over the answer tokens (target_mask-weighted)."""
    logits_BAV = answer_logits(config, params, batch)
    ce_BA = optax.softmax_cross_entropy_with_integer_labels(logits_BAV, batch["target_ids"])
    mask_BA = batch["target_mask"]
    return jnp.sum(ce_BA * mask_BA) / jnp.maximum(jnp.sum(mask_BA), 1.0)


def method_loss(method: Method, config, trainable, params, memory, batch, progress, compute_dtype=None):
    """(total loss, {"ce": ..., penalty terms...}); ``compute_dtype`` (e.g. bfloat16) casts the
    effective weights for the forward only (mixed precision; gradients reach fp32 trainables)."""
    eff = method.apply(params, trainable, memory, progress)
    if compute_dtype is not None:
        eff = jax.tree.map(lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, eff)
    ce = answer_loss(config, eff, batch)
    terms = method.penalty(params, trainable, memory, progress)
    return ce + total_penalty(terms), {"ce": ce, **terms}


def default_optimizer(learning_rate: float = 1e-3, weight_decay: float = 0.0, clip_norm: float | None = 1.0):
    """The papers' optimizer: global-norm clipping (HF default 1.0) then AdamW (β 0.9/0.999, ε 1e-8)."""
    adamw = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    return adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


def make_train_step(
    method: Method, config: llama.LlamaConfig, tx: optax.GradientTransformation, compute_dtype=None
) -> Callable:
    """A jit-compiled ``step(trainable, opt_state, params, memory, batch, step, total)``.

    Returns ``(trainable, opt_state, metrics)``; metrics hold "loss", "ce", the penalty terms
    and "grad_norm". ``trainable`` and ``opt_state`` are donated.
    """

    def step(trainable, opt_state, params, memory, batch, step_idx, total):
        progress = Progress(step_idx, total)
        (loss, aux), grads = jax.value_and_grad(
            lambda t: method_loss(method, config, t, params, memory, batch, progress, compute_dtype), has_aux=True
        )(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        trainable = method.post_update(params, trainable, memory, progress)
        return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

    return jax.jit(step, donate_argnums=(0, 1))


class TaskStart(NamedTuple):
    """Everything a training loop needs for one task (``start_task``)."""

    params: Any  # base params after begin_task (OSFT's factorised form rewrites its targets)
    memory: Any  # memory after begin_task
    trainable: Any  # the task's fresh trainable parts
    tx: optax.GradientTransformation  # the method's transform around the optimizer
    opt_state: Any  # tx.init(trainable)
    step: Callable  # make_train_step(method, config, tx, compute_dtype)


def start_task(
    method: Method,
    config: llama.LlamaConfig,
    params,
    memory,
    task: TaskInfo,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    compute_dtype=None,
    accumulate_steps: int = 1,
    place: Callable[[Any], Any] | None = None,
) -> TaskStart:
    """``begin_task → init → tx(optimizer) → tx.init → make_train_step``: one task's setup.

    ``accumulate_steps > 1`` wraps the method's transform in ``optax.MultiSteps`` (gradient
    accumulation); ``place`` puts the fresh trainable on devices (e.g. the engine's sharding).
    """
    params, memory = method.begin_task(params, memory, task)
    trainable = method.init(key, params, memory)
    if place is not None:
        trainable = place(trainable)
    tx = method.tx(optimizer, memory)
    if accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    return TaskStart(params, memory, trainable, tx, tx.init(trainable), make_train_step(method, config, tx, compute_dtype))


@dataclasses.dataclass
class FitResult:
    params: Any  # base params after end_task (changed by methods that merge, e.g. SeqFT)
    memory: Any  # memory after end_task
    trainable: Any  # the task's trained parts
    history: list[dict[str, float]]  # per-step metrics


def fit_task(
    method: Method,
    config: llama.LlamaConfig,
    params,
    memory,
    batches: Iterable[dict] | Callable[[], Iterable[dict]],
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    task: TaskInfo | None = None,
    num_steps: int | None = None,
) -> FitResult:
    """begin_task → init → jit steps over ``batches`` → end_task. Raises FloatingPointError on a
    non-finite loss, naming the step (the inputs are left untouched)."""
    batch_list = list(batches() if callable(batches) else batches)
    total = num_steps or len(batch_list)
    if task is None:
        task = TaskInfo(index=0, config=config, batches=lambda: batch_list, num_steps=total)
    params, memory, trainable, _, opt_state, step_fn = start_task(method, config, params, memory, task, optimizer, key)
    history = []
    for i, batch in enumerate(batch_list[:total]):
        trainable, opt_state, metrics = step_fn(trainable, opt_state, params, memory, batch, i, total)
        metrics = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"task {task.index} ({task.name}): non-finite loss {metrics['loss']} at step {i}")
        history.append(metrics)
    params, memory = method.end_task(params, trainable, memory, task)
    return FitResult(params=params, memory=memory, trainable=trainable, history=history)
