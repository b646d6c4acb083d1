"""JumpLoRA's JumpReLU gate (`jaxcl.parts.gates`) and the presets jumplora, jumplora+ella, jumplora+olora."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from test_oliera import CFG, PARAMS, PATHS, RANK, SCALE, assert_trained, randomize_b, run_stream  # shared tiny setup

from kernels import gate_reference_numpy
from jaxcl.core import Progress, TaskInfo, get_path
from jaxcl.methods.jumplora import with_gate
from jaxcl.parts.gates import INITIAL_LOG_THRESHOLD, interpolation_factor, interpolation_window

N_LORA = CFG.num_layers * RANK * ((32 + 32) + (32 + 16))  # Σ_m r(d_in + d_out) over q_proj, v_proj layers


def gated_method(threshold="global", bandwidth=1e-3, base="inclora", penalty_threshold_grad=False):
    return with_gate(base, "test", rank=RANK, threshold=threshold, bandwidth=bandwidth,
                     penalty_threshold_grad=penalty_threshold_grad)


def raw_updates(trainable) -> dict[str, np.ndarray]:
    return {p: np.asarray(ab["a"] @ ab["b"], np.float64) for p, ab in trainable["lora"].items()}


def block_log_thresholds(raws, threshold: str) -> np.ndarray:
    """log of the median |raw| (over everything, or per layer): many entries sit near θ."""
    flat = np.concatenate([np.abs(r).reshape(CFG.num_layers, -1) for r in raws.values()], axis=1)
    return np.log(np.median(flat) if threshold == "global" else np.median(flat, axis=1)).astype(np.float32)


def with_median_threshold(trainable, threshold: str = "global"):
    """``trainable`` with log θ at the median |raw| (see ``block_log_thresholds``), and that log θ."""
    log_th = block_log_thresholds(raw_updates(trainable), threshold)
    return {**trainable, "gate": {"log_threshold": jnp.asarray(log_th)}}, log_th


def as_broadcast(log_th: np.ndarray) -> np.ndarray:
    return log_th if log_th.ndim == 0 else log_th[:, None, None]


# ----------------------------------------------------------------------------- schedule


def test_interpolation_window_equals_python_int_inside_jit():
    window = jax.jit(lambda s: interpolation_window(s, (0.2, 0.8)))
    for total in range(0, 400):
        k0, k1 = window(total)
        assert (int(k0), int(k1)) == (int(0.2 * total), int(0.8 * total)), total


def test_interpolation_factor_at_the_step_boundaries():
    f = jax.jit(lambda step: interpolation_factor(Progress(step, 100)))  # k0 = 20, k1 = 80
    expected = {0: 0.0, 19: 0.0, 20: 0.0, 21: 1 / 60, 50: 0.5, 79: 59 / 60, 80: 1.0, 99: 1.0}
    for step, want in expected.items():
        assert_allclose(float(f(step)), want, rtol=1e-6, atol=0)
    assert float(interpolation_factor(None)) == 1.0
    assert float(interpolation_factor(Progress(3, 4))) == 1.0  # k0 = 0, k1 = 3: f(i) = i/3
    assert_allclose(float(interpolation_factor(Progress(1, 4))), 1 / 3, rtol=1e-6)


# ----------------------------------------------------------------------------- gate forward / gradients


@pytest.mark.parametrize("penalty_threshold_grad", [False, True])
@pytest.mark.parametrize("threshold", ["global", "per_block"])
def test_gate_forward_and_gradients_through_the_part(threshold, penalty_threshold_grad):
    bandwidth, progress, f = 0.02, Progress(50, 100), 0.5
    method = gated_method(threshold, bandwidth, penalty_threshold_grad=penalty_threshold_grad)
    memory = method.init_memory(PARAMS)
    fresh = method.init(jax.random.PRNGKey(0), PARAMS, memory)
    trainable, log_th = with_median_threshold(randomize_b(fresh, 0), threshold)
    raws = raw_updates(trainable)
    rng = np.random.default_rng(1)
    cot = {p: rng.normal(size=raws[p].shape) for p in PATHS}

    def loss(t):
        eff = method.apply(PARAMS, t, memory, progress)
        return sum(jnp.sum(jnp.asarray(cot[p], jnp.float32) * get_path(eff, p)) for p in PATHS)

    eff = method.apply(PARAMS, trainable, memory, progress)
    grads = jax.grad(loss)(trainable)
    want_log = np.zeros(np.shape(as_broadcast(log_th)))
    for p in PATHS:
        gated, _, g_log = gate_reference_numpy(raws[p], as_broadcast(log_th), bandwidth, SCALE * f * cot[p])
        mixed = f * gated + (1 - f) * raws[p]
        assert 0.2 < np.mean(gated == 0) < 0.8
        assert_allclose(get_path(eff, p), np.asarray(get_path(PARAMS, p)) + SCALE * mixed, rtol=1e-5, atol=1e-7)
        want_log = want_log + g_log
        g_raw = SCALE * (f * (np.abs(raws[p]) > np.exp(as_broadcast(log_th))) + (1 - f)) * cot[p]
        a, b = (np.asarray(trainable["lora"][p][k], np.float64) for k in ("a", "b"))
        assert_allclose(grads["lora"][p]["a"], g_raw @ b.swapaxes(-1, -2), rtol=1e-4, atol=1e-5)
        assert_allclose(grads["lora"][p]["b"], a.swapaxes(-1, -2) @ g_raw, rtol=1e-4, atol=1e-5)
    got_log = grads["gate"]["log_threshold"]
    assert got_log.shape == np.shape(log_th) and np.all(np.abs(want_log) > 1e-6)
    assert_allclose(got_log, want_log.reshape(np.shape(log_th)), rtol=1e-4)


@pytest.mark.parametrize("penalty_threshold_grad", [False, True])
def test_ella_penalty_trains_threshold_only_when_asked(penalty_threshold_grad):
    method = gated_method(bandwidth=0.02, base="ella", penalty_threshold_grad=penalty_threshold_grad)
    memory = method.init_memory(PARAMS)
    done = randomize_b(method.init(jax.random.PRNGKey(2), PARAMS, memory), 2)
    _, memory = method.end_task(PARAMS, done, memory, TaskInfo(0))
    trainable, _ = with_median_threshold(randomize_b(method.init(jax.random.PRNGKey(3), PARAMS, memory), 3))
    grad = jax.grad(lambda t: method.penalty(PARAMS, t, memory, Progress(50, 100))["ella/ella"])(trainable)
    assert float(jnp.abs(grad["lora"]["layers/q_proj"]["b"]).max()) > 0
    assert (float(jnp.abs(grad["gate"]["log_threshold"])) > 0) == penalty_threshold_grad  # repo: hard mask


# ----------------------------------------------------------------------------- threshold init


@pytest.mark.parametrize("threshold", ["global", "per_block"])
def test_threshold_init_at_k0_keeps_the_lora_parameter_count(threshold):
    method = gated_method(threshold)
    memory = method.init_memory(PARAMS)
    trainable = randomize_b(method.init(jax.random.PRNGKey(4), PARAMS, memory), 4)
    post = jax.jit(lambda t, step: method.post_update(PARAMS, t, memory, Progress(step, 100)))  # k0 = 20
    for step in (18, 20, 50):
        assert_allclose(post(trainable, step)["gate"]["log_threshold"], INITIAL_LOG_THRESHOLD)
    initialised = post(trainable, 19)  # after the update of the repo's step k = k0 = 20
    theta = np.exp(np.asarray(initialised["gate"]["log_threshold"], np.float64))
    gated = method.deltas(PARAMS, initialised, memory, None)  # f = 1: the gate as the model applies it
    kept = sum(np.count_nonzero(np.asarray(gated[p]["current"].raw).reshape(CFG.num_layers, -1), axis=1)
               for p in PATHS)
    # global (repo): the (N − N_lora + 1)-th smallest |Δ| leaves N_lora − 1 entries strictly above θ; per
    # block: the (N_l − N_lora,l)-th leaves N_lora,l. The float32 exp(log θ) round trip may keep the entry at θ.
    if threshold == "global":
        assert theta.shape == () and N_LORA - 1 <= kept.sum() <= N_LORA, kept
    else:
        assert theta.shape == (CFG.num_layers,) and np.all(np.abs(kept - N_LORA // CFG.num_layers) <= 1), kept


# ----------------------------------------------------------------------------- task end, report, presets


def test_task_end_stores_the_sparse_update_and_reports_it():
    method = gated_method()
    memory = method.init_memory(PARAMS)
    trainable, log_th = with_median_threshold(randomize_b(method.init(jax.random.PRNGKey(5), PARAMS, memory), 5))
    _, after = method.end_task(PARAMS, trainable, memory, TaskInfo(0))
    zeros = entries = 0
    for p, raw in raw_updates(trainable).items():
        want = SCALE * raw * (np.abs(raw) > np.exp(log_th))  # f = 1 at the task end
        assert_allclose(after["past"][p]["delta"], want, rtol=1e-5, atol=1e-8)
        zeros, entries = zeros + np.sum(want == 0), entries + want.size
    report = method.report(PARAMS, trainable, after)
    assert_allclose(report["gate/sparsity"], zeros / entries, rtol=1e-6)
    assert report["gate/kept"] == entries - zeros and report["gate/lora_params"] == N_LORA
    assert_allclose(report["gate/threshold"], np.exp(log_th), rtol=1e-5)
    assert set(report) >= {f"gate/sparsity/{p}" for p in PATHS}


@pytest.mark.parametrize("name", ["jumplora", "jumplora+ella", "jumplora+olora"])
def test_preset_runs_two_tasks_and_merges_sparse_updates(name):
    method, results = run_stream(name)
    assert [p.name for p in method.parts][:2] == ["lora", "gate"]
    assert_trained(results)
    past = None
    for res in results:
        theta = float(jnp.exp(res.trainable["gate"]["log_threshold"]))
        assert theta != pytest.approx(np.exp(INITIAL_LOG_THRESHOLD))  # initialised at k0, then learned
        raw = raw_updates(res.trainable)["layers/q_proj"]
        gated = SCALE * raw * (np.abs(raw) > theta)
        past = gated if past is None else past + gated
        report = method.report(res.params, res.trainable, res.memory)
        assert 0.0 < report["gate/sparsity"] < 1.0 and report["gate/kept"] > 0
    assert_allclose(results[-1].memory["past"]["layers/q_proj"]["delta"], past, rtol=1e-4, atol=1e-7)
