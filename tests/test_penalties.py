"""The penalty parts (O-LoRA, N-LoRA, ELLA): value = a direct numpy evaluation of the formula, written
in the specs' PyTorch layout (A: [r, d_in], B: [d_out, r]) so the jaxcl layout is checked too, and
gradient = finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxcl.core import Delta, Part, compose
from jaxcl.parts import (
    ella_penalty, l1_sparsity, lora, new_adapter_per_task, olora_orthogonality, orthogonal_to_past,
)

L, D_IN, R = 2, 6, 3
SHAPES = {"layers/q_proj": (D_IN, 6), "layers/v_proj": (D_IN, 4)}  # square and rectangular (GQA) modules
SCALE = 32.0 / 8


def _random_state(seed, dtype=np.float32, past_tasks=2, past_paths=("layers/q_proj", "layers/v_proj")):
    """(trainable, memory, deltas) as lora + new_adapter_per_task would hold them, with random values."""
    rng = np.random.default_rng(seed)
    trainable, past, deltas = {"lora": {}}, {}, {}
    for path, (d_in, d_out) in SHAPES.items():
        a, b = rng.normal(size=(L, d_in, R)), rng.normal(size=(L, R, d_out))
        trainable["lora"][path] = {"a": jnp.asarray(a, dtype), "b": jnp.asarray(b, dtype)}
        deltas[path] = {"current": Delta(jnp.asarray(a @ b, dtype), SCALE)}
        if path in past_paths:
            past[path] = {
                "a": jnp.asarray(rng.normal(size=(L, d_in, R * past_tasks)), dtype),
                "b": jnp.asarray(rng.normal(size=(L, R * past_tasks, d_out)), dtype),
                "delta": jnp.asarray(rng.normal(size=(L, d_in, d_out)), dtype),
            }
    return trainable, {"past": past}, deltas


def _pt(x):
    """jaxcl [..., m, n] -> PyTorch layout [..., n, m] (numpy)."""
    return np.swapaxes(np.asarray(x, np.float64), -1, -2)


def _penalty(part, trainable, memory, deltas):
    return {k: float(v) for k, v in part.penalty(None, trainable, memory, deltas, None).items()}


# ----------------------------------------------------------------------------- values vs numpy


@pytest.mark.parametrize("form", ["abs", "squared"])
def test_orthogonal_to_past_matches_numpy(form):
    trainable, memory, deltas = _random_state(0, past_paths=("layers/q_proj",))
    lam1, lam2 = 0.5, 0.3
    orth, l2 = 0.0, 0.0
    for path, ab in trainable["lora"].items():
        A_t, B_t = _pt(ab["a"]), _pt(ab["b"])  # [L, r, d_in], [L, d_out, r]
        for l in range(L):  # one module per layer, as the official code's nn.Module loop
            l2 += np.linalg.norm(A_t[l]) + np.linalg.norm(B_t[l])
            if path in memory["past"]:
                A_old = _pt(memory["past"][path]["a"])[l]  # [R_sum, d_in]
                o = A_old @ A_t[l].T  # torch.mm(lora_A, loranew_A.T)
                orth += np.abs(o).sum() if form == "abs" else (o**2).sum()
    got = _penalty(orthogonal_to_past(lam1, lam2, form), trainable, memory, deltas)
    assert got.keys() == {"orth", "l2"}
    np.testing.assert_allclose(got["orth"], lam1 * orth, rtol=1e-6)
    np.testing.assert_allclose(got["l2"], lam2 * l2, rtol=1e-6)
    # the plain function OLieRA reuses is the same number
    path = "layers/q_proj"
    np.testing.assert_allclose(
        float(olora_orthogonality(memory["past"][path]["a"], trainable["lora"][path]["a"], form)), orth, rtol=1e-6
    )


def test_orthogonal_to_past_is_zero_without_past_and_skips_l2_when_off():
    trainable, _, deltas = _random_state(1)
    got = _penalty(orthogonal_to_past(), trainable, {"past": {}}, deltas)
    assert got == {"orth": 0.0}


@pytest.mark.parametrize("form", ["code", "paper"])
def test_l1_sparsity_matches_numpy(form):
    trainable, memory, deltas = _random_state(2)
    lam = 0.4
    want = 0.0
    for path, ab in trainable["lora"].items():
        A_w, B_w = _pt(ab["a"]), _pt(ab["b"])  # loranew_A.weight [L, r, d_in], loranew_B.weight [L, d_out, r]
        if form == "code":
            n = max(A_w.shape[-1], B_w.shape[-2])  # zero-pad rectangular modules to square (our extension)
            A_p = np.zeros((L, R, n)); A_p[..., : A_w.shape[-1]] = A_w
            B_p = np.zeros((L, n, R)); B_p[:, : B_w.shape[-2]] = B_w
            want += np.abs(A_p @ B_p).sum()  # torch.norm(loranew_A.weight @ loranew_B.weight, p=1)
        else:
            want += np.abs(SCALE * B_w @ A_w).sum()  # ‖ΔW_t‖_1, ΔW_t = s·B A
    got = _penalty(l1_sparsity(lam, form), trainable, memory, deltas)
    np.testing.assert_allclose(got["l1"], lam * want, rtol=1e-6)


@pytest.mark.parametrize("scaled,reduction", [(True, "mean"), (False, "sum")])
def test_ella_penalty_matches_numpy(scaled, reduction):
    trainable, memory, deltas = _random_state(3, past_paths=("layers/v_proj",))
    lam = 3e4
    terms = []
    for path, ab in trainable["lora"].items():
        if path not in memory["past"]:
            continue
        dw = _pt(ab["a"] @ ab["b"])  # B A, [L, d_out, d_in]
        w_past = _pt(memory["past"][path]["delta"])  # scaled (sum of effective updates)
        if scaled:
            dw = SCALE * dw
        else:
            w_past = w_past / SCALE
        terms += [np.sum((dw[l] * w_past[l]) ** 2) for l in range(L)]
    want = np.mean(terms) if reduction == "mean" else np.sum(terms)
    got = _penalty(ella_penalty(lam, scaled, reduction), trainable, memory, deltas)
    np.testing.assert_allclose(got["ella"], lam * want, rtol=1e-6)
    assert _penalty(ella_penalty(), trainable, {"past": {}}, deltas) == {"ella": 0.0}


def test_ella_reads_the_gated_delta_not_a_at_b():
    """With a gate composed (it rewrites deltas[path]["current"]), ELLA penalises the gated update."""

    def hard_gate(params, trainable, memory, deltas, progress):  # stand-in for JumpLoRA's gate
        out = {}
        for path, src in deltas.items():
            cur = src["current"]
            out[path] = {**src, "current": Delta(jnp.where(jnp.abs(cur.raw) > 0.5, cur.raw, 0.0), cur.scale)}
        return out

    trainable, memory, _ = _random_state(4)
    lam = 2.0
    params = {"layers": {p: jnp.zeros((L, *s)) for p, s in SHAPES.items()}}
    method = compose(lora(rank=R, alpha=R * SCALE, targets=list(SHAPES)), new_adapter_per_task(),
                     Part("gate", delta=hard_gate), ella_penalty(lam))
    want = []
    for path, ab in trainable["lora"].items():
        raw = np.asarray(ab["a"] @ ab["b"])
        gated = SCALE * np.where(np.abs(raw) > 0.5, raw, 0.0)
        want += [np.sum((gated[l] * np.asarray(memory["past"][path]["delta"][l])) ** 2) for l in range(L)]
    got = method.penalty(params, trainable, memory)
    np.testing.assert_allclose(float(got["ella/ella"]), lam * np.mean(want), rtol=1e-6)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "part",
    [orthogonal_to_past(0.5, 0.3, "abs"), orthogonal_to_past(0.5, 0.0, "squared"), l1_sparsity(0.4, "code"),
     l1_sparsity(0.4, "paper"), ella_penalty(3.0)],
    ids=["olora-abs+l2", "olora-squared", "nlora-code", "nlora-paper", "ella"],
)
def test_penalty_gradients_match_finite_differences(part):
    with jax.enable_x64(True):
        trainable, memory, _ = _random_state(5, dtype=np.float64)

        def loss(tr):  # deltas recomputed from the trainable, as compose does
            deltas = {p: {"current": Delta(ab["a"] @ ab["b"], SCALE)} for p, ab in tr["lora"].items()}
            return sum(part.penalty(None, tr, memory, deltas, None).values())

        check_grads(loss, (trainable,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


def test_l2_gradient_is_finite_at_zero_b():
    """λ2·‖B_t‖_F at the zero-initialised B: gradient 0 (torch.norm's), not NaN."""
    trainable, memory, deltas = _random_state(6)
    trainable = {"lora": {p: {**ab, "b": jnp.zeros_like(ab["b"])} for p, ab in trainable["lora"].items()}}
    part = orthogonal_to_past(0.0, 1.0)
    g = jax.grad(lambda tr: part.penalty(None, tr, memory, deltas, None)["l2"])(trainable)
    for ab in g["lora"].values():
        assert np.all(np.isfinite(ab["a"])) and np.all(ab["b"] == 0)


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_and_missing_parts_raise():
    with pytest.raises(ValueError, match="form"):
        orthogonal_to_past(form="frobenius")
    with pytest.raises(ValueError, match="form"):
        l1_sparsity(form="dense")
    with pytest.raises(ValueError, match="reduction"):
        ella_penalty(reduction="max")
    with pytest.raises(ValueError, match="lam1"):
        orthogonal_to_past(lam1=-1.0)
    trainable, _, deltas = _random_state(7)
    with pytest.raises(ValueError, match="new_adapter_per_task"):
        orthogonal_to_past().penalty(None, trainable, {}, deltas, None)
    with pytest.raises(ValueError, match="lora"):
        ella_penalty().penalty(None, {}, {"past": {}}, deltas, None)
