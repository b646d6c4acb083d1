"""OLieRA (Hadamard Lie group) and its rotation variant: parts in `jaxcl.parts.lie`, presets `oliera`, `oliera-rot`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm
from numpy.testing import assert_allclose

import kernels
from jaxcl.batch import collate_train
from jaxcl.core import TaskInfo, deployed_params, get_path
from jaxcl.fit import default_optimizer, fit_task
from jaxcl.methods import get_method
from jaxcl.models import llama
from jaxcl.parts.lie import lie_pair_orthogonality
from jaxcl.parts.penalties import olora_orthogonality

CFG = llama.LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
    max_position_embeddings=64,
)
PARAMS = llama.init_params(CFG, jax.random.PRNGKey(0))
PATHS = ("layers/q_proj", "layers/v_proj")  # [2, 32, 32] and [2, 32, 16]
RANK, SCALE = 4, 32.0 / 4
STEPS = 50


def synthetic_task(task: int, steps: int = STEPS, batch: int = 8, distinct: int = 4) -> list[dict]:
    """``steps`` batches cycling over ``distinct`` fixed ones: answer = an affine map of 2 prompt tokens."""
    rng = np.random.default_rng(task)
    prompts = [rng.integers(3, 64, size=(batch, 5)) for _ in range(distinct)]
    batches = [collate_train(p.tolist(), ((p[:, :2] * (task + 3) + 7) % 61 + 3).tolist(), pad_id=0) for p in prompts]
    return [batches[i % distinct] for i in range(steps)]


def run_stream(name: str, lr: float = 1e-2, **hp):
    """Two tasks through ``fit_task``; returns the method and both FitResults."""
    method = get_method(name, rank=RANK, **hp)
    params, memory, results = PARAMS, method.init_memory(PARAMS), []
    for t in range(2):
        res = fit_task(method, CFG, params, memory, synthetic_task(t), default_optimizer(lr),
                       jax.random.PRNGKey(10 + t), TaskInfo(t, num_steps=STEPS))
        params, memory = res.params, res.memory
        results.append(res)
    return method, results


def assert_trained(results) -> None:
    for res in results:
        loss = np.array([h["loss"] for h in res.history])
        assert np.isfinite(loss).all()
        assert loss[-5:].mean() < loss[:5].mean() - 0.02, loss


def randomize_b(trainable: dict, seed: int, std: float = 0.1) -> dict:
    """A copy of ``trainable`` with every LoRA ``b`` drawn N(0, std²) (a trained-like adapter)."""
    rng = np.random.default_rng(seed)
    lora = {p: {"a": ab["a"], "b": jnp.asarray(rng.normal(0, std, ab["b"].shape), jnp.float32)}
            for p, ab in trainable["lora"].items()}
    return {**trainable, "lora": lora}


def dense_update(ab: dict) -> np.ndarray:
    return SCALE * np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64)


def taylor_np(x: np.ndarray, order: int | None) -> np.ndarray:
    if order is None:
        return np.exp(x)
    return sum(x**j / math.factorial(j) for j in range(order + 1))


@pytest.fixture(scope="module")
def oliera_stream():
    return run_stream("oliera")


@pytest.fixture(scope="module")
def rotation_stream():
    return run_stream("oliera-rot", lr=3e-2)  # large rotations


# ----------------------------------------------------------------------------- OLieRA


@pytest.mark.parametrize("order", [None, 1, 2, 3])
def test_effective_weight_is_w_times_exp_of_summed_updates(order):
    method = get_method("oliera", rank=RANK, order=order)
    memory = method.init_memory(PARAMS)
    first = randomize_b(method.init(jax.random.PRNGKey(1), PARAMS, memory), 1)
    _, memory = method.end_task(PARAMS, first, memory, TaskInfo(0))
    second = randomize_b(method.init(jax.random.PRNGKey(2), PARAMS, memory), 2)
    eff = method.apply(PARAMS, second, memory)
    for path in PATHS:
        w = np.asarray(get_path(PARAMS, path), np.float64)
        delta = dense_update(first["lora"][path]) + dense_update(second["lora"][path])
        assert np.abs(delta).max() > 0.3  # the higher Taylor terms matter
        assert_allclose(get_path(eff, path), w * taylor_np(delta, order), rtol=2e-5, atol=1e-8)
    assert_allclose(eff["layers"]["k_proj"], PARAMS["layers"]["k_proj"])  # untargeted leaves untouched


def test_two_tasks_train_and_deploy_w_times_exp_of_all_updates(oliera_stream):
    method, results = oliera_stream
    assert_trained(results)
    final = results[-1]
    assert final.params is PARAMS or all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(final.params), jax.tree.leaves(PARAMS)))
    deployed = deployed_params(method, final.params, final.memory)
    for path in PATHS:
        delta = sum(dense_update(res.trainable["lora"][path]) for res in results)
        w = np.asarray(get_path(PARAMS, path), np.float64)
        assert_allclose(get_path(deployed, path), w * taylor_np(delta, 2), rtol=2e-5, atol=1e-8)
        assert_allclose(final.memory["past"][path]["delta"], delta, rtol=1e-4, atol=1e-6)


def test_fresh_adapter_leaves_logits_unchanged():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)
    logits = jax.jit(llama.apply, static_argnums=0)
    base = logits(CFG, PARAMS, tokens)
    for name in ("oliera", "oliera-rot"):
        method = get_method(name, rank=RANK)
        memory = method.init_memory(PARAMS)
        eff = method.apply(PARAMS, method.init(jax.random.PRNGKey(3), PARAMS, memory), memory)
        assert_allclose(logits(CFG, eff, tokens), base, rtol=1e-6, atol=1e-6)


def _orth_setup(num_past: int = 2):
    """Memory with ``num_past`` random finished tasks and a random current task (oliera, rank 4)."""
    method = get_method("oliera", rank=RANK)
    memory = method.init_memory(PARAMS)
    for t in range(num_past):
        done = randomize_b(method.init(jax.random.PRNGKey(20 + t), PARAMS, memory), 20 + t)
        _, memory = method.end_task(PARAMS, done, memory, TaskInfo(t))
    current = randomize_b(method.init(jax.random.PRNGKey(30), PARAMS, memory), 30)
    return memory, current


def _split(x: np.ndarray, axis: int) -> list[np.ndarray]:
    return np.split(np.asarray(x, np.float64), x.shape[axis] // RANK, axis=axis)


def orthogonality_np(memory, current, form: str, squared: bool) -> float:
    """The dense formula, per layer and past task, in float64."""
    total = 0.0
    for path in PATHS:
        past = memory["past"][path]
        d_t = dense_update(current["lora"][path])
        for a_i, b_i in zip(_split(past["a"], -1), _split(past["b"], -2)):
            d_i = dense_update({"a": a_i, "b": b_i})
            ones = np.ones_like(d_t)
            m = d_i.swapaxes(-1, -2) @ d_t if form == "centred" else (ones + d_i).swapaxes(-1, -2) @ (ones + d_t)
            sq = np.sum(m * m, axis=(-2, -1))
            total += float(np.sum(sq if squared else np.sqrt(sq)))
    return total


@pytest.mark.parametrize("form,squared", [("centred", True), ("centred", False), ("literal", True), ("literal", False)])
def test_orthogonality_equals_dense_formula(form, squared):
    memory, current = _orth_setup()
    method = get_method("oliera", rank=RANK, lam=0.7, form=form, squared=squared)
    value = method.penalty(PARAMS, current, memory)["lie_orth/orth"]
    assert_allclose(value, 0.7 * orthogonality_np(memory, current, form, squared), rtol=2e-5)


def test_orthogonality_olora_form_and_first_task():
    memory, current = _orth_setup()
    method = get_method("oliera", rank=RANK, form="olora")
    expected = sum(olora_orthogonality(memory["past"][p]["a"], current["lora"][p]["a"]) for p in PATHS)
    assert_allclose(method.penalty(PARAMS, current, memory)["lie_orth/orth"], 0.5 * expected, rtol=1e-6)
    empty = method.init_memory(PARAMS)
    assert float(method.penalty(PARAMS, current, empty)["lie_orth/orth"]) == 0.0


@pytest.mark.parametrize("form", ["centred", "literal"])
def test_orthogonality_gradients_match_dense_autodiff(form):
    memory, current = _orth_setup()
    method = get_method("oliera", rank=RANK, lam=1.0, form=form)

    def dense(trainable):  # the formula on dense float32 matrices (d_out×d_out products)
        total = 0.0
        for path in PATHS:
            past, ab = memory["past"][path], trainable["lora"][path]
            d_t = SCALE * ab["a"] @ ab["b"]
            for i in range(past["a"].shape[-1] // RANK):
                sl = slice(i * RANK, (i + 1) * RANK)
                d_i = SCALE * past["a"][..., sl] @ past["b"][..., sl, :]
                if form == "literal":
                    d_i, d_t_ = 1.0 + d_i, 1.0 + d_t
                else:
                    d_t_ = d_t
                total = total + jnp.sum(jnp.square(jnp.swapaxes(d_i, -1, -2) @ d_t_))
        return total

    got = jax.grad(lambda t: method.penalty(PARAMS, t, memory)["lie_orth/orth"])(current)["lora"]
    want = jax.grad(dense)(current)["lora"]
    for path in PATHS:
        for k in ("a", "b"):
            scale = float(jnp.abs(want[path][k]).max())
            assert scale > 0
            assert_allclose(got[path][k], want[path][k], rtol=1e-3, atol=1e-4 * scale)


def test_centred_orthogonality_is_zero_for_orthogonal_input_subspaces():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(32, 2 * RANK)))
    a_old, a_new = jnp.asarray(q[None, :, :RANK], jnp.float32), jnp.asarray(q[None, :, RANK:], jnp.float32)
    b_old, b_new = (jnp.asarray(rng.normal(size=(1, RANK, 16)), jnp.float32) for _ in range(2))
    assert float(lie_pair_orthogonality(a_old, b_old, a_new, b_new, "centred")[0, 0]) < 1e-10
    assert float(lie_pair_orthogonality(a_old, b_old, a_old, b_new, "centred")[0, 0]) > 1.0


# ----------------------------------------------------------------------------- rotation variant


def _random_rotation(method, seed: int, std: float = 0.3):
    trainable = method.init(jax.random.PRNGKey(seed), PARAMS, method.init_memory(PARAMS))
    rng = np.random.default_rng(seed)
    rot = {p: {k: jnp.asarray(rng.normal(0, std, x.shape), jnp.float32) for k, x in uv.items()}
           for p, uv in trainable["rotation"].items()}
    return {**trainable, "rotation": rot}


def test_rotation_effective_weight_is_expm_times_w():
    for side in ("in", "out"):
        method = get_method("oliera-rot", rank=3, side=side)
        trainable = _random_rotation(method, 4)
        eff = jax.jit(method.apply)(PARAMS, trainable, method.init_memory(PARAMS))
        for path in PATHS:
            w, uv = np.asarray(get_path(PARAMS, path), np.float64), trainable["rotation"][path]
            for layer in range(CFG.num_layers):
                s = np.asarray(kernels.skew_from_lowrank(uv["u"][layer], uv["v"][layer]), np.float64)
                assert np.abs(s).max() > 0.5 and np.allclose(s, -s.T)
                want = expm(s) @ w[layer] if side == "in" else w[layer] @ expm(s).T  # dense n×n oracle
                assert_allclose(get_path(eff, path)[layer], want, rtol=1e-4, atol=1e-6)


def test_rotation_stays_orthogonal_and_composes_over_two_tasks(rotation_stream):
    method, results = rotation_stream
    assert_trained(results)
    final = results[-1]
    deployed = deployed_params(method, final.params, final.memory)
    for path in PATHS:
        for layer in range(CFG.num_layers):
            rot = np.eye(32)
            for res in results:  # R = exp(S_2) exp(S_1)
                uv = res.trainable["rotation"][path]
                assert float(jnp.abs(kernels.skew_from_lowrank(uv["u"][layer], uv["v"][layer])).max()) > 0.01
                rot = np.asarray(kernels.skew_lowrank_expm(uv["u"][layer], uv["v"][layer]), np.float64) @ rot
            assert np.abs(rot.T @ rot - np.eye(32)).max() < 1e-5
            w0 = np.asarray(get_path(PARAMS, path)[layer], np.float64)
            w_final = np.asarray(get_path(final.params, path)[layer], np.float64)
            assert_allclose(w_final, rot @ w0, atol=1e-6)
            assert_allclose(w_final.T @ w_final, w0.T @ w0, atol=1e-7)  # the Gram matrix is preserved
        assert_allclose(get_path(deployed, path), get_path(final.params, path), atol=1e-7)
        assert final.memory["rotation_past"][path]["z"].shape == (CFG.num_layers, 32, 2 * 2 * RANK)


def test_rotation_orthogonality_penalty_is_olora_on_generators():
    method = get_method("oliera-rot", rank=RANK, lam=2.0)
    memory = method.init_memory(PARAMS)
    _, memory = method.end_task(PARAMS, _random_rotation(method, 6), memory, TaskInfo(0))
    current = _random_rotation(method, 7)
    expected = 0.0
    for path in PATHS:
        z_old = memory["rotation_past"][path]["z"]
        z_new = jnp.concatenate([current["rotation"][path]["u"], current["rotation"][path]["v"]], -1)
        expected += float(jnp.sum(jnp.square(jnp.swapaxes(z_old, -1, -2) @ z_new)))
    assert_allclose(method.penalty(PARAMS, current, memory)["rotation_orth/orth"], 2.0 * expected, rtol=1e-5)
