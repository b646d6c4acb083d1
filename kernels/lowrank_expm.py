"""Rotations ``exp(S)`` and Cayley transforms of a low-rank skew matrix ``S``.

The rotation variant of the Lie updates (matrix-exponential Lie updates,
`design.md` §5a and §0 item 7): ``W' = Q W`` with ``Q = exp(S)`` orthogonal and

    S = U Vᵀ − V Uᵀ = Z J Zᵀ,   Z = [U V] ∈ R^{n×2r},   J = [[0, I_r], [−I_r, 0]].

Since ``S^k = Z (J ZᵀZ)^{k−1} J Zᵀ`` for ``k ≥ 1``, any analytic ``f`` with
``f(0) = 1`` reduces to a 2r×2r matrix function of ``X = J ZᵀZ``:

    exp(S)                 = I + Z φ1(X) J Zᵀ,            φ1(X) = (e^X − I) X⁻¹
    (I − S/2)⁻¹ (I + S/2)  = I + Z (I − X/2)⁻¹ J Zᵀ       (Cayley; Woodbury)

``φ1(X)`` is the top-right block of ``expm([[X, I], [0, 0]])`` (a 4r×4r expm,
exact even for singular ``X``); ``I − X/2`` is always invertible because ``X``
is similar to a skew matrix (purely imaginary spectrum). Nothing n×n is formed
by the ``apply_*`` functions: cost ``O(n r m + r³)`` for ``W: [n, m]``.

Autodiff through the small 4r×4r ``expm`` / 2r×2r inverse is cheap and stable,
so no custom VJP is needed here. All math runs in float32 at
``Precision.HIGHEST`` (TF32/bf16 passes would break orthogonality on GPU/TPU).

References:
  Higham, "Functions of Matrices" (SIAM, 2008) for φ1 and the augmented expm;
  the Cayley parametrisation as in OFT (Qiu et al., arXiv 2306.07280).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.linalg import expm

__all__ = [
    "apply_cayley_lowrank",
    "apply_skew_lowrank_expm",
    "cayley_lowrank",
    "cayley_reference",
    "phi1",
    "skew_from_lowrank",
    "skew_lowrank_expm",
    "skew_lowrank_expm_reference",
]

_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # true fp32 on GPU/TPU too


def phi1(x: jax.Array) -> jax.Array:
    """``φ1(X) = Σ_{k≥0} X^k / (k+1)! = (e^X − I) X⁻¹`` for a small ``[p, p]`` matrix.

    Read off the top-right block of ``expm([[X, I], [0, 0]])`` (``[2p, 2p]``),
    so it is exact for singular ``X`` (``φ1(0) = I``). Float32.
    """
    p = x.shape[-1]
    x = x.astype(jnp.float32)
    eye, zeros = jnp.eye(p, dtype=x.dtype), jnp.zeros((p, p), x.dtype)
    augmented = jnp.block([[x, eye], [zeros, zeros]])
    return expm(augmented)[:p, p:]


def _lowrank_skew_factors(u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Return ``Z = [U V]`` ([n, 2r]), ``JZᵀ`` ([2r, n]) and ``X = J ZᵀZ`` ([2r, 2r])."""
    u32, v32 = u.astype(jnp.float32), v.astype(jnp.float32)
    z = jnp.concatenate([u32, v32], axis=-1)
    j_zt = jnp.concatenate([v32.T, -u32.T], axis=0)  # J Zᵀ = [Vᵀ; −Uᵀ]
    return z, j_zt, _mm(j_zt, z)


def _apply_skew_function(
    u: jax.Array, v: jax.Array, w: jax.Array, small_times: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array:
    """``W + Z F(X) (J Zᵀ W)`` where ``small_times(X, Y) = F(X) Y`` for ``Y: [2r, m]``."""
    z, j_zt, x = _lowrank_skew_factors(u, v)
    w32 = w.astype(jnp.float32)
    coeffs = small_times(x, _mm(j_zt, w32))  # [2r, m]
    return (w32 + _mm(z, coeffs)).astype(w.dtype)


def _phi1_times(x: jax.Array, y: jax.Array) -> jax.Array:
    return _mm(phi1(x), y)


def _cayley_times(x: jax.Array, y: jax.Array) -> jax.Array:
    # Invert the small matrix, then one matmul: a triangular solve with m right-hand
    # sides is ~3x slower on CPU. I − X/2 has |eigenvalues| ≥ 1, so this is benign.
    return _mm(jnp.linalg.inv(jnp.eye(x.shape[-1], dtype=x.dtype) - 0.5 * x), y)


def apply_skew_lowrank_expm(u: jax.Array, v: jax.Array, w: jax.Array) -> jax.Array:
    """``exp(U Vᵀ − V Uᵀ) @ W`` without forming an n×n matrix.

    Args:
      u, v: ``[n, r]`` factors of the skew generator ``S = U Vᵀ − V Uᵀ``.
      w: ``[n, m]`` matrix to rotate (e.g. a weight ``[d_in, d_out]`` rotated on
        its input side; use ``.T`` for the output side).

    Returns:
      ``[n, m]`` in ``w.dtype``: ``W + Z φ1(J ZᵀZ) J Zᵀ W``.
    """
    return _apply_skew_function(u, v, w, _phi1_times)


def skew_lowrank_expm(u: jax.Array, v: jax.Array) -> jax.Array:
    """Dense orthogonal ``exp(U Vᵀ − V Uᵀ)``: ``[n, n]`` from ``u, v: [n, r]`` (float32 math)."""
    return apply_skew_lowrank_expm(u, v, jnp.eye(u.shape[-2], dtype=u.dtype))


def apply_cayley_lowrank(u: jax.Array, v: jax.Array, w: jax.Array) -> jax.Array:
    """Cayley rotation ``(I − S/2)⁻¹ (I + S/2) @ W`` for ``S = U Vᵀ − V Uᵀ``.

    Woodbury form ``W + Z (I − X/2)⁻¹ (J Zᵀ W)``, ``X = J ZᵀZ``: one 2r×2r inverse.

    Args:
      u, v: ``[n, r]``; w: ``[n, m]``.

    Returns:
      ``[n, m]`` in ``w.dtype``.
    """
    return _apply_skew_function(u, v, w, _cayley_times)


def cayley_lowrank(u: jax.Array, v: jax.Array) -> jax.Array:
    """Dense orthogonal Cayley transform ``(I − S/2)⁻¹ (I + S/2)``: ``[n, n]``."""
    return apply_cayley_lowrank(u, v, jnp.eye(u.shape[-2], dtype=u.dtype))


def skew_from_lowrank(u: jax.Array, v: jax.Array) -> jax.Array:
    """Dense ``S = U Vᵀ − V Uᵀ`` (``[n, n]``, float32); for references and tests."""
    u32, v32 = u.astype(jnp.float32), v.astype(jnp.float32)
    return _mm(u32, v32.T) - _mm(v32, u32.T)


def skew_lowrank_expm_reference(u: jax.Array, v: jax.Array) -> jax.Array:
    """Oracle: dense ``jax.scipy.linalg.expm(S)`` of the n×n skew matrix (slow)."""
    return expm(skew_from_lowrank(u, v))


def cayley_reference(u: jax.Array, v: jax.Array) -> jax.Array:
    """Oracle: dense ``solve(I − S/2, I + S/2)`` of the n×n skew matrix (slow)."""
    s = skew_from_lowrank(u, v)
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    return jnp.linalg.solve(eye - 0.5 * s, eye + 0.5 * s)
