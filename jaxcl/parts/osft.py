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
task (variant W of spec §2.2). The part trains nothing itself: compose it after
``full_finetune(targets)`` (preset ``jaxcl.methods.osft``), whose ``trainable["full"][path]`` it
projects. ``osft_factorised`` is the released codes' variant F (trainable ``U_low, s_low,
V_low`` beyond the preserved pairs, frozen ``W_high``; preset ``osft`` with ``factorised=True``):
the same ranks and the same preserved-subspace property.

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
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.core import ALL_LINEAR_TARGETS, Part, TaskInfo, get_path, select_targets, set_path
from jaxcl.models.llama import LowRank, layer_io_similarity
from jaxcl.optim.subspace import (FORMS, SubspaceBasis, basis_as_dict, basis_from_dict, project_optimizer, stacked_svd,
                                  svd_bases)

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


class RankRule(NamedTuple):
    """How many directions each layer preserves at a task start (module docstring; spec §1.2, §1.4).

    Shared by ``osft_projection`` (dense weights) and ``osft_factorised``; ``ratios`` reads the
    last task's importance from ``memory[name]["importance"]``.
    """

    rank_rule: str = "adaptive"
    mrr: float = 0.1
    trr: float = 0.8
    ratio: float | None = None
    preserve_pretrained: bool = False
    importance_batches: int = 5

    def check(self) -> "RankRule":
        """Raise ValueError for an unknown rule or bad ratios; return self."""
        if self.rank_rule not in RANK_RULES:
            raise ValueError(f"unknown rank_rule {self.rank_rule!r}; expected one of {RANK_RULES}")
        if not 0.0 <= self.mrr <= self.trr:
            raise ValueError(f"need 0 ≤ mrr ≤ trr, got mrr={self.mrr}, trr={self.trr}")
        if self.rank_rule == "fixed" and (self.ratio is None or not 0.0 <= self.ratio <= 1.0):
            raise ValueError(f"rank_rule='fixed' needs a preserved ratio in [0, 1], got {self.ratio!r}")
        if self.rank_rule == "progressive" and self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"rank_rule='progressive' needs a per-task step in (0, 1], got {self.ratio!r}")
        if self.importance_batches < 1:
            raise ValueError(f"importance_batches must be ≥ 1, got {self.importance_batches}")
        return self

    def ratios(self, task: TaskInfo, params, importance: jax.Array, num_layers: int) -> np.ndarray:
        """``ρ_l`` (float64 ``[L]``) for ``task``; ``importance`` is the previous task's ``I_l``."""
        if self.rank_rule == "adaptive" and (task.config is None or task.batches is None):
            raise ValueError("osft rank_rule='adaptive' needs task.config and task.batches (layer importance)")
        t = task.index
        if self.rank_rule == "progressive":
            step = self.ratio
            if step is None:
                if not task.num_tasks:
                    raise ValueError("rank_rule='progressive' without ratio needs task.num_tasks")
                step = 1.0 / task.num_tasks
            return np.full(num_layers, min((t + int(self.preserve_pretrained)) * step, 1.0))
        if t == 0 and not self.preserve_pretrained:
            return np.zeros(num_layers)
        if self.rank_rule == "fixed":
            return np.full(num_layers, self.ratio)
        if t == 0:  # adaptive, pretrained weights: importance on this task's data, before training
            importance = layer_importance(task.config, params, task.batches(), self.importance_batches)
        return adaptive_ratios(np.asarray(importance), self.mrr, self.trr)

    def end_importance(self, trained_params, task: TaskInfo) -> jax.Array | None:
        """The finished task's ``I_l`` (adaptive rule only; None otherwise)."""
        if self.rank_rule != "adaptive":
            return None
        return jnp.asarray(layer_importance(task.config, trained_params, task.batches(), self.importance_batches))


def _task_ranks(rule: RankRule, params, memory_entry, task: TaskInfo, targets) -> dict[str, np.ndarray]:
    """``{path: k_l int32 [L] (or [])}`` for the targets with any preserved direction this task."""
    ratios = rule.ratios(task, params, memory_entry["importance"], _num_layers(params, targets))
    out = {}
    for path in select_targets(params, targets):
        w = get_path(params, path)
        ranks = preserved_ranks(ratios, *w.shape[-2:]).reshape(w.shape[:-2])  # [L] (or [] unstacked)
        if np.max(ranks) > 0:
            out[path] = ranks
    return out


def _with_importance(memory, name: str, importance: jax.Array | None):
    return memory if importance is None else {**memory, name: {**memory[name], "importance": importance}}


