"""Adapter parts: LoRA, a fresh adapter per task (IncLoRA), and full fine-tuning.

Shapes (weights are ``[..., d_in, d_out]``; ``...`` is the stacked-layer axis L):
    a: [..., d_in, r]   (kaiming_uniform(a=√5) of PyTorch = U(±1/√d_in))
    b: [..., r, d_out]  (zeros)
    ΔW = (α/r) · a @ b  : [..., d_in, d_out]       (the specs' s·B A in PyTorch layout)

trainable["lora"][path] = {"a", "b"};  memory["past"][path] = {"delta", "a", "b"} where
"delta" is the dense sum of the finished tasks' effective updates (after any gate) and "a"/"b"
concatenate their factors along the rank axis (rank grows by r per task), as O-LoRA's code does.
The forward of IncLoRA is therefore W + Σ_τ ΔW_τ + ΔW_t, with no task id.

LoRA dropout (0.1 in the O-LoRA scripts) is not applied: jaxcl materialises ΔW densely (the
gate and Lie methods need it anyway) and the JumpLoRA code has no dropout either.
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp

from jaxcl.core import LORA_TARGETS, ALL_LINEAR_TARGETS, Delta, Part, get_path, select_targets, set_path


def lora(
    rank: int = 8,
    alpha: float = 32.0,
    targets: str | Iterable[str] = LORA_TARGETS,
    carry_over: bool = False,
    name: str = "lora",
) -> Part:
    """Low-rank adapters ΔW = (α/r)·a@b on the target leaves, written as deltas source "current".

    Args:
      rank, alpha: r and α (scale α/r; the papers: 8 and 32).
      targets: regex over params paths (default q_proj and v_proj) or an explicit list.
      carry_over: keep training the same adapter across tasks (SeqLoRA): ``end_task`` stores it
        in memory["lora_carry"] and the next ``init`` resumes from it. With ``False`` each task
        starts a fresh adapter (B = 0), as IncLoRA/O-LoRA do.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora rank must be a positive int, got {rank!r}")
    scale = alpha / rank

    def init(key, params, memory):
        if carry_over and "lora_carry" in memory:
            return {"lora": jax.tree.map(jnp.array, memory["lora_carry"])}
        paths = select_targets(params, targets)
        keys = jax.random.split(key, len(paths))
        out = {}
        for k, path in zip(keys, paths):
            w = get_path(params, path)
            if w.ndim < 2:
                raise ValueError(f"lora target '{path}' is not a matrix (shape {w.shape})")
            *lead, d_in, d_out = w.shape
            bound = 1.0 / math.sqrt(d_in)
            out[path] = {
                "a": jax.random.uniform(k, (*lead, d_in, rank), jnp.float32, -bound, bound).astype(w.dtype),
                "b": jnp.zeros((*lead, rank, d_out), w.dtype),
            }
        return {"lora": out}

    def delta(params, trainable, memory, deltas, progress):
        out = dict(deltas)
        for path, ab in trainable["lora"].items():
            out[path] = {**out.get(path, {}), "current": Delta(ab["a"] @ ab["b"], scale)}
        return out

    def end_task(params, trainable, memory, task, deltas):
        if not carry_over:
            return params, memory
        return params, {**memory, "lora_carry": trainable["lora"]}

    return Part(name=name, init=init, delta=delta, end_task=end_task)


def new_adapter_per_task(name: str = "incremental") -> Part:
    """IncLoRA: at each task end, freeze the task's adapter into memory["past"]; sum them all.

    ``end_task`` adds the task's final effective update (deltas source "current", i.e. after a
    gate if one is composed before this part's end) to memory["past"][path]["delta"] and
    appends its factors to memory["past"][path]["a"/"b"]; ``delta`` adds the frozen sum as
    source "past". Frozen adapters live in memory, so they are never in the trainable tree.
    """

    def init_memory(params):
        return {"past": {}}

    def delta(params, trainable, memory, deltas, progress):
        out = dict(deltas)
        for path, past in memory["past"].items():
            out[path] = {**out.get(path, {}), "past": Delta(past["delta"], 1.0)}
        return out

    def end_task(params, trainable, memory, task, deltas):
        past = dict(memory["past"])
        for path, ab in trainable["lora"].items():
            current = jax.lax.stop_gradient(deltas[path]["current"].value)
            if path in past:
                old = past[path]
                past[path] = {
                    "delta": old["delta"] + current,
                    "a": jnp.concatenate([old["a"], ab["a"]], axis=-1),
                    "b": jnp.concatenate([old["b"], ab["b"]], axis=-2),
                }
            else:
                past[path] = {"delta": current, "a": ab["a"], "b": ab["b"]}
        return params, {**memory, "past": past}

    return Part(name=name, init_memory=init_memory, delta=delta, end_task=end_task)


def full_finetune(targets: str | Iterable[str] = ALL_LINEAR_TARGETS, name: str = "full") -> Part:
    """Full fine-tuning of the target leaves (SeqFT; OSFT's trainable part).

    trainable["full"][path] is a copy of the leaf; ``apply`` substitutes it; ``end_task`` writes
    it into the base params, so the next task starts from the fine-tuned weights.
    """

    def init(key, params, memory):
        return {"full": {p: jnp.array(get_path(params, p), copy=True) for p in select_targets(params, targets)}}

    def apply(params, trainable, memory, progress):
        for path, w in trainable["full"].items():
            params = set_path(params, path, w)
        return params

    def end_task(params, trainable, memory, task, deltas):
        for path, w in trainable["full"].items():
            params = set_path(params, path, jnp.array(w, copy=True))
        return params, memory

    return Part(name=name, init=init, apply=apply, end_task=end_task)
