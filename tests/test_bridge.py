"""A Flax NNX LLaMA-style model's state handed to jaxcl gives the same logits as its own forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcl.models import llama
from jaxcl.models.bridge import from_layer_list, to_layer_list

CFG = llama.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, tie_word_embeddings=False, rope_theta=10000.0)


class Block(nnx.Module):
    def __init__(self, rngs):
        D, HE, KE, F = 32, 32, 16, 48
        lin = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)
        self.attn_norm = nnx.Param(1.0 + 0.1 * jax.random.normal(rngs.params(), (D,)))
        self.q, self.k, self.v, self.o = lin(D, HE), lin(D, KE), lin(D, KE), lin(HE, D)
        self.mlp_norm = nnx.Param(1.0 + 0.1 * jax.random.normal(rngs.params(), (D,)))
        self.gate, self.up, self.down = lin(D, F), lin(D, F), lin(F, D)


class TinyNNXLlama(nnx.Module):
    """An NNX model with the user's own names; its forward is jaxcl's math written over NNX modules."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(61, 32, rngs=rngs)
        self.blocks = nnx.List([Block(rngs) for _ in range(2)])
        self.final_norm = nnx.Param(jnp.ones((32,)))
        self.head = nnx.Linear(32, 61, use_bias=False, rngs=rngs)

    def __call__(self, tokens):
        B, T = tokens.shape
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        allowed = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
        x = self.embed(tokens)
        for b in self.blocks:
            h = llama.rms_norm(x, b.attn_norm[...], CFG.rms_norm_eps)
            q = llama.rope(b.q(h).reshape(B, T, 4, 8), pos, CFG.rope_theta)
            k = llama.rope(b.k(h).reshape(B, T, 2, 8), pos, CFG.rope_theta)
            x = x + b.o(llama.attention(q, k, b.v(h).reshape(B, T, 2, 8), allowed))
            h = llama.rms_norm(x, b.mlp_norm[...], CFG.rms_norm_eps)
            x = x + b.down(jax.nn.silu(b.gate(h)) * b.up(h))
        return self.head(llama.rms_norm(x, self.final_norm[...], CFG.rms_norm_eps))


def _to_tree(state):
    return {
        "embed_tokens": state["embed"]["embedding"],
        "norm": state["final_norm"],
        "lm_head": state["head"]["kernel"],
        "layers": [{
            "input_layernorm": l["attn_norm"], "q_proj": l["q"]["kernel"], "k_proj": l["k"]["kernel"],
            "v_proj": l["v"]["kernel"], "o_proj": l["o"]["kernel"], "post_attention_layernorm": l["mlp_norm"],
            "gate_proj": l["gate"]["kernel"], "up_proj": l["up"]["kernel"], "down_proj": l["down"]["kernel"],
        } for _, l in sorted(state["blocks"].items())],
    }


def test_nnx_state_to_jaxcl_logits():
    model = TinyNNXLlama(nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 9)), jnp.int32)
    params = from_layer_list(CFG, _to_tree(nnx.to_pure_dict(nnx.state(model))))
    np.testing.assert_allclose(np.asarray(llama.apply(CFG, params, tokens)), np.asarray(model(tokens)),
                               rtol=1e-5, atol=1e-5)
    back = to_layer_list(params)
    np.testing.assert_array_equal(np.asarray(back["layers"][1]["q_proj"]), np.asarray(model.blocks[1].q.kernel[...]))


def test_bridge_errors_name_the_problem():
    tree = _to_tree(nnx.to_pure_dict(nnx.state(TinyNNXLlama(nnx.Rngs(0)))))
    bad = {**tree, "layers": tree["layers"][:1]}
    with pytest.raises(ValueError, match="got 1 layers"):
        from_layer_list(CFG, bad)
    bad = {**tree, "layers": [dict(tree["layers"][0]), tree["layers"][1]]}
    del bad["layers"][0]["v_proj"]
    with pytest.raises(ValueError, match=r"layer 0 is missing \['v_proj'\]"):
        from_layer_list(CFG, bad)
    bad = {**tree, "lm_head": tree["lm_head"][:, :5]}
    with pytest.raises(ValueError, match=r"'lm_head' has shape \(32, 5\), expected \(32, 61\)"):
        from_layer_list(CFG, bad)