def _preserved_fraction(params, memory_entry, targets) -> dict[str, float]:
    kept = total = 0.0
    for path in select_targets(params, targets):
        *lead, d_in, d_out = get_path(params, path).shape
        total += min(d_in, d_out) * math.prod(lead)
        if path in memory_entry["bases"]:
            kept += float(jnp.sum(memory_entry["bases"][path]["ranks"]))
    return {"preserved_fraction": kept / total}


def _init_memory(name: str, targets):
    def init_memory(params):
        return {name: {"importance": jnp.ones((_num_layers(params, targets),), jnp.float32), "bases": {}}}

    return init_memory


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
    rule = RankRule(rank_rule, mrr, trr, ratio, preserve_pretrained, importance_batches).check()
    if form not in FORMS:
        raise ValueError(f"unknown projection form {form!r}; expected one of {FORMS}")

    def begin_task(params, memory, task):
        bases = {}
        for path, ranks in _task_ranks(rule, params, memory[name], task, targets).items():
            basis = svd_bases(get_path(params, path), ranks)
            bases[path] = {"ranks": jnp.asarray(ranks, jnp.int32), **basis_as_dict(basis)}
        return params, {**memory, name: {**memory[name], "bases": bases}}

    def tx(optimizer, memory):
        bases = {f"{trainable_key}/{path}": basis_from_dict(b) for path, b in memory.get(name, {}).get("bases", {}).items()}
        if not bases:
            return optimizer
        return project_optimizer(optimizer, bases, form=form, project_gradients=project_gradients)

    def end_task(params, trainable, memory, task, deltas):
        trained = params
        for path, w in trainable.get(trainable_key, {}).items():
            trained = set_path(trained, path, w)
        return params, _with_importance(memory, name, rule.end_importance(trained, task))

    def report(params, trainable, memory, deltas):
        return _preserved_fraction(params, memory[name], targets)

    return Part(name=name, init_memory=_init_memory(name, targets), tx=tx, begin_task=begin_task,
                end_task=end_task, report=report)


def low_factors(w: jax.Array, ranks: np.ndarray, usv: tuple | None = None) -> dict[str, jax.Array]:
    """The trainable low part of ``w: [..., d_in, d_out]`` beyond its top ``ranks`` singular pairs.

    With ``W_l = U_l diag(S_l) V_lᵀ`` (thin fp32 SVD), ``k_min = min_l k_l`` and
    ``c = r − k_min``, column ``j < c`` of layer ``l`` holds singular pair ``k_min + j`` when
    ``k_min + j ≥ k_l`` and zeros otherwise (the layers' own widths ``r − k_l`` padded to one
    stacked width; zero columns get zero gradients and stay zero under AdamW)::

        u: [..., d_in, c]    s: [..., c]    v: [..., d_out, c]    high = W − u diag(s) vᵀ   (w's dtype)

    so ``high + u diag(s) vᵀ = W`` up to rounding and ``high`` spans the top ``k_l`` pairs.
    """
    u, s, v = stacked_svd(w) if usv is None else usv
    k_min = int(np.min(ranks))
    ranks = jnp.asarray(ranks, jnp.int32)
    on = (k_min + jnp.arange(s.shape[-1] - k_min) >= ranks[..., None]).astype(jnp.float32)  # [..., c]
    low = {"u": u[..., k_min:] * on[..., None, :], "s": s[..., k_min:] * on, "v": v[..., k_min:] * on[..., None, :]}
    high = w.astype(jnp.float32) - LowRank(jnp.zeros((), jnp.float32), low["u"], low["s"], low["v"]).dense()
    return {**low, "high": high.astype(w.dtype)}


