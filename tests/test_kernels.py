"""Tests of `kernels/` against their references (values, gradients, invariants)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.scipy.linalg import expm
from jax.test_util import check_grads
from numpy.testing import assert_allclose

import kernels
from kernels import (
    apply_cayley_lowrank,
    apply_skew_lowrank_expm,
    cayley_lowrank,
    cayley_reference,
    gate,
    gate_reference_numpy,
    hadamard_exp,
    hadamard_exp_lowrank,
    hadamard_exp_reference,
    orthonormal_basis,
    phi1,
    project_out_left,
    project_out_right,
    project_out_two_sided,
    rank_mask,
    skew_from_lowrank,
    skew_lowrank_expm,
    skew_lowrank_expm_reference,
    thin_svd,
)


def _normal(seed: int, *shape: int, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _eye_err(q: jax.Array) -> float:
    q = np.asarray(q, np.float64)
    return float(np.abs(q.T @ q - np.eye(q.shape[1])).max())


def test_all_exports_exist():
    assert sorted(kernels.__all__) == sorted(set(kernels.__all__))
    for name in kernels.__all__:
        assert getattr(kernels, name) is not None


# --------------------------------------------------------------------------- hadamard_exp

D_IN, D_OUT, R = 24, 40, 4


def _lora(seed: int = 0):
    w = _normal(seed, D_IN, D_OUT)
    a = _normal(seed + 1, D_IN, R, scale=0.5)
    b = _normal(seed + 2, R, D_OUT, scale=0.2)
    return w, a, b


@pytest.mark.parametrize("order", [None, 1, 2, 3])
def test_hadamard_exp_orders_equal_their_polynomials(order):
    w, d = _normal(0, 8, 9), _normal(1, 8, 9, scale=0.7)
    w64, d64 = np.asarray(w, np.float64), np.asarray(d, np.float64)
    expected = {
        None: w64 * np.exp(d64),
        1: w64 * (1 + d64),
        2: w64 * (1 + d64 + d64**2 / 2),
        3: w64 * (1 + d64 + d64**2 / 2 + d64**3 / 6),
    }[order]
    assert_allclose(hadamard_exp(w, d, order), expected, rtol=2e-6, atol=2e-6)


def test_hadamard_exp_first_order_is_lieras_additive_form():
    w, d = _normal(0, 8, 9), _normal(1, 8, 9)
    assert_allclose(hadamard_exp(w, d, 1), w + w * d, rtol=1e-6, atol=1e-6)
    assert not np.allclose(hadamard_exp(w, d, 2), w + w * d, atol=1e-3)


def test_hadamard_exp_rejects_bad_order():
    w, a, b = _lora()
    with pytest.raises(ValueError):
        hadamard_exp_lowrank(w, a, b, 2.0, -1)
    with pytest.raises(ValueError):
        hadamard_exp(w, w, 1.5)


@pytest.mark.parametrize("order", [None, 1, 2, 3])
def test_hadamard_exp_lowrank_values_and_grads_match_reference(order):
    w, a, b = _lora()
    cot = _normal(7, D_IN, D_OUT)
    scale = 1.7
    out = hadamard_exp_lowrank(w, a, b, scale, order)
    assert_allclose(out, hadamard_exp_reference(w, a, b, scale, order), rtol=1e-6, atol=1e-6)

    def loss(fn):
        return lambda *args: jnp.vdot(fn(*args, order), cot)

    grads = jax.grad(loss(hadamard_exp_lowrank), argnums=(0, 1, 2, 3))(w, a, b, scale)
    expected = jax.grad(loss(hadamard_exp_reference), argnums=(0, 1, 2, 3))(w, a, b, scale)
    for got, want in zip(grads, expected):
        assert np.abs(np.asarray(want)).max() > 1e-3  # every gradient is exercised
        assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [None, 2])
def test_hadamard_exp_lowrank_check_grads(order):
    w, a, b = _lora(3)
    fn = lambda w, a, b, s: hadamard_exp_lowrank(w, a, b, s, order)  # noqa: E731
    check_grads(fn, (w, a, b, jnp.float32(0.8)), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def _dense_residual_count(fn, capsys, *args) -> int:
    capsys.readouterr()
    print_saved_residuals(fn, *args)
    lines = capsys.readouterr().out.splitlines()
    return sum(line.startswith(f"f32[{D_IN},{D_OUT}]") for line in lines)


def test_hadamard_exp_lowrank_saves_only_w_as_dense_residual(capsys):
    w, a, b = _lora()
    lean = _dense_residual_count(lambda w, a, b: hadamard_exp_lowrank(w, a, b, 2.0, 2), capsys, w, a, b)
    naive = _dense_residual_count(lambda w, a, b: hadamard_exp_reference(w, a, b, 2.0, 2), capsys, w, a, b)
    assert lean == 1  # the argument w itself
    assert naive > 1  # autodiff keeps T(ΔW) etc.: the count can detect a regression


def test_hadamard_exp_lowrank_vmap_over_layers_and_jit():
    layers = [_lora(10 * i) for i in range(3)]
    w, a, b = (jnp.stack(x) for x in zip(*layers))
    cot = _normal(5, 3, D_IN, D_OUT)
    fn = jax.jit(jax.vmap(lambda w, a, b: hadamard_exp_lowrank(w, a, b, 0.5, 2)))
    out = fn(w, a, b)
    grads = jax.grad(lambda a, b: jnp.vdot(fn(w, a, b), cot), argnums=(0, 1))(a, b)
    for i, (wi, ai, bi) in enumerate(layers):
        assert_allclose(out[i], hadamard_exp_reference(wi, ai, bi, 0.5, 2), rtol=1e-6, atol=1e-6)
        want = jax.grad(lambda a, b: jnp.vdot(hadamard_exp_reference(wi, a, b, 0.5, 2), cot[i]), (0, 1))(ai, bi)
        assert_allclose(grads[0][i], want[0], rtol=1e-4, atol=1e-5)
        assert_allclose(grads[1][i], want[1], rtol=1e-4, atol=1e-5)


def test_hadamard_exp_lowrank_keeps_bfloat16():
    w, a, b = (x.astype(jnp.bfloat16) for x in _lora())
    out = hadamard_exp_lowrank(w, a, b, 2.0, None)
    ga, gb = jax.grad(lambda a, b: jnp.sum(hadamard_exp_lowrank(w, a, b, 2.0).astype(jnp.float32)), (0, 1))(a, b)
    assert out.dtype == ga.dtype == gb.dtype == jnp.bfloat16
    assert_allclose(np.asarray(out, np.float32), hadamard_exp_reference(w, a, b, 2.0), rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- lowrank_expm

N, M, RR = 32, 20, 3


ROTATIONS = pytest.mark.parametrize("apply", [apply_skew_lowrank_expm, apply_cayley_lowrank], ids=["expm", "cayley"])
ROTATIONS_AND_DENSE = pytest.mark.parametrize(
    "apply, dense",
    [(apply_skew_lowrank_expm, skew_lowrank_expm_reference), (apply_cayley_lowrank, cayley_reference)],
    ids=["expm", "cayley"],
)


def _skew_factors(seed: int, n: int = N, r: int = RR, scale: float = 0.4):
    return _normal(seed, n, r, scale=scale), _normal(seed + 1, n, r, scale=scale)


def test_phi1_matches_its_definition():
    x = _normal(0, 6, 6)
    phi1_jit = jax.jit(phi1)
    assert_allclose(phi1_jit(x) @ x, jax.jit(expm)(x) - jnp.eye(6), rtol=1e-4, atol=1e-4)
    assert_allclose(phi1_jit(jnp.zeros((6, 6))), jnp.eye(6), atol=1e-7)


@pytest.mark.parametrize(
    "fast, reference",
    [(skew_lowrank_expm, skew_lowrank_expm_reference), (cayley_lowrank, cayley_reference)],
    ids=["expm", "cayley"],
)
def test_lowrank_rotation_matches_dense_reference_and_is_orthogonal(fast, reference):
    u, v = _skew_factors(0, scale=0.6)
    assert float(jnp.linalg.norm(skew_from_lowrank(u, v), 2)) > 2.0  # not a near-identity case
    q = jax.jit(fast)(u, v)
    assert_allclose(q, jax.jit(reference)(u, v), atol=1e-5)
    assert _eye_err(q) < 1e-5
    assert float(jnp.abs(q - jnp.eye(N)).max()) > 0.1


def test_skew_generator_is_antisymmetric_and_lowrank():
    u, v = _skew_factors(1)
    s = np.asarray(skew_from_lowrank(u, v))
    assert_allclose(s, -s.T, atol=1e-7)
    assert np.linalg.matrix_rank(s) == 2 * RR


def test_cayley_equals_exp_only_to_third_order():
    u, v = _skew_factors(2, scale=0.05)
    s_norm = float(jnp.linalg.norm(skew_from_lowrank(u, v), 2))
    diff = float(jnp.abs(cayley_lowrank(u, v) - skew_lowrank_expm(u, v)).max())
    assert 1e-9 < diff < s_norm**3  # (I−S/2)⁻¹(I+S/2) = exp(S) + O(S³)


@ROTATIONS_AND_DENSE
def test_apply_equals_dense_rotation_times_w(apply, dense):
    u, v = _skew_factors(3)
    w = _normal(5, N, M)
    assert_allclose(apply(u, v, w), dense(u, v) @ w, atol=2e-5)


@ROTATIONS
def test_swapping_factors_inverts_the_rotation(apply):
    u, v = _skew_factors(4, scale=0.5)
    q = apply(u, v, jnp.eye(N))
    assert_allclose(apply(v, u, q), jnp.eye(N), atol=1e-5)  # S(v, u) = −S(u, v)


@ROTATIONS
def test_200_composed_rotations_stay_orthogonal(apply):
    n, steps = 24, 200
    us = _normal(10, steps, n, 2, scale=0.15)
    vs = _normal(11, steps, n, 2, scale=0.15)

    def step(q, uv):
        return apply(uv[0], uv[1], q), None

    q, _ = jax.lax.scan(step, jnp.eye(n), (us, vs))
    assert _eye_err(q) < 1e-5
    assert float(jnp.abs(q - jnp.eye(n)).max()) > 0.5  # it really moved


@ROTATIONS_AND_DENSE
def test_rotation_gradients_match_dense_autodiff(apply, dense):
    u, v = _skew_factors(6)
    w, cot = _normal(7, N, M), _normal(8, N, M)
    got = jax.jit(jax.grad(lambda u, v: jnp.vdot(apply(u, v, w), cot), (0, 1)))(u, v)
    want = jax.jit(jax.grad(lambda u, v: jnp.vdot(dense(u, v) @ w, cot), (0, 1)))(u, v)
    for g, h in zip(got, want):
        assert_allclose(g, h, rtol=1e-3, atol=1e-4)
    check_grads(jax.jit(apply), (u, v, w), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_rotation_gradient_at_zero_generator_is_finite():
    z = jnp.zeros((N, RR))
    w = _normal(0, N, M)
    gu, gv = jax.jit(jax.grad(lambda u, v: jnp.sum(apply_skew_lowrank_expm(u, v, w) ** 3), (0, 1)))(z, z)
    assert np.isfinite(np.asarray(gu)).all() and np.isfinite(np.asarray(gv)).all()


@ROTATIONS
def test_rotation_vmap_over_layers_and_jit(apply):
    us, vs = _normal(1, 3, N, RR, scale=0.3), _normal(2, 3, N, RR, scale=0.3)
    ws = _normal(3, 3, N, M)
    out = jax.jit(jax.vmap(apply))(us, vs, ws)
    for i in range(3):
        assert_allclose(out[i], apply(us[i], vs[i], ws[i]), atol=1e-6)


# --------------------------------------------------------------------------- projection

PM, PN, PK = 30, 22, 5


def _bases(seed: int = 0, k: int = PK):
    return orthonormal_basis(_normal(seed, PM, k)), orthonormal_basis(_normal(seed + 1, PN, k))


def _dense_complement(basis: jax.Array, mask=None) -> np.ndarray:
    b = np.asarray(basis, np.float64)
    weights = np.ones(b.shape[1]) if mask is None else np.asarray(mask, np.float64)
    return np.eye(b.shape[0]) - b @ np.diag(weights) @ b.T


def test_two_sided_projection_matches_dense_projectors():
    u, v = _bases()
    g = _normal(2, PM, PN)
    want = _dense_complement(u) @ np.asarray(g, np.float64) @ _dense_complement(v)
    assert_allclose(project_out_two_sided(g, u, v), want, atol=1e-6)
    assert np.abs(want - np.asarray(g)).max() > 0.1


def test_one_sided_projections_match_dense_projectors():
    u, v = _bases(3)
    g = np.asarray(_normal(4, PM, PN), np.float64)
    assert_allclose(project_out_left(jnp.asarray(g, jnp.float32), u), _dense_complement(u) @ g, atol=1e-6)
    assert_allclose(project_out_right(jnp.asarray(g, jnp.float32), v), g @ _dense_complement(v), atol=1e-6)


def test_projected_gradient_is_orthogonal_to_bases_and_idempotent():
    u, v = _bases(5)
    g = _normal(6, PM, PN, scale=10.0)
    p = project_out_two_sided(g, u, v)
    tol = 1e-6 * float(jnp.abs(g).max())
    assert float(jnp.abs(u.T @ p).max()) < tol
    assert float(jnp.abs(p @ v).max()) < tol
    assert_allclose(project_out_two_sided(p, u, v), p, atol=tol)


def test_masks_select_active_columns():
    u, v = _bases(7)
    g = _normal(8, PM, PN)
    ku, kv = 2, 4
    sliced = project_out_two_sided(g, u[:, :ku], v[:, :kv])
    with_bool = project_out_two_sided(g, u, v, rank_mask(ku, PK), rank_mask(kv, PK))
    with_float = project_out_two_sided(g, u, v, rank_mask(ku, PK).astype(jnp.float32), rank_mask(kv, PK) * 1.0)
    assert_allclose(with_bool, sliced, atol=1e-6)
    assert_allclose(with_float, sliced, atol=1e-6)
    assert not np.allclose(with_bool, project_out_two_sided(g, u, v), atol=1e-3)
    off = jnp.zeros(PK, bool)
    assert_allclose(project_out_two_sided(g, u, v, off, off), g, atol=0)
    scattered = jnp.array([True, False, True, False, False])
    assert_allclose(project_out_left(g, u, scattered), project_out_left(g, u[:, ::2][:, :2]), atol=1e-6)


def test_rank_mask_static_traced_and_per_layer():
    assert_allclose(rank_mask(3, 5), [True, True, True, False, False])
    assert_allclose(jax.jit(rank_mask, static_argnums=1)(jnp.int32(0), 3), [False] * 3)
    per_layer = rank_mask(jnp.array([0, 2, 4]), 4)
    assert per_layer.shape == (3, 4) and per_layer.dtype == jnp.bool_
    assert_allclose(per_layer.sum(axis=1), [0, 2, 4])


def test_projection_vmap_over_layers_with_adaptive_ranks():
    layers = [_bases(20 + 2 * i) for i in range(3)]
    us, vs = (jnp.stack(x) for x in zip(*layers))
    gs = _normal(30, 3, PM, PN)
    ranks = jnp.array([1, 3, 5])
    masks = rank_mask(ranks, PK)
    out = jax.jit(jax.vmap(project_out_two_sided))(gs, us, vs, masks, masks)
    for i, k in enumerate([1, 3, 5]):
        assert_allclose(out[i], project_out_two_sided(gs[i], us[i, :, :k], vs[i, :, :k]), atol=1e-6)


def test_projection_keeps_dtype_and_is_linear_for_autodiff():
    u, v = _bases(9)
    g = _normal(10, PM, PN)
    assert project_out_two_sided(g.astype(jnp.bfloat16), u, v).dtype == jnp.bfloat16
    cot = _normal(11, PM, PN)
    grad = jax.grad(lambda g: jnp.vdot(project_out_two_sided(g, u, v), cot))(g)
    assert_allclose(grad, project_out_two_sided(cot, u, v), atol=1e-6)  # Π is self-adjoint


def test_thin_svd_float32_reconstruction_and_signs():
    w = _normal(12, PM, PN).astype(jnp.bfloat16)
    u, s, vt = thin_svd(w)
    assert (u.dtype, s.dtype, vt.dtype) == (jnp.float32,) * 3
    assert u.shape == (PM, PN) and s.shape == (PN,) and vt.shape == (PN, PN)
    assert_allclose((u * s) @ vt, np.asarray(w, np.float32), atol=1e-5)
    assert np.all(np.diff(np.asarray(s)) <= 0)
    assert _eye_err(u) < 1e-5 and _eye_err(vt.T) < 1e-5
    pivots = np.take_along_axis(np.asarray(u), np.abs(np.asarray(u)).argmax(0)[None], 0)
    assert np.all(pivots > 0)
    u2, _, vt2 = thin_svd(-w)  # same singular subspaces, opposite signs: convention must fix U
    assert_allclose(u2, u, atol=1e-5)
    assert_allclose(vt2, -vt, atol=1e-5)


def test_thin_svd_vmap_over_layers():
    ws = _normal(13, 3, PM, PN)
    batched = jax.vmap(thin_svd)(ws)
    for i in range(3):
        for got, want in zip(batched, thin_svd(ws[i])):
            assert_allclose(got[i], want, atol=1e-5)


def test_orthonormal_basis_spans_input_with_fixed_signs():
    x = _normal(14, PM, PK)
    q = orthonormal_basis(x)
    assert _eye_err(q) < 1e-6
    assert_allclose(q @ (q.T @ x), x, atol=1e-5)
    r = np.asarray(q.T @ x)
    assert_allclose(np.tril(r, -1), 0, atol=1e-5)
    assert np.all(np.diag(r) > 0)


# --------------------------------------------------------------------------- jumprelu

EPS = 1e-3


def _deltas(seed: int, *shape: int, half_width: float = 0.02) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-half_width, half_width, size=shape), jnp.float32)


def test_gate_forward_is_symmetric_hard_threshold():
    d = _deltas(0, 16, 12)
    theta = 0.01
    out = np.asarray(gate(d, math.log(theta)))
    dn = np.asarray(d)
    assert_allclose(out, np.where(np.abs(dn) > np.float32(theta), dn, 0.0), atol=0)
    assert (out < 0).any() and (out > 0).any() and (out == 0).any()
    assert_allclose(out, gate_reference_numpy(d, math.log(theta), EPS, np.ones_like(dn))[0], atol=0)


def test_gate_hand_computed_gradients():
    theta = 0.01
    d = jnp.array([[0.0102, -0.0103], [0.5, 0.0098]], jnp.float32)
    g = jnp.array([[1.0, 2.0], [3.0, 4.0]], jnp.float32)
    gd, gl = jax.grad(lambda d, lt: jnp.vdot(gate(d, lt, EPS), g), (0, 1))(d, jnp.float32(math.log(theta)))
    assert_allclose(gd, [[1.0, 2.0], [3.0, 0.0]])
    # K((Δ−θ)/ε) fires at 0.0102 (g=1) and 0.0098 (g=4); K((−Δ−θ)/ε) at −0.0103 (g=2):
    # ∂L/∂θ = −(θ/ε)·[(1 + 4)/4 − 2/4] = −7.5;  ∂L/∂log θ = θ·(−7.5) = −0.075.
    assert_allclose(gl, -0.075, rtol=1e-4)


@pytest.mark.parametrize(
    "shape, log_threshold",
    [
        ((20, 30), math.log(0.01)),
        ((3, 20, 30), np.log(np.array([0.01, 0.012, 0.008]))[:, None, None]),
        ((3, 20, 30), math.log(0.01)),
    ],
    ids=["global-2d", "per-block", "global-stack"],
)
def test_gate_grads_match_numpy_oracle(shape, log_threshold):
    d = _deltas(1, *shape)
    cot = _normal(2, *shape)
    lt = jnp.asarray(log_threshold, jnp.float32)
    gd, gl = jax.grad(lambda d, lt: jnp.vdot(gate(d, lt, EPS), cot), (0, 1))(d, lt)
    out, want_d, want_l = gate_reference_numpy(d, np.asarray(lt), EPS, cot)
    assert_allclose(gate(d, lt, EPS), out, atol=0)
    assert_allclose(gd, want_d, atol=0)
    assert gl.shape == lt.shape
    assert np.abs(want_l).min() > 1e-7  # entries near ±θ exist: the threshold gradient is exercised
    assert_allclose(gl, want_l, rtol=1e-4)


def test_gate_small_threshold_uses_the_two_kernel_composition():
    theta = 2e-4  # θ < ε/2: both kernels fire near Δ = 0
    d = _deltas(3, 40, 40, half_width=1e-3)
    cot = _normal(4, 40, 40)
    gl = jax.grad(lambda lt: jnp.vdot(gate(d, lt, EPS), cot))(jnp.float32(math.log(theta)))
    _, _, want = gate_reference_numpy(d, math.log(theta), EPS, cot)
    assert_allclose(gl, want, rtol=1e-4)
    x, g = np.asarray(d, np.float64), np.asarray(cot, np.float64)
    rect = np.abs((np.abs(x) - theta) / EPS) < 0.5
    shorthand = theta * -(theta / EPS) * np.mean(np.sign(x) * rect * g)
    assert abs(shorthand - float(want)) > 1e-3 * abs(float(want))  # the spec's "≈" form is different


def test_gate_threshold_grad_is_mean_per_matrix_and_sum_over_matrices():
    d = _deltas(5, 20, 30)
    cot = _normal(6, 20, 30)
    lt = jnp.float32(math.log(0.01))

    @jax.jit
    def grad_log(d, cot):
        return jax.grad(lambda lt: jnp.vdot(gate(d, lt, EPS), cot))(lt)

    single = float(grad_log(d, cot))
    assert single != 0.0
    # a matrix made of two copies has the same mean, so the same threshold gradient
    assert_allclose(grad_log(jnp.concatenate([d, d]), jnp.concatenate([cot, cot])), single, rtol=1e-5)
    # two matrices sharing θ (stacked, or vmapped with an unbatched θ) add up
    pair, pair_cot = jnp.stack([d, d]), jnp.stack([cot, cot])
    stacked = grad_log(pair, pair_cot)
    vmapped = jax.jit(jax.grad(lambda lt: jnp.vdot(jax.vmap(gate, (0, None))(pair, lt), pair_cot)))
    assert_allclose(stacked, 2 * single, rtol=1e-5)
    assert_allclose(vmapped(lt), 2 * single, rtol=1e-5)


def test_gate_vmap_over_layers_and_jit_keep_dtype():
    d = _deltas(7, 3, 16, 12).astype(jnp.bfloat16)
    lts = jnp.log(jnp.array([0.005, 0.01, 0.015], jnp.float32))
    out = jax.jit(jax.vmap(gate))(d, lts)
    assert out.dtype == jnp.bfloat16
    for i in range(3):
        assert_allclose(np.asarray(out[i], np.float32), np.asarray(gate(d[i], lts[i]), np.float32), atol=0)
    grads = jax.jit(jax.grad(lambda lt: jnp.sum(jax.vmap(gate)(d, lt).astype(jnp.float32))))(lts)
    assert grads.shape == (3,) and grads.dtype == jnp.float32


def test_gate_rejects_threshold_that_would_enlarge_delta():
    with pytest.raises(ValueError):
        gate(jnp.ones((4, 5)), jnp.zeros((3, 4, 5)))
