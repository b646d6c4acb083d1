"""jaxcl's LLaMA against transformers' PyTorch implementation on the same weights."""

import numpy as np
import pytest
import torch

import jaxcl
from jaxcl.models import llama
from tests.conftest import tiny_hf_llama


def _positions(mask):
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


@pytest.mark.parametrize("tie,heads,kv_heads", [(False, 4, 2), (True, 4, 4), (False, 4, 1)])
def test_logits_match_transformers(tmp_path, tie, heads, kv_heads):
    hf = tiny_hf_llama(tmp_path, tie=tie, heads=heads, kv_heads=kv_heads)
    m = jaxcl.load_pretrained(tmp_path)
    assert m.config.tie_word_embeddings == tie and m.config.num_kv_heads == kv_heads
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 97, size=(3, 11)).astype(np.int32)
    # row 0: full; row 1: right padding; row 2: left padding
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0
    mask[2, :4] = 0
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(_positions(mask), dtype=torch.long),
        ).logits.numpy()
    got = np.asarray(m(tokens, mask))
    real = mask.astype(bool)
    scale = np.abs(ref[real]).max()
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-4 * scale)
    # and without a mask
    with torch.no_grad():
        ref_full = hf(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(m(tokens)), ref_full, rtol=1e-4, atol=1e-4 * scale)


def test_unrolled_layers_equal_scan(tmp_path):
    tiny_hf_llama(tmp_path)
    m = jaxcl.load_pretrained(tmp_path)
    cfg = m.config.__class__(**{**m.config.__dict__, "scan_layers": False})
    tokens = np.arange(3, 15, dtype=np.int32)[None]
    np.testing.assert_allclose(
        np.asarray(llama.apply(cfg, m.params, tokens)), np.asarray(m(tokens)), rtol=1e-5, atol=1e-5
    )


def test_kv_cache_generation_equals_no_cache(tmp_path):
    tiny_hf_llama(tmp_path, seed=3)
    m = jaxcl.load_pretrained(tmp_path)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    tokens, mask = jaxcl.models.left_pad(prompts)
    cached = np.asarray(m.generate_tokens(tokens, mask, 12))
    plain = np.asarray(llama.generate_no_cache(m.config, m.params, tokens, mask, 12))
    np.testing.assert_array_equal(cached, plain)
    # a left-padded row generates what it generates alone
    alone = np.asarray(m.generate_tokens(np.array([prompts[1]], np.int32), np.ones((1, 2), np.int32), 12))
    np.testing.assert_array_equal(cached[1], alone[0])


def test_causal_block_attention_equals_full_attention():
    """Query blocks against their key prefix only (``causal_attention``) give ``attention``'s rows,
    with and without a key offset (a prefill into a longer cache), for every real query row."""
    rng = np.random.default_rng(0)
    B, T, H, K, E, extra = 2, 11, 4, 2, 8, 3
    q = rng.normal(size=(B, T, H, E)).astype(np.float32)
    k = rng.normal(size=(B, T + extra, K, E)).astype(np.float32)
    v = rng.normal(size=(B, T + extra, K, E)).astype(np.float32)
    key_mask = np.ones((B, T + extra), bool)
    key_mask[1, :4] = False  # left padding of row 1
    key_mask[:, T:] = False  # cache columns not written yet
    allowed = np.tril(np.ones((T, T + extra), bool))[None] & key_mask[:, None, :]
    full = np.asarray(llama.attention(q, k, v, allowed))
    for block in (1, 4, 5, 11, 128):
        got = np.asarray(llama.causal_attention(q, k, v, allowed, block=block))
        np.testing.assert_allclose(got[0], full[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1, 4:], full[1, 4:], rtol=1e-5, atol=1e-6)
    # queries that start at key 3 (key_offset): query i sees keys [0, 3 + i]
    allowed_off = np.tril(np.ones((T, T + extra), bool), k=3)[None] & np.ones((B, 1, T + extra), bool)
    full_off = np.asarray(llama.attention(q, k, v, allowed_off))
    got_off = np.asarray(llama.causal_attention(q, k, v, allowed_off, key_offset=3, block=4))
    np.testing.assert_allclose(got_off, full_off, rtol=1e-5, atol=1e-6)


def test_small_attention_blocks_match_transformers(tmp_path, monkeypatch):
    """The model with 4-token query blocks (T = 11: blocks 4, 4, 3) against transformers, and its
    cached generation (a blocked prefill) against the no-cache decoder."""
    hf = tiny_hf_llama(tmp_path, heads=4, kv_heads=2, seed=5)
    m = jaxcl.load_pretrained(tmp_path)
    monkeypatch.setattr(llama, "ATTENTION_BLOCK", 4)
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 97, size=(2, 11)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :5] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(_positions(mask), dtype=torch.long)).logits.numpy()
    got = np.asarray(llama.apply(m.config, m.params, tokens, mask))  # eager: traced with the small block
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-4 * np.abs(ref[real]).max())
    cached = np.asarray(llama.generate(m.config, m.params, tokens, mask, 6))
    plain = np.asarray(llama.generate_no_cache(m.config, m.params, tokens, mask, 6))
    np.testing.assert_array_equal(cached, plain)


def _low_rank_split(w, c):
    """``LowRank`` whose dense form is ``w``: the bottom ``c`` singular triplets form (u, s, v)."""
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    u_low, s_low, v_low = u[..., -c:], s[..., -c:], np.swapaxes(vt, -1, -2)[..., -c:]
    high = w - np.einsum("...ic,...c,...oc->...io", u_low, s_low, v_low)
    f32 = lambda a: np.asarray(a, np.float32)
    return llama.LowRank(f32(high), f32(u_low), f32(s_low), f32(v_low))


def test_low_rank_weights_run_as_their_dense_form(tmp_path):
    """A ``LowRank`` leaf (thin path ``x @ high + ((x @ u) ⊙ s) @ vᵀ``) gives the logits, the factor
    gradients and the greedy tokens of its dense form ``high + u diag(s) vᵀ``."""
    import jax

    tiny_hf_llama(tmp_path, heads=4, kv_heads=2, seed=7)
    m = jaxcl.load_pretrained(tmp_path)
    layers = m.params["layers"]
    factored = {**m.params, "layers": {**layers, "q_proj": _low_rank_split(layers["q_proj"], 3),
                                       "down_proj": _low_rank_split(layers["down_proj"], 2)}}
    dense = {**m.params, "layers": {**layers, **{k: factored["layers"][k].dense() for k in ("q_proj", "down_proj")}}}
    tokens = np.random.default_rng(2).integers(3, 97, size=(2, 9)).astype(np.int32)
    want = np.asarray(llama.apply(m.config, m.params, tokens))
    np.testing.assert_allclose(np.asarray(llama.apply(m.config, factored, tokens)), want, rtol=1e-4, atol=1e-4)

    def loss(factors, through_dense):
        w = llama.LowRank(*factors)
        p = {**m.params, "layers": {**layers, "q_proj": w.dense() if through_dense else w}}
        return (llama.apply(m.config, p, tokens)[:, -1] ** 2).mean()

    factors = tuple(factored["layers"]["q_proj"])
    g_thin = jax.grad(loss)(factors, False)
    g_dense = jax.grad(loss)(factors, True)
    for a, b in zip(g_thin, g_dense):
        scale = np.abs(np.asarray(b)).max()
        assert scale > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_array_equal(np.asarray(llama.generate(m.config, factored, tokens, np.ones_like(tokens), 5)),
                                  np.asarray(llama.generate(m.config, dense, tokens, np.ones_like(tokens), 5)))
