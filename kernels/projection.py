"""Subspace projections for OSFT / gradient projection (`sculpting_osf.md` §1.3, §2).

With orthonormal columns ``U: [m, k]`` and ``V: [n, k]`` (e.g. the preserved
top-k singular vectors of a weight), the released OSFT code is equivalent to
the two-sided complement projection of a gradient ``G: [m, n]``

    Π(G) = (I − U Uᵀ) G (I − V Vᵀ),

computed here as low-rank corrections, ``O(m n k)``, never forming ``m×m`` or
``n×n``. A per-layer adaptive rank lives in fixed-size ``k_max`` arrays plus a
column mask ``[k_max]``: ``U Uᵀ`` becomes ``U diag(mask) Uᵀ`` (0/1 masks give
the projector onto the active columns; fractional entries give a partial
removal). Everything is float32 at ``Precision.HIGHEST`` and cast back to
``g.dtype``. Every op takes single matrices; use ``jax.vmap`` for a layer axis.
Storage note: for a weight stored ``[d_in, d_out]`` the spec's output-side
``U_high`` (of ``W: [d_O, d_I]``) is the RIGHT basis here, i.e. for
``thin_svd(w_stored) = (U, S, Vt)`` the input side is ``U`` and the output
side is ``Vt.T``.

The paper's literal ``G − U Uᵀ G V Vᵀ`` removes only the doubly projected
block; if needed build it as ``G − (X − project_out_right(X, v))`` with
``X = G − project_out_left(G, u)``. The two-sided complement above is what
every released code does (spec §1.3).

References:
  Sculpting Subspaces / OSFT, arXiv 2504.07097 (ICLR 2026).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "orthonormal_basis",
    "project_out_left",
    "project_out_right",
    "project_out_two_sided",
    "rank_mask",
    "thin_svd",
]

_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # true fp32 on GPU/TPU too


def _masked_coefficients(coeffs: jax.Array, mask: jax.Array | None, axis: int) -> jax.Array:
    """Multiply the k-indexed ``axis`` of ``coeffs`` by ``mask`` (None: keep all)."""
    if mask is None:
        return coeffs
    weights = jnp.asarray(mask).astype(jnp.float32)
    return coeffs * (weights[:, None] if axis == 0 else weights[None, :])


def _left_f32(g32: jax.Array, u: jax.Array, mask: jax.Array | None) -> jax.Array:
    u32 = u.astype(jnp.float32)
    coeffs = _masked_coefficients(_mm(u32.T, g32), mask, axis=0)  # [k, n]
    return g32 - _mm(u32, coeffs)


def _right_f32(g32: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    v32 = v.astype(jnp.float32)
    coeffs = _masked_coefficients(_mm(g32, v32), mask, axis=1)  # [m, k]
    return g32 - _mm(coeffs, v32.T)


def project_out_left(g: jax.Array, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``(I − U diag(mask) Uᵀ) G``: remove the column-space component along ``U``.

    Args:
      g: ``[m, n]``; u: ``[m, k]`` orthonormal columns; mask: ``[k]`` bool/float
        or None (all columns active).

    Returns:
      ``[m, n]`` in ``g.dtype``.
    """
    return _left_f32(g.astype(jnp.float32), u, mask).astype(g.dtype)


def project_out_right(g: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``G (I − V diag(mask) Vᵀ)``: remove the row-space component along ``V``.

    Args:
      g: ``[m, n]``; v: ``[n, k]`` orthonormal columns; mask: ``[k]`` or None.

    Returns:
      ``[m, n]`` in ``g.dtype``.
    """
    return _right_f32(g.astype(jnp.float32), v, mask).astype(g.dtype)


def project_out_two_sided(
    g: jax.Array,
    u: jax.Array,
    v: jax.Array,
    u_mask: jax.Array | None = None,
    v_mask: jax.Array | None = None,
) -> jax.Array:
    """``(I − U diag(u_mask) Uᵀ) G (I − V diag(v_mask) Vᵀ)`` (OSFT, code-equivalent form).

    Args:
      g: ``[m, n]`` gradient or update.
      u: ``[m, k_u]`` and v: ``[n, k_v]``, orthonormal columns.
      u_mask: ``[k_u]``, v_mask: ``[k_v]``: active columns (None: all).

    Returns:
      ``[m, n]`` in ``g.dtype``; with 0/1 masks ``Uᵀ Π(G) = 0`` and ``Π(G) V = 0`` on
      the active columns, and ``Π`` is idempotent.
    """
    left = _left_f32(g.astype(jnp.float32), u, u_mask)
    return _right_f32(left, v, v_mask).astype(g.dtype)


def rank_mask(k: int | jax.Array, k_max: int) -> jax.Array:
    """Boolean mask ``[..., k_max]`` whose first ``k`` entries are True.

    ``k`` may be a traced scalar or an integer array of per-layer ranks ``[L]``
    (giving ``[L, k_max]``); ``k_max`` must be static.
    """
    return jnp.arange(k_max) < jnp.asarray(k)[..., None]


def thin_svd(w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Float32 thin SVD ``W = U diag(S) Vt`` with a deterministic sign convention.

    Args:
      w: ``[m, n]`` (any float dtype; cast to float32 first).

    Returns:
      ``U: [m, p]``, ``S: [p]`` (descending), ``Vt: [p, n]`` with ``p = min(m, n)``,
      all float32. Each left singular vector is sign-flipped (with its row of
      ``Vt``) so that its largest-magnitude entry is positive, making the result
      reproducible across backends. Works under ``jax.vmap``.
    """
    u, s, vt = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
    pivots = jnp.take_along_axis(u, jnp.argmax(jnp.abs(u), axis=0)[None, :], axis=0)[0]
    signs = jnp.where(pivots < 0, -1.0, 1.0).astype(u.dtype)
    return u * signs[None, :], s, vt * signs[:, None]


def orthonormal_basis(x: jax.Array) -> jax.Array:
    """Orthonormal basis ``Q: [m, k]`` of the column span of ``x: [m, k]`` (``k ≤ m``).

    Reduced QR ``x = Q R`` with signs fixed so that ``diag(R) ≥ 0`` (unique for
    full-rank ``x``). Float32 output.
    """
    q, r = jnp.linalg.qr(x.astype(jnp.float32), mode="reduced")
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    return q * signs[None, :]
