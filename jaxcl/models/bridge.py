"""Bring weights from another JAX model (e.g. a Flax NNX LLaMA) into jaxcl's params layout.

jaxcl's params are a plain pytree with layers stacked on a leading axis (see
``jaxcl.models.llama``). Most JAX/Flax LLaMA implementations keep a *list* of per-layer modules
whose ``Linear`` kernels are already ``[d_in, d_out]``. ``from_layer_list`` stacks such a tree
and checks every shape:

    >>> from flax import nnx
    >>> state = nnx.to_pure_dict(nnx.state(my_nnx_llama))        # nested dict of arrays
    >>> tree = {
    ...     "embed_tokens": state["embed"]["embedding"],
    ...     "norm": state["final_norm"]["scale"],
    ...     "layers": [{
    ...         "input_layernorm": l["attn_norm"]["scale"],
    ...         "q_proj": l["attn"]["q"]["kernel"], "k_proj": l["attn"]["k"]["kernel"],
    ...         "v_proj": l["attn"]["v"]["kernel"], "o_proj": l["attn"]["o"]["kernel"],
    ...         "post_attention_layernorm": l["mlp_norm"]["scale"],
    ...         "gate_proj": l["mlp"]["gate"]["kernel"], "up_proj": l["mlp"]["up"]["kernel"],
    ...         "down_proj": l["mlp"]["down"]["kernel"],
    ...     } for l in state["layers"].values()],
    ... }
    >>> params = from_layer_list(config, tree)

The renaming (left side) depends on the user's module names; the right side is fixed. Back the
other way, ``to_layer_list(params)`` unstacks jaxcl params (e.g. after a CL run) into the same
per-layer form, for ``nnx.update``-style loading into the user's model.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxcl.models.llama import LlamaConfig, check_params

LAYER_LEAVES = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
                "gate_proj", "up_proj", "down_proj")


def from_layer_list(config: LlamaConfig, tree: Mapping[str, Any]) -> dict[str, Any]:
    """jaxcl params from ``{"embed_tokens", "norm", ["lm_head"], "layers": [per-layer dict, ...]}``.

    Per-layer dicts hold the leaves of ``LAYER_LEAVES`` with linear kernels ``[d_in, d_out]``
    (Flax ``Linear``/``nnx.Linear`` convention). Raises ValueError naming a missing leaf, a layer
    count mismatch, or a shape mismatch (via ``check_params``).
    """
    layers: Sequence[Mapping[str, Any]] = tree["layers"]
    if len(layers) != config.num_layers:
        raise ValueError(f"got {len(layers)} layers, config has num_layers={config.num_layers}")
    for i, layer in enumerate(layers):
        missing = [k for k in LAYER_LEAVES if k not in layer]
        if missing:
            raise ValueError(f"layer {i} is missing {missing}")
    params = {
        "embed_tokens": jnp.asarray(tree["embed_tokens"]),
        "norm": jnp.asarray(tree["norm"]),
        "layers": {k: jnp.stack([jnp.asarray(l[k]) for l in layers]) for k in LAYER_LEAVES},
    }
    if not config.tie_word_embeddings:
        if "lm_head" not in tree:
            raise ValueError("config has untied embeddings but the tree has no 'lm_head' [D, V]")
        params["lm_head"] = jnp.asarray(tree["lm_head"])
    check_params(config, params)
    return params


def to_layer_list(params: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``from_layer_list``: per-layer dicts unstacked from the leading L axis."""
    L = params["layers"]["q_proj"].shape[0]
    out = {k: v for k, v in params.items() if k != "layers"}
    out["layers"] = [jax.tree.map(lambda a: a[i], dict(params["layers"])) for i in range(L)]
    return out
