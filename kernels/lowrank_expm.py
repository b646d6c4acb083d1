"""Rotations ``exp(S)`` and Cayley transforms of a low-rank skew matrix ``S``.

The rotation variant of the Lie updates (matrix-exponential Lie updates,
`design.md` §5a and §0 item 7): ``W' = Q W`` with ``Q = exp(S)`` orthogonal and

    S = U Vᵀ − V Uᵀ = Z J Zᵀ,   Z = [U V] ∈ R^{n×2r},   J = [[0, I_r], [−I_r, 0]].

Since ``S^k = Z (J ZᵀZ)^{k−1} J Zᵀ`` for ``k ≥ 1``, any analytic ``f`` with
``f(0) = 1`` reduces to a 2r×2r matrix function of ``X = J ZᵀZ``:

    exp(S)                 = I + Z φ1(X) J Zᵀ,            φ1(X) = (e^X − I) X⁻¹
    (I − S/2)⁻¹ (I + S/2)  = I + Z (I − X/2)⁻¹ J Zᵀ       (Cayley; Woodbury)

``φ1(X)`` is computed by scaling and squaring with matmuls only: a degree-20
Taylor polynomial of ``φ1(X/2^s)`` (``‖X/2^s‖₁ ≤ 4``: truncation error
< 4e-9, below float32 round-off) and ``s`` doublings
``φ1(2Y) = ½ (e^Y + I) φ1(Y)``, ``e^{2Y} = (e^Y)²`` (exact for singular ``X``:
no ``X⁻¹`` is formed). The Cayley inverse ``(I − X/2)⁻¹`` is a Gauss–Jordan
elimination with partial pivoting in plain jnp ops; it always exists because
``X`` is similar to a skew matrix (purely imaginary spectrum, so
``|eig(I − X/2)| ≥ 1``). Nothing n×n is formed by the ``apply_*`` functions:
cost ``O(n r m + r³)`` for ``W: [n, m]``.

No LAPACK on purpose: ``jax.scipy.linalg.expm`` / ``jnp.linalg.solve`` /
``jnp.linalg.inv`` lower on CPU to jaxlib's LAPACK FFI custom calls
(``lapack_sgetrf_ffi``, ``lapack_strsm_ffi``). In jaxlib 0.10.2 these split a
batch of small matrices into chunks on XLA's intra-op thread pool and block the
calling thread until the chunks are done; when the thunk executor runs two such
calls at once on the pool's workers (two rotated targets, each vmapped over the
30 layers of SmolLM2, on a 2-core machine), every worker waits for chunks that
no free worker can run and the train step deadlocks
(``experiments/repro_oliera_rot_hang.py``). The versions below contain no custom
call at all.

Autodiff through these small matrix functions is cheap and stable, so no
custom VJP is needed. All math runs in float32 at ``Precision.HIGHEST``
(TF32/bf16 passes would break orthogonality on GPU/TPU).

References:
  Higham, "Functions of Matrices" (SIAM, 2008) for φ1, scaling and squaring
  (§10.3) and Gauss–Jordan elimination;
  the Cayley parametrisation as in OFT (Qiu et al., arXiv 2306.07280).
"""

from __future__ import annotations

import functools
import math
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
    "small_inverse",
]

_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # true fp32 on GPU/TPU too


# φ1 by scaling and squaring: ‖X/2^s‖₁ ≤ θ = 4, then the degree-20 Taylor polynomial, whose
# truncation error Σ_{k>20} θ^k/(k+1)! < 4e-9 is below float32 round-off (6e-8); θ = 4 needs
# two doublings fewer than θ = 1 and measured as accurate as jax.scipy.linalg.expm's Padé
# (|Q − expm_f64(S)| and |QᵀQ − I| over ‖X‖₁ ≤ 100). _PHI1_MAX_SQUARINGS doublings reach
# ‖X‖₁ ≤ 4·2^24 (rotation angles far beyond any float32 use); a larger X gives NaN, as
# jax.scipy.linalg.expm does.
_PHI1_THETA = 4.0
_PHI1_DEGREE = 20
_PHI1_MAX_SQUARINGS = 24