def osft_factorised(
    targets: str | Iterable[str] = ALL_LINEAR_TARGETS,
    project_gradients: bool = True,
    name: str = "osft",
    **rank_options,
) -> Part:
    """OSFT in the released codes' factorised form (spec §2.2 variant F; mini_trainer, PEFT OSF).

    A whole method on its own (it trains the targets itself: do not compose it with
    ``full_finetune``). At ``begin_task`` each target with preserved directions is split by
    ``low_factors`` into a frozen ``W_high`` (written into the base ``params`` leaf) and
    trainable factors ``trainable["factors"][path] = {"u": U_low, "s": s_low, "v": V_low}``
    (their start values are kept in ``memory[name]["factors"]`` until the task ends, so ``init``
    can return them); ``apply`` puts ``LowRank(W_high, u, s, v)`` at the leaf, which
    ``jaxcl.models.llama.linear`` runs through the thin path ``x W_high + ((x U_low) ⊙ s) V_lowᵀ``
    (never forming W). ``tx`` projects the factor gradients and final updates one-sided,
    ``(I − U_k U_kᵀ) dU_low`` and ``(I − V_k V_kᵀ) dV_low`` (``s`` is free), so ``U_kᵀ ΔW = 0`` and
    ``ΔW V_k = 0`` hold to float precision, as in the dense form. Projecting the final update is
    mini_trainer's post-step parameter projection (``U_low ← U_low − U_k U_kᵀ U_low``; the start
    factors are already orthogonal to ``U_k``); PEFT projects the gradients only (hooks), so with
    Adam its factors can drift into the preserved span (spec §1.3, §2.2). ``end_task`` merges
    ``W = W_high + U_low diag(s) V_lowᵀ`` back into ``params`` and drops the start factors.
    Targets without preserved directions (task 0 by default) are fine-tuned densely in
    ``trainable["full"]``.

    Differences from ``osft_projection`` + ``full_finetune`` (variant W): AdamW's moments and
    weight decay act on the factors, not on W (as in the released codes); the trained and
    optimizer-state floats scale with ``c = r − min_l k_l``: with the adaptive rule one layer
    with a low rank widens every layer's factors, so the form pays off with uniform ranks
    ("fixed"/"progressive", the released codes' setting) and large shapes
    (``experiments/bench_osft.py``). Memory while a task runs: the start factors (``c·(d_in +
    d_out + 1)`` per matrix) and the bases, on top of the trainable copy and its moments.

    Args: as ``osft_projection`` (no ``form``: the factor projections give the two-sided property);
    ``rank_options`` are ``RankRule``'s fields (``rank_rule``, ``mrr``, ``trr``, ``ratio``,
    ``preserve_pretrained``, ``importance_batches``).
    """
    rule = RankRule(**rank_options).check()

    def begin_task(params, memory, task):
        bases, factors = {}, {}
        for path, ranks in _task_ranks(rule, params, memory[name], task, targets).items():
            w = get_path(params, path)
            usv = stacked_svd(w)
            bases[path] = {"ranks": jnp.asarray(ranks, jnp.int32), **basis_as_dict(svd_bases(w, ranks, usv=usv))}
            low = low_factors(w, ranks, usv)
            factors[path] = {k: low[k] for k in ("u", "s", "v")}
            params = set_path(params, path, low["high"])
        return params, {**memory, name: {**memory[name], "bases": bases, "factors": factors}}

    def init(key, params, memory):
        factors = memory[name].get("factors", {})
        return {
            "full": {p: jnp.array(get_path(params, p), copy=True) for p in select_targets(params, targets) if p not in factors},
            "factors": {p: {k: jnp.array(x, copy=True) for k, x in f.items()} for p, f in factors.items()},
        }

    def apply(params, trainable, memory, progress):
        for path, w in trainable["full"].items():
            params = set_path(params, path, w)
        for path, f in trainable["factors"].items():
            params = set_path(params, path, LowRank(get_path(params, path), f["u"], f["s"], f["v"]))
        return params

    def tx(optimizer, memory):
        bases = {}
        for path, b in memory.get(name, {}).get("bases", {}).items():
            basis = basis_from_dict(b)
            bases[f"factors/{path}/u"] = SubspaceBasis(u=basis.u)  # rows of U_low live on d_in
            bases[f"factors/{path}/v"] = SubspaceBasis(u=basis.v)  # rows of V_low on d_out
        if not bases:
            return optimizer
        return project_optimizer(optimizer, bases, project_gradients=project_gradients)

    def end_task(params, trainable, memory, task, deltas):
        for path, w in trainable["full"].items():
            params = set_path(params, path, jnp.array(w, copy=True))
        for path, f in trainable["factors"].items():
            high = get_path(params, path)
            params = set_path(params, path, LowRank(high.astype(jnp.float32), f["u"], f["s"], f["v"]).dense().astype(high.dtype))
        entry = {k: v for k, v in memory[name].items() if k != "factors"}
        memory = {**memory, name: entry}
        return params, _with_importance(memory, name, rule.end_importance(params, task))

    def report(params, trainable, memory, deltas):
        return _preserved_fraction(params, memory[name], targets)

    return Part(name=name, init_memory=_init_memory(name, targets), init=init, apply=apply, tx=tx,
                begin_task=begin_task, end_task=end_task, report=report)


def _num_layers(params, targets) -> int:
    """The stacked-layer count L of the target leaves (1 for unstacked matrices)."""
    shapes = {get_path(params, p).shape[:-2] for p in select_targets(params, targets)}
    if len(shapes) != 1 or len(next(iter(shapes))) > 1:
        raise ValueError(f"osft targets must share one leading layer axis, got leading shapes {sorted(shapes)}")
    lead = next(iter(shapes))
    return lead[0] if lead else 1
