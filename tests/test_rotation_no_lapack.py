"""Regression for the oliera-rot CPU deadlock (``experiments/repro_oliera_rot_hang.py``).

jaxlib 0.10.2's LAPACK FFI kernels (``lapack_sgetrf_ffi``, ``lapack_strsm_ffi``, from
``jax.scipy.linalg.expm`` / ``jnp.linalg.solve`` / ``inv``) block an XLA intra-op pool worker
while their batch chunks run on the same pool; two of them at once (the q and v rotations, each
vmapped over 30 layers) deadlocked the train step on a 2-core CPU. The hang itself needs free
cores and luck, so these tests check its cause, which is deterministic: the rotation kernels and
the compiled oliera-rot train step contain no LAPACK custom call. Plus accuracy checks of the
matmul-only replacements (``phi1`` by scaling and squaring, ``small_inverse`` by Gauss–Jordan).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from numpy.testing import assert_allclose

from jaxcl.batch import collate_train
from jaxcl.fit import default_optimizer, make_train_step
from jaxcl.methods import get_method
from jaxcl.models import llama
from kernels.lowrank_expm import apply_cayley_lowrank, apply_skew_lowrank_expm, phi1, small_inverse

CPU_ONLY = pytest.mark.skipif(jax.default_backend() != "cpu", reason="LAPACK custom calls are the CPU lowering")


def _lapack_calls(compiled_text: str) -> list[str]:
    return sorted({line.split('custom_call_target="')[1].split('"')[0]
                   for line in compiled_text.splitlines() if 'custom_call_target="lapack' in line})


@CPU_ONLY
@pytest.mark.parametrize("apply", [apply_skew_lowrank_expm, apply_cayley_lowrank], ids=["expm", "cayley"])
def test_rotation_kernel_grad_has_no_lapack_custom_call(apply):
    layers, n, m, r = 12, 32, 24, 4  # a batch > 8: the size at which jaxlib's LAPACK kernels go parallel
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    u = 0.3 * jax.random.normal(keys[0], (2, layers, n, r))  # two targets, like q_proj and v_proj
    v = 0.3 * jax.random.normal(keys[1], (2, layers, n, r))
    w = jax.random.normal(keys[2], (2, layers, n, m))

    def loss(u, v):
        return sum(jnp.sum(jax.vmap(apply)(u[t], v[t], w[t]) ** 2) for t in range(2))

    text = jax.jit(jax.grad(loss, (0, 1))).lower(u, v).compile().as_text()
    assert _lapack_calls(text) == []


@CPU_ONLY
def test_oliera_rot_train_step_has_no_lapack_custom_call():
    cfg = llama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, max_position_embeddings=64)
    params = llama.init_params(cfg, jax.random.PRNGKey(0))
    method = get_method("oliera-rot", rank=4)
    memory = method.init_memory(params)
    trainable = method.init(jax.random.PRNGKey(1), params, memory)
    tx = method.tx(default_optimizer(), memory)
    opt_state = tx.init(trainable)
    batch = collate_train([[5, 6, 7, 8]] * 2, [[9, 10]] * 2, pad_id=0)
    step = make_train_step(method, cfg, tx)
    text = step.lower(trainable, opt_state, params, memory, batch, 0, 1).compile().as_text()
    assert _lapack_calls(text) == []


def _phi1_reference(x: np.ndarray) -> np.ndarray:
    p = x.shape[-1]
    augmented = np.zeros((2 * p, 2 * p))
    augmented[:p, :p], augmented[:p, p:] = x, np.eye(p)
    return scipy.linalg.expm(augmented)[:p, p:]


def test_phi1_scaling_and_squaring_matches_float64_over_norms():
    rng = np.random.default_rng(0)
    r = 4
    j = np.block([[np.zeros((r, r)), np.eye(r)], [-np.eye(r), np.zeros((r, r))]])
    xs = []
    for scale in (0.0, 1e-4, 0.3, 1.0, 3.0, 10.0):  # ‖X‖₁ from 0 to ~1e3: 0 to ~8 doublings
        z = rng.normal(size=(24, 2 * r)) * scale / np.sqrt(24)
        xs.append(j @ z.T @ z)  # the X = J ZᵀZ of the rotation kernel
    xs.append(rng.normal(size=(2 * r, 2 * r)) * 3)  # a general (not skew-like) matrix
    xs = np.stack(xs).astype(np.float32)
    got = np.asarray(jax.jit(phi1)(xs), np.float64)  # leading batch axis
    for x, g in zip(xs.astype(np.float64), got):
        want = _phi1_reference(x)
        assert np.abs(g - want).max() <= 2e-6 * max(1.0, np.abs(want).max())
    assert_allclose(got[0], np.eye(2 * r), atol=0)  # φ1(0) = I exactly
    assert np.isnan(np.asarray(phi1(jnp.full((2, 2), 1e9)))).all()  # beyond the doubling budget: NaN, not junk


def test_small_inverse_pivots_and_matches_numpy():
    rng = np.random.default_rng(1)
    perm = np.eye(6)[[3, 0, 5, 1, 4, 2]]  # zero diagonal: needs pivoting
    for a in (perm, perm @ np.diag(np.arange(1.0, 7.0)), rng.normal(size=(8, 8))):
        got = np.asarray(jax.jit(small_inverse)(jnp.asarray(a, jnp.float32)), np.float64)
        assert_allclose(got, np.linalg.inv(a), atol=2e-5 * np.abs(np.linalg.inv(a)).max())
    a = jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)
    g = jax.jit(jax.grad(lambda a: jnp.sum(small_inverse(a) ** 2)))(a)
    h = jax.grad(lambda a: jnp.sum(jnp.linalg.inv(a) ** 2))(a)
    assert_allclose(g, h, rtol=1e-3, atol=1e-4)
