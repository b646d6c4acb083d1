"""Symmetric JumpReLU gate of JumpLoRA on the entries of a dense update.

Forward (`jumplora_family.md` §1.1; repo `ella/jump_lora.py` l.66–69)::

    J_θ(Δ) = Δ ⊙ H(|Δ| − θ) = JumpReLU_θ(Δ) − JumpReLU_θ(−Δ),   θ = exp(log_θ) > 0,

with ``JumpReLU_θ(z) = z · H(z − θ)``, ``H`` the strict step (``|Δ| == θ`` is
zeroed, as the repo's ``x > θ``). ``Δ`` is the raw, unscaled ``a @ b``
(``[d_in, d_out]`` here; the spec's ``B A`` is its transpose, which changes
nothing elementwise). θ is a global scalar or one value per block, broadcast
against ``Δ`` (e.g. ``log_θ: [L, 1, 1]`` for ``Δ: [L, d_in, d_out]``).

Backward: EXACTLY the repo's pseudo-derivative (`JumpReLUF.backward`, l.42–58,
spec §1.2), composed through the two one-sided calls. With upstream ``g``,
bandwidth ``ε``, rectangle kernel ``K(u) = 1{−½ < u < ½}`` (open interval) and
``N = d_in · d_out`` the entries of ONE matrix (the last two axes of ``Δ``)::

    ∂L/∂Δ     = g ⊙ H(|Δ| − θ)                                   (no STE on Δ)
    ∂L/∂θ     = −(θ/ε) · [ mean_N( K((Δ − θ)/ε) ⊙ g ) − mean_N( K((−Δ − θ)/ε) ⊙ g ) ]
    ∂L/∂log_θ = θ · ∂L/∂θ = −(θ²/ε) · [ … same bracket … ]         (chain rule θ = e^{log_θ})

The mean is per matrix; matrices sharing a θ (leading axes of ``Δ`` that θ is
broadcast over, or separate calls under a global θ) are SUMMED, as autodiff
does in the repo when one ``log_θ`` feeds every module. The second kernel
term carries a minus sign because the ``−JumpReLU_θ(−Δ)`` branch sees the
upstream gradient ``−g``.

Recorded decisions / differences (spec §1.2, §3, §6):

- The JumpLoRA paper's method section was unavailable; this is the released
  code's rule ([CODE-JL]). Spec §6 item 1: implement the code, flag it.
- We keep the exact two-kernel composition, not the spec's shorthand
  ``−(θ/ε)·mean(sign(Δ) K((|Δ| − θ)/ε) g)``: the two differ when ``θ < ε/2``
  (both kernels fire near ``Δ = 0`` and cancel in the code).
- Versus the JumpReLU-SAE paper (Rajamanoharan et al. 2024, Eq. 11; spec §3):
  symmetric (magnitude) instead of one-sided; on weight entries, not
  activations; the θ-gradient is a MEAN over each matrix's entries instead of
  a SUM over the batch (spec §6 item 2: mean, to match the repo); the θ/ε
  factor of Eq. 11 is kept (so ∂/∂log_θ carries θ²/ε); no L0 term (Eq. 12 is
  unused, θ trains only through the task loss).
- The interpolation ``f·J_θ(Δ) + (1 − f)·Δ`` (§1.3) and the threshold
  initialisation (§1.4) are left to the method; ``g`` reaching the gate then
  already contains ``f · s``.

References:
  JumpLoRA, Dragomir et al., arXiv 2604.16171 (code alexandra-dragomir/JumpLoRA
  @ f05079a); JumpReLU SAEs, Rajamanoharan et al., arXiv 2407.14435.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_BANDWIDTH", "gate", "gate_reference_numpy"]

DEFAULT_BANDWIDTH = 1e-3  # --jumplora-bandwidth (spec §1.8)


def gate(delta: jax.Array, log_threshold: jax.Array | float, bandwidth: float = DEFAULT_BANDWIDTH) -> jax.Array:
    """Symmetric JumpReLU ``Δ ⊙ H(|Δ| − exp(log_θ))`` with the repo's pseudo-derivative.

    Args:
      delta: ``[..., d_in, d_out]`` raw (unscaled) dense update ``a @ b``.
      log_threshold: log θ, broadcastable to ``delta`` without enlarging it:
        a scalar (global θ) or e.g. ``[L, 1, 1]`` (per block) for a stack.
      bandwidth: ε of the rectangle kernel, a static Python float.

    Returns:
      Gated ``delta`` (same shape and dtype). Gradients flow to ``delta`` and to
      ``log_threshold`` as documented in the module docstring.
    """
    log_threshold = jnp.asarray(log_threshold)
    if jnp.broadcast_shapes(delta.shape, log_threshold.shape) != delta.shape:
        raise ValueError(f"log_threshold {log_threshold.shape} must broadcast to delta {delta.shape}")
    return _gate(delta, log_threshold, float(bandwidth))


def _gate_forward(delta: jax.Array, log_threshold: jax.Array) -> jax.Array:
    threshold = jnp.exp(log_threshold.astype(jnp.float32))
    keep = jnp.abs(delta.astype(jnp.float32)) > threshold
    return jnp.where(keep, delta, jnp.zeros_like(delta))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gate(delta: jax.Array, log_threshold: jax.Array, bandwidth: float) -> jax.Array:
    return _gate_forward(delta, log_threshold)


def _gate_fwd(delta, log_threshold, bandwidth):
    return _gate_forward(delta, log_threshold), (delta, log_threshold)


def _rect(u: jax.Array) -> jax.Array:
    return ((u > -0.5) & (u < 0.5)).astype(jnp.float32)


def _gate_bwd(bandwidth, residuals, g):
    delta, log_threshold = residuals
    x = delta.astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    theta = jnp.exp(log_threshold.astype(jnp.float32))
    grad_delta = jnp.where(jnp.abs(x) > theta, g32, 0.0)
    kernel = _rect((x - theta) / bandwidth) - _rect((-x - theta) / bandwidth)
    entries_per_matrix = math.prod(delta.shape[-2:])
    # θ · ∂L/∂θ per entry, already divided by N so that the sum below is a per-matrix mean.
    per_entry = -(theta * theta / bandwidth) * kernel * g32 / entries_per_matrix
    grad_log = _sum_to_shape(per_entry, log_threshold.shape)
    return grad_delta.astype(delta.dtype), grad_log.astype(log_threshold.dtype)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Transpose of broadcasting ``shape`` to ``x.shape``: sum the broadcast axes."""
    x = jnp.sum(x, axis=tuple(range(x.ndim - len(shape))))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


