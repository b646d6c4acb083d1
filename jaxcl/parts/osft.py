"""Sculpting Subspaces / OSFT: full fine-tuning kept orthogonal to each weight's top singular subspaces.

At the start of task t every target weight ``W: [L, d_in, d_out]`` (stored ``x @ W``; the spec's
``W_spec = Wᵀ: [d_O, d_I]``) is decomposed by a thin float32 SVD per layer,
``W_l = U_l diag(S_l) V_lᵀ`` (``U_l: [d_in, r]``, ``V_l: [d_out, r]``, ``r = min(d_in, d_out)``),
and its top ``k_l`` pairs are preserved: the part's ``tx`` wraps the optimizer with
``jaxcl.optim.project_optimizer``, which projects the gradient and the final update onto

    (I − U_k U_kᵀ) ΔW (I − V_k V_kᵀ)          (form="two_sided", the released codes' equivalent)
    ΔW − U_k U_kᵀ ΔW V_k V_kᵀ                  (form="high_high", the paper's formula)

(``sculpting_osf.md`` §1.3; the spec's ``U_high`` is ``V_k`` here and ``V_high`` is ``U_k``), after
AdamW and its weight decay, so ``U_kᵀ W`` and ``W V_k`` stay fixed to float precision over the
task (variant W of spec §2.2; the factorised variant F of the released codes is not shipped, see
``experiments/bench_osft.py``). The part trains nothing itself: compose it after
``full_finetune(targets)`` (preset ``jaxcl.methods.osft``), whose ``trainable["full"][path]`` it
projects.

Preserved ranks (spec §1.2, §1.4), with ratio ``ρ_l`` per layer and, per module,
``k_l = clip(floor(ρ_l · r), 0, r − 1)`` (the cap ``r − 1`` is mini_trainer's: at least one
direction stays trainable):

- ``rank_rule="adaptive"`` (paper, default): ``ρ_l = mrr + (I_l / mean_l I) · (trr − mrr)`` with
  ``mrr = 0.1``, ``trr = 0.8`` and ``I_l`` the mean cosine similarity between decoder layer l's
  input and output hidden states on the PREVIOUS task's data (``layer_io_similarity``, real
  tokens only, ``importance_batches`` batches, measured at that task's end with its final
  weights). The mean-1 normalisation is the research code's (``I_n = I / mean(I)``, commented
  code in ``notebooks/finetune_svd.py``); the clip replaces its ``[1, d]``.
  Differences [OBS]: the paper (from AdaSVD) scores each linear by ``cos(X, W X)`` of its own
  input X; jaxcl scores the decoder block (one ``I_l`` for the 7 modules of layer l), so modules
  of one layer differ only through ``r``. The ranks do not grow with t by rule: they follow the
  previous task's importance, and the SVD of the current (already fine-tuned) weights decides
  which directions are preserved.
- ``rank_rule="fixed"``: ``ρ = ratio`` for every layer (mini_trainer's ``1 − unfreeze_rank_ratio``).
- ``rank_rule="progressive"``: ``ρ_t = min(t · step, 1)``, ``step = ratio`` or ``1 / num_tasks``
  (PEFT's "freeze (t−1)/n at task t", 1-indexed; the T5 research script grows by 0.07 per task,
  though from ``max(d_O, d_I)``).

First task: the research code trains task 1 (MNLI) by plain full fine-tuning and applies OSFT
from task 2 on (``notebooks/run_finetuning.sh``), and the adaptive rule needs a previous task;
so by default task 0 preserves nothing (no SVD is computed). With ``preserve_pretrained=True``
task 0 preserves the pretrained weights' top subspaces (mini_trainer/training_hub run OSFT from
the first run): adaptive uses the importance of the pretrained model on task 0's own data
(measured at ``begin_task``), fixed uses ``ratio``, progressive shifts to ``ρ_t = (t + 1)·step``
(the PEFT doc example's ``(task_id + 1)/n``).

Memory (arrays only; orbax saves it as is)::

    memory["osft"]["importance"]                 float32 [L]   raw I_l of the last finished task
    memory["osft"]["bases"][path]["ranks"]       int32   [L]   preserved k_l per layer
    memory["osft"]["bases"][path]["u"]           {"preserve": U[..., :k_max]  float32 [L, d_in, k_max],
                                                   "mask": j < k_l            bool    [L, k_max]}
                                             or  {"free": U[..., k_min:]      float32 [L, d_in, r − k_min],
                                                   "mask": k_min + j ≥ k_l    bool    [L, r − k_min]}
    memory["osft"]["bases"][path]["v"]           the same for the output side (d_out)

(``jaxcl.optim.basis_as_dict`` of ``svd_bases``: a side spanned entirely by the thin SVD, i.e.
``d = r``, is stored as its complement ``Free`` when that is narrower, ρ > ½: the projection
then costs ~4× less at ρ = 0.8.) A path whose ranks are all 0 has no entry (its updates are not
projected). The optimizer state holds one more copy of the bases (``project_optimizer``
copies them: the train step donates its state); per target about 0.6–1.6× the weight's size at
ρ = 0.8.

Non-target parameters (embeddings, lm_head, norms) are not trained (PEFT's choice; mini_trainer
trains them).
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.core import ALL_LINEAR_TARGETS, Part, TaskInfo, get_path, select_targets, set_path
from jaxcl.models.llama import layer_io_similarity
from jaxcl.optim.subspace import FORMS, basis_as_dict, basis_from_dict, project_optimizer, svd_bases

RANK_RULES = ("adaptive", "fixed", "progressive")


def adaptive_ratios(importance: np.ndarray, mrr: float = 0.1, trr: float = 0.8) -> np.ndarray:
    """``ρ_l = mrr + (I_l / mean(I)) · (trr − mrr)`` (float64 ``[L]``; spec §1.2, research code)."""
    imp = np.asarray(importance, np.float64)
    mean = imp.mean()
    if not np.isfinite(mean) or mean <= 0:
        raise ValueError(f"layer importances must have a positive finite mean, got {imp}")
    return mrr + imp / mean * (trr - mrr)


def preserved_ranks(ratios: np.ndarray, d_in: int, d_out: int) -> np.ndarray:
    """``k_l = clip(floor(ρ_l · min(d_in, d_out)), 0, min(d_in, d_out) − 1)`` as int32 ``[L]``."""
    r = min(d_in, d_out)
    return np.clip(np.floor(np.asarray(ratios, np.float64) * r), 0, r - 1).astype(np.int32)


_similarity = jax.jit(layer_io_similarity, static_argnums=0)


def layer_importance(config, params, batches: Iterable[dict], num_batches: int) -> np.ndarray:
    """Token-weighted mean over ``num_batches`` batches of ``layer_io_similarity``: float32 ``[L]``."""
    total, weight = 0.0, 0.0
    for i, batch in enumerate(batches):
        if i >= num_batches:
            break
        mask = jnp.asarray(batch["attention_mask"])
        n = float(jnp.sum(mask))
        total = total + n * np.asarray(_similarity(config, params, jnp.asarray(batch["tokens"]), mask), np.float64)
        weight += n
    if weight == 0:
        raise ValueError("layer_importance: no batch with real tokens")
    return (total / weight).astype(np.float32)


def osft_projection(
    targets: str | Iterable[str] = ALL_LINEAR_TARGETS,
    rank_rule: str = "adaptive",
    mrr: float = 0.1,
    trr: float = 0.8,
    ratio: float | None = None,
    preserve_pretrained: bool = False,
    form: str = "two_sided",
    project_gradients: bool = True,
    importance_batches: int = 5,
    trainable_key: str = "full",
    name: str = "osft",
) -> Part:
    """The OSFT part: SVD bases and ranks at ``begin_task``, the projected optimizer in ``tx``.

    Args:
      targets: the weights to constrain (regex or list; default q,k,v,o,gate,up,down); the same
        as ``full_finetune``'s.
      rank_rule: "adaptive" (paper), "fixed" or "progressive" (module docstring).
      mrr, trr: minimum / target retention ratio of the adaptive rule (paper: 0.1, 0.8).
      ratio: preserved fraction for "fixed" (required), per-task step for "progressive" (default
        ``1 / num_tasks``).
      preserve_pretrained: also constrain task 0 (module docstring).
      form: "two_sided" (released code, default) or "high_high" (paper's formula).
      project_gradients: project the gradients before the optimizer too (default; the final
        update is always projected).
      importance_batches: batches of a task's data used for the layer importance (research
        code: 5).
      trainable_key: the trainable entry whose leaves are the weights (``full_finetune``'s "full").

    Raises:
      ValueError: at construction for an unknown rule/form or bad ratios; at ``begin_task`` when
        the adaptive rule has no ``task.config``/``task.batches`` or progressive no step.
    """
    if rank_rule not in RANK_RULES:
        raise ValueError(f"unknown rank_rule {rank_rule!r}; expected one of {RANK_RULES}")
    if form not in FORMS:
        raise ValueError(f"unknown projection form {form!r}; expected one of {FORMS}")
    if not 0.0 <= mrr <= trr:
        raise ValueError(f"need 0 ≤ mrr ≤ trr, got mrr={mrr}, trr={trr}")
    if rank_rule == "fixed" and (ratio is None or not 0.0 <= ratio <= 1.0):
        raise ValueError(f"rank_rule='fixed' needs a preserved ratio in [0, 1], got {ratio!r}")
    if rank_rule == "progressive" and ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank_rule='progressive' needs a per-task step in (0, 1], got {ratio!r}")
    if importance_batches < 1:
        raise ValueError(f"importance_batches must be ≥ 1, got {importance_batches}")

    def init_memory(params):
        num_layers = _num_layers(params, targets)
        return {name: {"importance": jnp.ones((num_layers,), jnp.float32), "bases": {}}}

    def ratios_for(task: TaskInfo, params, memory) -> np.ndarray:
        num_layers = _num_layers(params, targets)
        t = task.index
        if rank_rule == "progressive":
            step = ratio
            if step is None:
                if not task.num_tasks:
                    raise ValueError("rank_rule='progressive' without ratio needs task.num_tasks")
                step = 1.0 / task.num_tasks
            return np.full(num_layers, min((t + int(preserve_pretrained)) * step, 1.0))
        if t == 0 and not preserve_pretrained:
            return np.zeros(num_layers)
        if rank_rule == "fixed":
            return np.full(num_layers, ratio)
        if t == 0:  # adaptive, pretrained weights: importance on this task's data, before training
            importance = layer_importance(task.config, params, task.batches(), importance_batches)
        else:
            importance = np.asarray(memory[name]["importance"])
        return adaptive_ratios(importance, mrr, trr)

    def begin_task(params, memory, task):
        if rank_rule == "adaptive" and (task.config is None or task.batches is None):
            raise ValueError("osft rank_rule='adaptive' needs task.config and task.batches (layer importance)")
        ratios = ratios_for(task, params, memory)
        bases = {}
        for path in select_targets(params, targets):
            w = get_path(params, path)
            ranks = preserved_ranks(ratios, *w.shape[-2:]).reshape(w.shape[:-2])  # [L] (or [] unstacked)
            if np.max(ranks) == 0:
                continue
            bases[path] = {"ranks": jnp.asarray(ranks, jnp.int32), **basis_as_dict(svd_bases(w, ranks))}
        return params, {**memory, name: {**memory[name], "bases": bases}}

    def tx(optimizer, memory):
        bases = {}
        for path, b in memory.get(name, {}).get("bases", {}).items():
            bases[f"{trainable_key}/{path}"] = basis_from_dict(b)
        if not bases:
            return optimizer
        return project_optimizer(optimizer, bases, form=form, project_gradients=project_gradients)

    def end_task(params, trainable, memory, task, deltas):
        if rank_rule != "adaptive":
            return params, memory
        trained = params
        for path, w in trainable.get(trainable_key, {}).items():
            trained = set_path(trained, path, w)
        importance = layer_importance(task.config, trained, task.batches(), importance_batches)
        return params, {**memory, name: {**memory[name], "importance": jnp.asarray(importance)}}

    def report(params, trainable, memory, deltas):
        kept = total = 0.0
        for path in select_targets(params, targets):
            *lead, d_in, d_out = get_path(params, path).shape
            total += min(d_in, d_out) * math.prod(lead)
            if path in memory[name]["bases"]:
                kept += float(jnp.sum(memory[name]["bases"][path]["ranks"]))
        return {"preserved_fraction": kept / total}

    return Part(name=name, init_memory=init_memory, tx=tx, begin_task=begin_task, end_task=end_task, report=report)


def _num_layers(params, targets) -> int:
    """The stacked-layer count L of the target leaves (1 for unstacked matrices)."""
    shapes = {get_path(params, p).shape[:-2] for p in select_targets(params, targets)}
    if len(shapes) != 1 or len(next(iter(shapes))) > 1:
        raise ValueError(f"osft targets must share one leading layer axis, got leading shapes {sorted(shapes)}")
    lead = next(iter(shapes))
    return lead[0] if lead else 1
