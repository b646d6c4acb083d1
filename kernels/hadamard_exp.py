"""Hadamard-Lie exponential of LieRA / OLieRA (`olora_family.md` §4, §5.1).

The group is the set of tensors with all entries non-zero under the Hadamard
(elementwise) product; its exponential map is the *elementwise* ``exp``:

    W' = W ⊙ exp(ΔW),    exp(ΔW) = 1 + ΔW + ΔW^{⊙2}/2! + ΔW^{⊙3}/3! + …

``order=None`` uses the exact ``exp``; ``order=n`` truncates the Taylor series
after the ``ΔW^{⊙n}/n!`` term (LieRA's code uses ``n = 1``: ``W + W ⊙ ΔW``;
OLieRA ablates ``n = 1, 2, 3``). Note that d/dx of the order-n polynomial is
the order-(n−1) polynomial, just as ``exp' = exp``; the custom VJP uses this.

Weights are stored ``[d_in, d_out]`` (forward ``x @ W``) and the LoRA update is
``ΔW = scale · a @ b`` with ``a: [d_in, r]``, ``b: [r, d_out]``.

References:
  LieRA, Si et al., arXiv 2504.00851; OLieRA, Cao & Wu, arXiv 2509.06100.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "hadamard_exp",
    "hadamard_exp_lowrank",
    "hadamard_exp_reference",
    "taylor_exp",
]

Order = int | None


def taylor_exp(x: jax.Array, order: Order = None) -> jax.Array:
    """Elementwise ``exp(x)`` (``order=None``) or its Taylor polynomial.

    ``taylor_exp(x, n) = Σ_{j=0..n} x^j / j!`` evaluated by Horner's rule, any
    shape; ``n = 0`` gives ones (used as the derivative of the order-1 case).
    """
    if order is None:
        return jnp.exp(x)
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be None or an int >= 0, got {order!r}")
    out = jnp.ones_like(x)
    for j in range(order, 0, -1):  # 1 + x(1 + x/2(1 + x/3(…)))
        out = 1.0 + out * x / j
    return out


def _derivative_order(order: Order) -> Order:
    """Order of d/dx taylor_exp(x, order): exp stays exp, n becomes n − 1."""
    return None if order is None else max(order - 1, 0)


def hadamard_exp(w: jax.Array, delta: jax.Array, order: Order = None) -> jax.Array:
    """``W ⊙ T(ΔW)`` with ``T = exp`` (order None) or its order-n truncation.

    Args:
      w: ``[..., d_in, d_out]`` base weight (any shape broadcastable with delta).
      delta: ``[..., d_in, d_out]`` Lie-algebra element ΔW (already scaled).
      order: None (exact ``exp``) or the Taylor order 1, 2, 3, ….

    Returns:
      ``W ⊙ T(ΔW)`` in ``w.dtype``; computed in float32. Plain ``jnp``: autodiff
      through it is already cheap (elementwise).
    """
    prod = w.astype(jnp.float32) * taylor_exp(delta.astype(jnp.float32), order)
    return prod.astype(w.dtype)


def hadamard_exp_reference(
    w: jax.Array, a: jax.Array, b: jax.Array, scale: float | jax.Array, order: Order = None
) -> jax.Array:
    """Oracle for :func:`hadamard_exp_lowrank`: ``W ⊙ T(scale · a @ b)`` by plain autodiff.

    Autodiff saves the dense ``T(ΔW)`` (and ``ΔW``) as residuals; the custom VJP
    below does not.
    """
    delta = scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
    return hadamard_exp(w, delta, order)


def hadamard_exp_lowrank(
    w: jax.Array, a: jax.Array, b: jax.Array, scale: float | jax.Array, order: Order = None
) -> jax.Array:
    """``W ⊙ T(scale · a @ b)`` with a memory-lean custom VJP.

    Args:
      w: ``[d_in, d_out]`` base weight (frozen in LieRA/OLieRA, but differentiable).
      a: ``[d_in, r]`` LoRA input-side factor.
      b: ``[r, d_out]`` LoRA output-side factor.
      scale: LoRA scale ``α / r`` (Python number or scalar array; differentiable).
      order: None (exact ``exp``) or Taylor order; static (non-differentiable).

    Returns:
      ``[d_in, d_out]`` array in ``w.dtype``.

    VJP (cotangent ``G``, ``Δ = scale · a b``, ``D = G ⊙ W ⊙ T'(Δ)`` with
    ``T'`` the order n − 1 polynomial, or ``exp`` for the exact map):

        ∂W = G ⊙ T(Δ),  ∂a = scale · D bᵀ,  ∂b = scale · aᵀ D,
        ∂scale = ⟨aᵀ D, b⟩_F   (reuses the r×d_out product of ∂b).

    Residuals are only ``w, a, b, scale``; the backward recomputes the single
    dense ``Δ`` (the rest is elementwise and fuses). Use ``jax.vmap`` for a
    leading layer axis.
    """
    taylor_exp(jnp.zeros(()), order)  # validate `order` eagerly
    return _hadamard_exp_lowrank(w, a, b, jnp.asarray(scale, jnp.float32), order)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _hadamard_exp_lowrank(w, a, b, scale, order):
    return hadamard_exp_reference(w, a, b, scale, order)


def _lowrank_fwd(w, a, b, scale, order):
    return hadamard_exp_reference(w, a, b, scale, order), (w, a, b, scale)


def _lowrank_bwd(order, residuals, g):
    w, a, b, scale = residuals
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    delta = scale * (a32 @ b32)
    g32 = g.astype(jnp.float32)
    grad_w = g32 * taylor_exp(delta, order)
    d_delta = g32 * w.astype(jnp.float32) * taylor_exp(delta, _derivative_order(order))
    at_d = a32.T @ d_delta  # [r, d_out]
    grad_a = scale * (d_delta @ b32.T)
    grad_b = scale * at_d
    grad_scale = jnp.vdot(at_d, b32)
    return grad_w.astype(w.dtype), grad_a.astype(a.dtype), grad_b.astype(b.dtype), grad_scale


_hadamard_exp_lowrank.defvjp(_lowrank_fwd, _lowrank_bwd)