_gate.defvjp(_gate_fwd, _gate_bwd)


# --------------------------------------------------------------------------- oracle


def _jumprelu_np(z: np.ndarray, theta: float) -> np.ndarray:
    """One-sided ``JumpReLUF.forward``: ``z · 1{z > θ}``."""
    return z * (z > theta)


def _jumprelu_bwd_np(z: np.ndarray, theta: float, g: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """One-sided ``JumpReLUF.backward`` (l.42–58): ``(g·1{z>θ}, −(θ/ε)·mean(K((z−θ)/ε)·g))``."""
    u = (z - theta) / eps
    rect = (u > -0.5) & (u < 0.5)
    return g * (z > theta), float(-(theta / eps) * np.mean(rect * g))


def gate_reference_numpy(
    delta: np.ndarray, log_threshold: np.ndarray | float, bandwidth: float, cotangent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 numpy oracle: forward and the repo's backward, matrix by matrix.

    Mirrors the repo literally: for each matrix (last two axes of ``delta``)
    with its own scalar θ, call the one-sided primitive on ``Δ`` and on ``−Δ``
    (upstream ``g`` and ``−g``), subtract, apply the ``θ`` chain rule of
    ``θ = exp(log_θ)``, and sum the per-matrix θ-gradients of matrices that
    share a θ.

    Args:
      delta: ``[..., m, n]``; log_threshold: scalar or broadcastable to
        ``delta.shape[:-2] + (1, 1)``; bandwidth: ε; cotangent: like ``delta``.

    Returns:
      ``(out, grad_delta, grad_log_threshold)`` as float64 arrays.
    """
    delta = np.asarray(delta, np.float64)
    cot = np.asarray(cotangent, np.float64)
    log_th = np.asarray(log_threshold, np.float64)
    lead = delta.shape[:-2]
    padded = (1,) * (len(lead) + 2 - log_th.ndim) + log_th.shape
    per_matrix_log_th = np.broadcast_to(log_th.reshape(padded), lead + (1, 1))
    out, grad_delta = np.zeros_like(delta), np.zeros_like(delta)
    grad_log = np.zeros(padded)
    for idx in np.ndindex(*lead):
        x, g = delta[idx], cot[idx]
        theta = float(np.exp(per_matrix_log_th[idx][0, 0]))
        out[idx] = _jumprelu_np(x, theta) - _jumprelu_np(-x, theta)
        gx_pos, gth_pos = _jumprelu_bwd_np(x, theta, g, bandwidth)
        gx_neg, gth_neg = _jumprelu_bwd_np(-x, theta, -g, bandwidth)
        grad_delta[idx] = gx_pos - gx_neg  # gx_neg is w.r.t. z = −x, so negate it
        shared = tuple(0 if size == 1 else i for i, size in zip(idx + (0, 0), padded))
        grad_log[shared] += theta * (gth_pos + gth_neg)
    return out, grad_delta, grad_log.reshape(log_th.shape)
