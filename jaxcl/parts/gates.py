"""JumpLoRA's JumpReLU gate on the entries of the LoRA update (``jumplora_family.md`` §1).

JumpLoRA (Dragomir et al., arXiv 2604.16171; code alexandra-dragomir/JumpLoRA @ f05079a, the only
source of the mechanics: the paper's method section was not available, spec §6 item 1) makes each
task's LoRA update sparse by hard-thresholding the entries of the dense raw product, by magnitude::

    Δ       = a @ b                                       raw, unscaled: [..., d_in, d_out]
    J_θ(Δ)  = Δ ⊙ H(|Δ| − θ),  θ = exp(log_θ)             (kernels.gate: custom VJP of spec §1.2)
    Δ_eff   = f · J_θ(Δ) + (1 − f) · Δ                    f: dense→sparse interpolation (§1.3)
    ΔW      = (α/r) · Δ_eff

``jumprelu_gate`` is the part that rewrites ``deltas[path]["current"] = Delta(Δ, α/r)`` (written by
``lora()``) into ``Delta(Δ_eff, α/r)``: the gate is on the RAW a@b, before the α/r scale, as the
code (§1.1). Composed with ``new_adapter_per_task()`` the task end stores the gated update (f = 1,
since ``end_task`` sees the deltas at ``progress=None``) in ``memory["past"][path]["delta"]``: the
repo's merge of the sparse update into W0 (§1.6).

The threshold, ``trainable["gate"]["log_threshold"]``, is fresh every task (log θ = −4.7, overwritten
at step k0 before it is ever used, §1.4): a scalar shared by every gated matrix (``"global"``, the
repo default) or ``[L]``, one per layer of the stacked L axis shared by all adapted matrices of
that layer (``"per_block"``, the repo's per transformer block).

**θ-gradient and penalties.** In the repo only the task loss trains θ (through the STE); ELLA's
penalty uses a hard mask with θ under stop-gradient (§1.5). A penalty part here reads
``deltas[path]["current"]``, so by default (``penalty_threshold_grad=False``) the gate splits the
gate's gradient between two deltas sources: "current" holds ``f·J_θ(Δ) + (1 − f)·Δ`` computed with
θ under stop-gradient (its gradient to Δ is the gate's, masked), and a source "gate" holds an
array of exact zeros whose θ-cotangent is the gate's STE term (``J(sg Δ, θ) − sg(J(sg Δ, θ))``).
The merge sums the sources, so the task loss gets exactly the custom VJP of ``kernels.gate`` for Δ
and θ, while penalties reading "current" (``ella_penalty``, N-LoRA's paper form) cannot move θ —
as in the repo. ``penalty_threshold_grad=True`` writes ``kernels.gate(Δ, log_θ)`` into "current"
directly (one source; penalties then also train θ through the STE).
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp

import kernels
from jaxcl.core import Delta, Part, Progress

_MODES = ("global", "per_block")
INITIAL_LOG_THRESHOLD = -4.7  # the repo's initial value (θ ≈ 0.0091), overwritten at step k0


def interpolation_window(
    total: jax.Array | int, interp: tuple[float, float] = (0.2, 0.8)
) -> tuple[jax.Array, jax.Array]:
    """``(k0, k1) = (int(p0·S), int(p1·S))`` for ``S = total`` steps, as the repo's callback.

    Integer arithmetic on the fractions ``p = num/den`` (``Fraction.limit_denominator``) so it is
    exact inside jit (``total`` traced) and equals Python's ``int(p·S)`` for the usual p (0.2, 0.8).
    """
    out = []
    for p in interp:
        frac = Fraction(p).limit_denominator(10_000)
        out.append(jnp.asarray(total, jnp.int32) * frac.numerator // frac.denominator)
    return out[0], out[1]


def interpolation_factor(progress: Progress | None, interp: tuple[float, float] = (0.2, 0.8)) -> jax.Array:
    """The dense→sparse factor f used by the forward of 0-based step ``progress.step`` (§1.3).

    The repo sets ``f ← clip((k − k0)/(k1 − k0), 0, 1)`` after optimizer step k (1-based) and uses it
    at step k + 1; our 0-based step ``i`` is the repo's ``k = i + 1``, whose factor was set after
    step ``k − 1 = i``, so ``f(i) = clip((i − k0)/(k1 − k0), 0, 1)``: 0 up to step k0, 1 from step k1
    (``k1 == k0`` gives a jump at k0). ``progress=None`` (task finished, inference) gives f = 1.
    """
    if progress is None:
        return jnp.ones((), jnp.float32)
    k0, k1 = interpolation_window(progress.total, interp)
    step = jnp.asarray(progress.step, jnp.int32)
    return jnp.clip((step - k0) / jnp.maximum(k1 - k0, 1), 0.0, 1.0).astype(jnp.float32)


def _lora_param_count(ab: dict) -> int:
    """r·(d_in + d_out) per matrix, times the matrices of a stacked ``[..., d_in, r]`` leaf."""
    *lead, d_in, r = ab["a"].shape
    return math.prod(lead) * r * (d_in + ab["b"].shape[-1])


def matched_log_threshold(lora: dict, mode: str = "global") -> jax.Array:
    """log θ keeping as many entries of the raw ``a @ b`` as the LoRA factors have parameters (§1.4).

    ``lora`` is ``trainable["lora"]``. Global (repo, ``k + 1``): θ = the ``(N − N_lora + 1)``-th
    smallest ``|Δ|`` over every entry of every gated matrix (N entries, N_lora = Σ_m r·(d_in + d_out)),
    so ``N_lora − 1`` entries are strictly above θ (barring ties). Per block: for each layer l, the
    ``max(N_l − N_lora_l, 1)``-th smallest over that layer's matrices, keeping ``N_lora_l`` entries
    (the repo's off-by-one between the modes is kept; spec §6 item 4 calls it irrelevant).
    Returns ``log(max(θ, 1e-12))``: a scalar, or ``[L]`` per block. jit-able (``jnp.sort``).
    """
    raws = [(ab["a"].astype(jnp.float32) @ ab["b"].astype(jnp.float32), ab) for ab in lora.values()]
    if mode == "global":
        flat = jnp.concatenate([jnp.abs(raw).ravel() for raw, _ in raws])
        n, n_lora = flat.size, sum(_lora_param_count(ab) for _, ab in raws)
        k = min(max(n - n_lora + 1, 1), n)
        theta = jnp.sort(flat)[k - 1]
    else:
        per_layer = jnp.concatenate([jnp.abs(raw).reshape(raw.shape[0], -1) for raw, _ in raws], axis=1)
        n = per_layer.shape[1]
        n_lora = sum(_lora_param_count(ab) for _, ab in raws) // per_layer.shape[0]
        k = min(max(n - n_lora, 1), n)
        theta = jnp.sort(per_layer, axis=1)[:, k - 1]
    return jnp.log(jnp.maximum(theta, 1e-12))


def _num_blocks(params) -> int:
    return jax.tree.leaves(params["layers"])[0].shape[0]


def jumprelu_gate(
    threshold: str = "global",
    bandwidth: float = kernels.DEFAULT_BANDWIDTH,
    interp: tuple[float, float] = (0.2, 0.8),
    init_threshold: bool = True,
    penalty_threshold_grad: bool = False,
    name: str = "gate",
) -> Part:
    """JumpLoRA's gate on ``deltas[path]["current"]`` (every path that has one; put it after ``lora()``).

    Slots:
      init: ``trainable["gate"] = {"log_threshold": −4.7}`` (scalar, or ``[L]`` per block).
      delta: ``Δ_eff = f·J_θ(Δ) + (1 − f)·Δ`` on the raw Δ, f from ``progress``
        (``interpolation_factor``; f = 1 at ``progress=None``).
      post_update: at the repo's step k0 (after the optimizer update of our 0-based step k0 − 1),
        set log θ to ``matched_log_threshold`` (a ``jax.lax.cond`` on the step, inside jit). With
        k0 = 0 (a task of < 5 steps) it never runs and θ stays at e^−4.7, as in the repo (its step
        counter starts at 1).
      report: sparsity of the gated update (f = 1): "sparsity" (fraction of zero entries of all
        gated matrices), "kept" (non-zero entries), "lora_params" (Σ r·(d_in + d_out)),
        "kept_per_lora_param", "threshold" (mean θ) and "sparsity/<path>".

    Args:
      threshold: "global" (one θ; repo default) or "per_block" (one θ per layer).
      bandwidth: ε of the rectangle kernel of the θ pseudo-derivative (repo: 1e-3).
      interp: (p0, p1), the window of the dense→sparse interpolation as fractions of the task's
        steps (repo: 0.2, 0.8).
      init_threshold: run the parameter-count-matched initialisation at step k0 (repo: yes).
      penalty_threshold_grad: let penalties that read "current" train θ (see the module docstring;
        False = the repo).

    Matches the repo (spec §1.1–1.4, §6): mean-per-matrix θ-gradient summed over matrices
    (``kernels.gate``); θ initialised after the update of step k0 while f is still 0 and the new f
    taking effect one step later (§6 item 5); a fresh θ and (with ``fit_task``) a fresh Adam state
    per task; θ under the global-norm clip and without weight decay (§6 item 11: the optimizer's,
    wd = 0 by default); no LoRA dropout (§6 item 12).
    """
    if threshold not in _MODES:
        raise ValueError(f"jumprelu_gate threshold must be one of {list(_MODES)}, got {threshold!r}")
    p0, p1 = interp
    if not 0.0 <= p0 <= p1 <= 1.0:
        raise ValueError(f"jumprelu_gate interp must satisfy 0 <= p0 <= p1 <= 1, got {interp!r}")
    if not bandwidth > 0:
        raise ValueError(f"jumprelu_gate bandwidth must be > 0, got {bandwidth!r}")

    def init(key, params, memory):
        shape = () if threshold == "global" else (_num_blocks(params),)
        return {"gate": {"log_threshold": jnp.full(shape, INITIAL_LOG_THRESHOLD, jnp.float32)}}

    def _log_threshold_for(log_th, raw, path):
        if threshold == "global":
            return log_th
        if raw.ndim != 3 or raw.shape[0] != log_th.shape[0]:
            raise ValueError(
                f"per_block gate needs [L={log_th.shape[0]}, d_in, d_out] updates; '{path}' is {raw.shape}")
        return log_th[:, None, None]

    def delta(params, trainable, memory, deltas, progress):
        f = interpolation_factor(progress, interp)
        log_th = trainable["gate"]["log_threshold"]
        out = dict(deltas)
        for path, sources in deltas.items():
            if "current" not in sources:
                continue
            cur = sources["current"]
            lt = _log_threshold_for(log_th, cur.raw, path)
            if penalty_threshold_grad:
                gated = kernels.gate(cur.raw, lt, bandwidth)
                out[path] = {**sources, "current": Delta(f * gated + (1 - f) * cur.raw, cur.scale)}
                continue
            hard = kernels.gate(cur.raw, jax.lax.stop_gradient(lt), bandwidth)
            ste = kernels.gate(jax.lax.stop_gradient(cur.raw), lt, bandwidth)
            out[path] = {
                **sources,
                "current": Delta(f * hard + (1 - f) * cur.raw, cur.scale),
                name: Delta(f * (ste - jax.lax.stop_gradient(ste)), cur.scale),  # exact zeros, θ's STE
            }
        return out

    def post_update(params, trainable, memory, progress):
        if progress is None or not init_threshold:
            return trainable
        k0, _ = interpolation_window(progress.total, interp)
        old = trainable["gate"]["log_threshold"]
        new = jax.lax.cond(
            jnp.asarray(progress.step, jnp.int32) + 1 == k0,
            lambda: matched_log_threshold(trainable["lora"], threshold).astype(old.dtype),
            lambda: old,
        )
        return {**trainable, "gate": {**trainable["gate"], "log_threshold": new}}

    def report(params, trainable, memory, deltas):
        out, kept, entries = {}, 0, 0
        for path in trainable["lora"]:
            raw = deltas[path]["current"].raw
            nz = int(jnp.count_nonzero(raw))
            out[f"sparsity/{path}"] = 1.0 - nz / raw.size
            kept, entries = kept + nz, entries + raw.size
        n_lora = sum(_lora_param_count(ab) for ab in trainable["lora"].values())
        out.update(
            sparsity=1.0 - kept / max(entries, 1), kept=kept, lora_params=n_lora,
            kept_per_lora_param=kept / max(n_lora, 1),
            threshold=float(jnp.mean(jnp.exp(trainable["gate"]["log_threshold"]))),
        )
        return out

    return Part(name=name, init=init, delta=delta, post_update=post_update, report=report)
