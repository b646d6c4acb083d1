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
