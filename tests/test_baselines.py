"""The baseline presets (SeqFT, SeqLoRA, IncLoRA, O-LoRA, N-LoRA, ELLA, MTL) on tiny random models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.batch import collate_train
from jaxcl.core import Part, TaskInfo, compose
from jaxcl.fit import answer_logits, answer_loss, fit_task, method_loss
from jaxcl.methods import available_methods, get_method, method_defaults
from jaxcl.methods import RECOMMENDED_LR, recommended_learning_rate
from jaxcl.models import llama

PRESETS = ("seqft", "seqlora", "inclora", "olora", "nlora", "ella", "mtl")
SCALE = 32.0 / 8  # α / r of the presets

# two stacked layers, grouped-query attention: q_proj [2, 32, 32] is square, v_proj [2, 32, 16] is not
CFG2 = llama.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=16, scan_layers=False)
_logits2 = jax.jit(lambda params, batch: llama.apply(CFG2, params, batch["tokens"], batch["attention_mask"]))


@functools.lru_cache(maxsize=None)
def _params2():
    return llama.init_params(CFG2, jax.random.PRNGKey(0))


def _batch(seed=0, n=4, length=5):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(3, 40, size=length - 1)) for _ in range(n)]
    return collate_train(prompts, [[int(rng.integers(40, 48))] for _ in range(n)], pad_id=0)


def _randomise_b(trainable, seed):
    """A "trained" adapter: the same a, random non-zero b."""
    rng = np.random.default_rng(seed)
    lora = {p: {**ab, "b": jnp.asarray(0.1 * rng.normal(size=ab["b"].shape), ab["b"].dtype)}
            for p, ab in trainable["lora"].items()}
    return {**trainable, "lora": lora}


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_preset_and_rejects_unknown_names():
    assert set(PRESETS) <= set(available_methods())
    with pytest.raises(ValueError) as err:
        get_method("nope")
    for name in PRESETS:
        assert name in str(err.value)


def test_hyperparameter_overrides_and_recommended_lr():
    m = get_method("olora", lam1=2.0, rank=4)
    trainable = _randomise_b(m.init(jax.random.PRNGKey(0), _params2(), m.init_memory(_params2())), 1)
    assert trainable["lora"]["layers/q_proj"]["a"].shape == (2, 32, 4)
    assert [p.name for p in m.parts] == ["lora", "incremental", "orthogonal"]
    assert get_method("mtl").regime == "joint" and get_method("inclora").regime == "sequential"
    assert recommended_learning_rate("seqft", 0) == 1e-3 and recommended_learning_rate("seqft", 3) == 1e-4
    assert set(PRESETS) <= set(RECOMMENDED_LR)
    assert recommended_learning_rate("nope") is None
    with pytest.raises(ValueError, match="lamda"):
        get_method("olora", lamda=1.0)  # a misspelt hyper-parameter is an error, not ignored


def test_method_defaults_are_the_factories_keyword_defaults():
    assert method_defaults("olora")["lam1"] == 0.5 and method_defaults("olora")["rank"] == 8
    assert method_defaults("oliera")["lam"] == 0.5
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_defaults("nope")


# ----------------------------------------------------------------------------- LoRA algebra


def test_zero_b_leaves_logits_unchanged_and_effective_weight_is_w_plus_scaled_ab():
    params, batch = _params2(), _batch()
    m = get_method("olora")
    memory = m.init_memory(params)
    trainable = m.init(jax.random.PRNGKey(1), params, memory)
    base = _logits2(params, batch)
    eff = m.apply(params, trainable, memory, None)
    np.testing.assert_array_equal(_logits2(eff, batch), base)

    trainable = _randomise_b(trainable, 2)
    eff = m.apply(params, trainable, memory, None)
    for path in ("q_proj", "v_proj"):
        ab = trainable["lora"][f"layers/{path}"]
        np.testing.assert_array_equal(eff["layers"][path], params["layers"][path] + SCALE * (ab["a"] @ ab["b"]))
    for path in ("k_proj", "o_proj", "up_proj"):  # untargeted leaves are untouched
        assert eff["layers"][path] is params["layers"][path]
    assert not np.array_equal(_logits2(eff, batch), base)


def test_end_task_freezes_past_adapters_and_inference_sums_them():
    params, batch = _params2(), _batch()
    m = get_method("inclora")
    memory = m.init_memory(params)
    t1 = _randomise_b(m.init(jax.random.PRNGKey(1), params, memory), 3)  # "trained" task-1 adapter
    params, memory = m.end_task(params, t1, memory, TaskInfo(index=0))
    past = memory["past"]["layers/q_proj"]
    np.testing.assert_array_equal(past["a"], t1["lora"]["layers/q_proj"]["a"])

    params, memory = m.begin_task(params, memory, TaskInfo(index=1))
    t2 = m.init(jax.random.PRNGKey(2), params, memory)
    assert set(t2) == {"lora"} and t2["lora"]["layers/q_proj"]["a"].shape == (2, 32, 8)  # only the new adapter
    assert not np.array_equal(t2["lora"]["layers/q_proj"]["a"], past["a"])
    np.testing.assert_array_equal(t2["lora"]["layers/q_proj"]["b"], 0.0)

    t2 = _randomise_b(t2, 4)
    eff = m.apply(params, t2, memory, None)
    for path in ("q_proj", "v_proj"):
        ab1, ab2 = t1["lora"][f"layers/{path}"], t2["lora"][f"layers/{path}"]
        want = params["layers"][path] + SCALE * (ab1["a"] @ ab1["b"]) + SCALE * (ab2["a"] @ ab2["b"])
        np.testing.assert_allclose(eff["layers"][path], want, rtol=1e-6, atol=1e-7)


def test_a_user_part_composes_with_a_preset_and_adds_exactly_its_value():
    params, batch = _params2(), _batch()
    lam = 1.0

    def l2_penalty(params, trainable, memory, deltas, progress):
        return {"l2": lam * sum(jnp.sum(ab["b"] ** 2) for ab in trainable["lora"].values())}

    preset = get_method("olora")
    mine = compose(*preset.parts, Part("my_l2", penalty=l2_penalty))
    memory = preset.init_memory(params)
    memory = preset.end_task(params, _randomise_b(preset.init(jax.random.PRNGKey(0), params, memory), 5),
                             memory, TaskInfo(index=0))[1]  # a past, so O-LoRA's own term is non-zero
    trainable = _randomise_b(preset.init(jax.random.PRNGKey(1), params, memory), 6)
    loss0, aux0 = method_loss(preset, CFG2, trainable, params, memory, batch, None)
    loss1, aux1 = method_loss(mine, CFG2, trainable, params, memory, batch, None)
    value = l2_penalty(params, trainable, memory, None, None)["l2"]
    assert float(value) > 0 and float(aux0["orthogonal/orth"]) > 0
    assert float(aux1["my_l2/l2"]) == float(value)
    assert float(aux1["ce"]) == float(aux0["ce"]) and float(aux1["orthogonal/orth"]) == float(aux0["orthogonal/orth"])
    np.testing.assert_allclose(float(loss1 - loss0), float(value), rtol=1e-5)


# ----------------------------------------------------------------------------- a two-task toy stream
#
# One layer, hidden 32. Task 1 maps 6 tokens to answers 40/41, task 2 maps 6 other tokens to the new
# answers 42/43: both tasks compete for the output at the answer position, so training on task 2 alone
# pulls task-1 inputs towards 42/43. The input embeddings of the two tasks live in orthogonal
# coordinate blocks (dims 0-7 and 8-15; answers on 16-31), the setting O-LoRA's orthogonal-subspace
# argument is made for; prompts are a single token, so the v_proj adapter sees exactly the task's
# block. LoRA methods train with SGD + momentum (lr 0.5), SeqFT with lr 0.2 (full fine-tuning takes a
# smaller rate); 120 full-batch steps per task. (With AdamW the ordering held on only 3 of 4 seeds of
# this toy.) Every method reaches 100% on each task after training on it. Task-1 answer loss after
# task 2, seeds 0-7:
#     SeqLoRA 1.65 2.60 3.52 1.80 0.42 2.31 3.04 1.05     SeqFT 3.24 2.98 2.72 0.75 3.06 2.51 2.26 1.89
#     O-LoRA  0.27 0.08 0.12 0.03 0.02 0.77 0.12 0.01     (O-LoRA task-1 accuracy >= 5/6 on every seed)
# so the margin asserted below (0.3 nats) held on all eight; the test runs seed 0. (IncLoRA does as well
# as O-LoRA here: the toy separates the tasks' inputs by construction, so it does not rank the two.)

TOY = llama.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=1, head_dim=16, scan_layers=False)
TOY_STEPS = 120
T1_TOKENS, T2_TOKENS, ANSWERS = range(4, 10), range(10, 16), range(40, 48)
_toy_loss = jax.jit(functools.partial(answer_loss, TOY))
_toy_logits = jax.jit(functools.partial(answer_logits, TOY))


def _toy_params(seed):
    p = llama.init_params(TOY, jax.random.PRNGKey(seed))
    e = np.array(p["embed_tokens"]) * 30.0  # std 0.6: answer logits can move by several nats
    e[T1_TOKENS.start:T1_TOKENS.stop, 8:] = 0.0
    e[T2_TOKENS.start:T2_TOKENS.stop, :8] = 0.0
    e[T2_TOKENS.start:T2_TOKENS.stop, 16:] = 0.0
    e[ANSWERS.start:ANSWERS.stop, :16] = 0.0
    return {**p, "embed_tokens": jnp.asarray(e)}


def _toy_tasks(seed):
    rng = np.random.default_rng(seed)
    y1 = rng.permutation([40, 41] * 3)
    y2 = rng.permutation([42, 43] * 3)
    mk = lambda xs, ys: collate_train([[x] for x in xs], [[int(y)] for y in ys], pad_id=0)  # noqa: E731
    return mk(T1_TOKENS, y1), mk(T2_TOKENS, y2)


def _sgd(lr):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr, momentum=0.9))


def _model_after(method, params, memory):
    """The model a finished task leaves: apply with the next task's fresh trainable (zero for new
    adapters, the carried one for SeqLoRA, the merged weights for SeqFT)."""
    return method.apply(params, method.init(jax.random.PRNGKey(0), params, memory), memory, None)


@functools.lru_cache(maxsize=None)
def _run_toy(name, seed):
    """Train preset ``name`` on the toy stream; returns per-task metrics after each task and histories."""
    method = get_method(name)
    params = _toy_params(seed)
    b1, b2 = _toy_tasks(seed)
    opt = _sgd(0.2 if name == "seqft" else 0.5)
    stream = [b1, b2]
    if method.regime == "joint":  # what the engine does for MTL: one task of all tasks' data
        stream = [{k: np.concatenate([b1[k], b2[k]]) for k in b1}]
    memory = method.init_memory(params)
    evals, histories, memories = [], [], []
    for t, batch in enumerate(stream):
        task = TaskInfo(index=t, name=f"toy{t}", num_tasks=len(stream), config=TOY, num_steps=TOY_STEPS)
        out = fit_task(method, TOY, params, memory, [batch] * TOY_STEPS, opt, jax.random.PRNGKey(10 * seed + t), task)
        params, memory = out.params, out.memory
        eff = _model_after(method, params, memory)
        evals.append({
            f"t{i + 1}_{k}": v for i, b in enumerate((b1, b2)) for k, v in (
                ("loss", float(_toy_loss(eff, b))),
                ("acc", float(np.mean(np.argmax(_toy_logits(eff, b)[:, 0], -1) == b["target_ids"][:, 0]))),
            )
        })
        histories.append(out.history)
        memories.append(memory)
    return evals, histories, memories


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_the_toy_stream_with_finite_losses(name):
    evals, histories, _ = _run_toy(name, 0)
    assert len(histories) == (1 if name == "mtl" else 2)
    for h in histories:
        assert len(h) == TOY_STEPS and all(np.isfinite(s["loss"]) for s in h)
        assert h[-1]["ce"] < h[0]["ce"]  # it trains
    if name == "mtl":
        assert evals[0]["t1_acc"] == 1.0 and evals[0]["t2_acc"] == 1.0  # the joint upper bound learns both


def test_training_a_new_task_leaves_the_frozen_adapters_bit_identical():
    _, histories, (mem1, mem2) = _run_toy("inclora", 0)
    assert histories[1][0]["grad_norm"] > 0
    for path in ("layers/q_proj", "layers/v_proj"):
        old, new = mem1["past"][path], mem2["past"][path]
        np.testing.assert_array_equal(new["a"][..., :8], old["a"])
        np.testing.assert_array_equal(new["b"][..., :8, :], old["b"])
        assert new["a"].shape[-1] == 16
    # one-token prompts: q_proj gets no gradient (one key), v_proj carries both tasks' updates
    assert not np.array_equal(mem2["past"]["layers/v_proj"]["delta"], mem1["past"]["layers/v_proj"]["delta"])


def test_sequential_baselines_forget_task1_and_olora_keeps_it():
    seqlora, seqft, olora = (_run_toy(n, 0)[0] for n in ("seqlora", "seqft", "olora"))
    for evals in (seqlora, seqft, olora):
        assert evals[0]["t1_acc"] == 1.0  # task 1 is learnt first
        assert evals[1]["t2_acc"] == 1.0  # then task 2 (O-LoRA too: its retention is no failure to learn)
    for forgetful in (seqlora, seqft):
        assert forgetful[1]["t1_loss"] > forgetful[0]["t1_loss"] + 0.3
        assert forgetful[1]["t1_loss"] > olora[1]["t1_loss"] + 0.3
    assert olora[1]["t1_acc"] >= 0.8