def phi1(x: jax.Array) -> jax.Array:
    """``φ1(X) = Σ_{k≥0} X^k / (k+1)! = (e^X − I) X⁻¹`` for small ``[..., p, p]`` matrices.

    Scaling and squaring with matmuls only (no LAPACK custom call, see the module
    docstring): ``Y = X / 2^s`` with ``‖Y‖₁ ≤ 4``, the Taylor polynomial of ``φ1(Y)``
    (Horner), then ``s`` doublings ``φ1(2Y) = ½ (e^Y + I) φ1(Y)``, ``e^{2Y} = (e^Y)²``.
    Exact for singular ``X`` (``φ1(0) = I``), accurate to float32 round-off. The
    doubling loop has a static length (``s`` only selects which steps apply), so it
    is reverse-differentiable and vmaps. Float32.
    """
    p = x.shape[-1]
    x = x.astype(jnp.float32)
    eye = jnp.eye(p, dtype=x.dtype)
    norm1 = jnp.max(jnp.sum(jnp.abs(jax.lax.stop_gradient(x)), axis=-2), axis=-1)  # max column sum
    s = jnp.ceil(jnp.log2(norm1 / _PHI1_THETA))  # −inf for X = 0
    too_big = s > _PHI1_MAX_SQUARINGS
    s = jnp.clip(s, 0, _PHI1_MAX_SQUARINGS)
    y = x * jnp.exp2(-s)[..., None, None]  # exact: a power of two
    phi = eye * (1.0 / math.factorial(_PHI1_DEGREE + 1))
    for k in range(_PHI1_DEGREE - 1, -1, -1):  # Horner: φ1(Y) = Σ_{k≤20} Y^k/(k+1)!
        phi = eye * (1.0 / math.factorial(k + 1)) + _mm(y, phi)
    e = eye + _mm(y, phi)  # e^Y

    def double(i, carry):
        phi, e = carry
        active = (i < s)[..., None, None]
        return jnp.where(active, 0.5 * _mm(e + eye, phi), phi), jnp.where(active, _mm(e, e), e)

    phi, _ = jax.lax.fori_loop(0, _PHI1_MAX_SQUARINGS, double, (phi, e))
    return jnp.where(too_big[..., None, None], jnp.nan, phi)


def small_inverse(a: jax.Array) -> jax.Array:
    """Inverse of a small ``[p, p]`` matrix: Gauss–Jordan elimination with partial pivoting.

    Plain jnp ops in a static-length loop (no LAPACK custom call, see the module
    docstring); differentiable (the pivot choice is piecewise constant) and vmappable.
    Float32.
    """
    p = a.shape[-1]
    a = a.astype(jnp.float32)
    rows = jnp.arange(p)
    aug = jnp.concatenate([a, jnp.eye(p, dtype=a.dtype)], axis=-1)  # [A | I] → [I | A⁻¹]

    def eliminate(k, aug):
        col = jnp.abs(jax.lax.stop_gradient(aug[:, k]))
        piv = jnp.argmax(jnp.where(rows >= k, col, -1.0))
        aug = aug[jnp.where(rows == k, piv, jnp.where(rows == piv, k, rows))]  # swap rows k and piv
        pivot_row = aug[k] / aug[k, k]
        aug = aug - aug[:, k, None] * pivot_row[None, :]  # clears column k everywhere (row k too) ...
        return aug.at[k].set(pivot_row)  # ... then row k gets its normalised pivot row back

    return jax.lax.fori_loop(0, p, eliminate, aug)[:, p:]


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
    return _mm(small_inverse(jnp.eye(x.shape[-1], dtype=x.dtype) - 0.5 * x), y)


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
