"""A shared prompt prefix run once per batch gives the same hidden states, loss, gradients and
greedy tokens as the full rows (``llama.prefix_cache``, ``jaxcl.batch.split_prefix``)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.batch import collate_train, shared_prefix_len, split_prefix
from jaxcl.engine import run_experiment
from jaxcl.fit import answer_loss
from jaxcl.models import llama
from tests.engine_helpers import tiny_config, tiny_model

CFG = llama.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, eos_token_id=2)
PREFIX = [5, 17, 33, 8, 41, 12, 9, 27, 30]  # 9 tokens, as a task's instruction head
RESTS = [[44, 3, 19, 51, 7], [22, 6], [38, 14, 57, 4, 11, 29, 13, 50]]
ANSWERS = [[15, 2], [16, 2], [15, 2]]


@pytest.fixture(scope="module")
def params():
    p = llama.init_params(CFG, jax.random.PRNGKey(3))
    # non-trivial norms so a wrong position or mask shows up beyond the first layer
    return jax.tree.map(lambda x: x * 1.7 if x.ndim <= 2 and x.shape[-1] == 32 else x, p)


def full_batch():
    return collate_train([PREFIX + r for r in RESTS], ANSWERS, pad_id=0, length=24, answer_len=2)


def test_hidden_states_after_a_shared_prefix_equal_the_full_rows(params):
    full = full_batch()
    split = split_prefix(full, len(PREFIX))
    P = len(PREFIX)
    h_full = llama.hidden_states(CFG, params, jnp.asarray(full["tokens"]), jnp.asarray(full["attention_mask"]))
    h_split = llama.hidden_states(CFG, params, jnp.asarray(split["tokens"]), jnp.asarray(split["attention_mask"]),
                                  prefix_P=jnp.asarray(split["prefix"]))
    assert h_split.shape == (3, 24 - P, 32)
    real = np.asarray(full["attention_mask"][:, P:]) > 0
    np.testing.assert_allclose(np.asarray(h_split)[real], np.asarray(h_full)[:, P:][real], atol=2e-5, rtol=2e-5)


def test_loss_and_gradients_equal_the_full_rows(params):
    full = full_batch()
    split = split_prefix(full, len(PREFIX))
    loss = jax.value_and_grad(lambda p, b: answer_loss(CFG, p, b))
    l_full, g_full = loss(params, jax.tree.map(jnp.asarray, full))
    l_split, g_split = loss(params, jax.tree.map(jnp.asarray, split))
    np.testing.assert_allclose(float(l_split), float(l_full), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_split), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_generation_after_a_shared_prefix_equals_the_full_prompts(params):
    # LEFT-padded prompts, as generate expects; the full prompts carry the prefix in every row
    def left_pad(rows, T):
        tokens = np.zeros((len(rows), T), np.int32)
        mask = np.zeros((len(rows), T), np.int32)
        for i, r in enumerate(rows):
            tokens[i, T - len(r):], mask[i, T - len(r):] = r, 1
        return jnp.asarray(tokens), jnp.asarray(mask)

    full_t, full_m = left_pad([PREFIX + r for r in RESTS], 20)
    rest_t, rest_m = left_pad(RESTS, 10)
    want = llama.generate_jit(CFG, params, full_t, full_m, 6)
    got = llama.generate_jit(CFG, params, rest_t, rest_m, 6, jnp.asarray(PREFIX, jnp.int32))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # and both equal the reference decoding that re-runs the whole forward each step
    np.testing.assert_array_equal(np.asarray(want), np.asarray(llama.generate_no_cache(CFG, params, full_t, full_m, 6)))


def test_shared_prefix_len_and_split_checks():
    prompts = [PREFIX + r for r in RESTS]
    assert shared_prefix_len(prompts) == len(PREFIX)
    assert shared_prefix_len(prompts, minimum=10) == 0  # too short to be worth a pass of its own
    assert shared_prefix_len([PREFIX, PREFIX + [4]], minimum=1) == len(PREFIX) - 1  # a token is left after it
    bad = full_batch()
    bad["tokens"][1, 3] = 60
    with pytest.raises(ValueError, match="row 1 does not start"):
        split_prefix(bad, len(PREFIX))
    short = collate_train([PREFIX, PREFIX + [4]], ANSWERS[:2], pad_id=0, length=14, answer_len=2)
    with pytest.raises(ValueError, match="inside the"):
        split_prefix(short, len(PREFIX))  # row 0's first answer token is predicted from the prefix's last


def test_engine_run_with_and_without_prefix_sharing_agree(tmp_path):
    model = tiny_model()
    shared = run_experiment(tiny_config(max_train=12), tmp_path / "shared", progress=False, model=model)
    plain = run_experiment(tiny_config(max_train=12, share_prefix=False), tmp_path / "plain", progress=False, model=model)
    np.testing.assert_array_equal(shared.R, plain.R)

    def steps(d):
        return [s for s in map(json.loads, (d / "log.jsonl").open()) if "loss" in s]

    # each task's common head (its instruction and options: 65 and 37 tokens, plus whatever all its
    # sentences share) was run once per batch, in the first run only
    first, second = sorted({s["shared_prefix"] for s in steps(shared.run_dir)})
    assert first >= 37 and second >= 65
    assert {s["shared_prefix"] for s in steps(plain.run_dir)} == {0}
    np.testing.assert_allclose([s["loss"] for s in steps(shared.run_dir)], [s["loss"] for s in steps(plain.run_dir)], rtol=1e-4)
