"""Read LLaMA-family weights from a Hugging Face folder or a GGUF file into jaxcl's params pytree.

Both readers build a dict of numpy arrays in PyTorch layout ``[d_out, d_in]`` keyed by the
Hugging Face tensor names (``model.layers.3.self_attn.q_proj.weight``), then one function,
``params_from_hf_tensors``, checks every tensor and stacks/transposes it into the layout of
``jaxcl.models.llama``. Nothing is returned until every tensor has been read and checked, so a
failed load never yields a half-loaded model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxcl.models.llama import LlamaConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

_LAYER_TENSORS = {
    # jaxcl leaf name -> HF module path under model.layers.{i}
    "input_layernorm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "post_attention_layernorm": "post_attention_layernorm",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (the message names the file and the tensor)."""


# ----------------------------------------------------------------------------- config


def config_from_hf_dict(cfg: dict[str, Any], source: str = "config.json") -> LlamaConfig:
    """LlamaConfig from a Hugging Face ``config.json`` dict (raises on unsupported features)."""
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if model_type not in ("llama", "mistral") and not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise CheckpointError(
            f"{source}: unsupported architecture {archs or model_type!r}; jaxcl supports "
            f"LLaMA-family decoders ({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported (LLaMA has no biases)")
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise CheckpointError(f"{source}: rope_scaling {scaling} is not supported yet")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rope_theta=float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None


# ----------------------------------------------------------------------------- HF -> pytree


def params_from_hf_tensors(config: LlamaConfig, tensors: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """Check and convert HF-named [d_out, d_in] tensors into the jaxcl params pytree (numpy)."""
    expected = config.param_shapes

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor '{name}' (expected shape {shape})")
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return np.asarray(t, dtype=np.float32)

    V, D = expected["embed_tokens"]
    params: dict[str, Any] = {
        "embed_tokens": take("model.embed_tokens.weight", (V, D)),
        "norm": take("model.norm.weight", (D,)),
        "layers": {},
    }
    for leaf, hf_name in _LAYER_TENSORS.items():
        shape = expected["layers"][leaf][1:]
        per_layer = []
        for i in range(config.num_layers):
            name = f"model.layers.{i}.{hf_name}.weight"
            if len(shape) == 2:  # linear: HF [d_out, d_in] -> jaxcl [d_in, d_out]
                per_layer.append(take(name, (shape[1], shape[0])).T)
            else:
                per_layer.append(take(name, shape))
        params["layers"][leaf] = np.ascontiguousarray(np.stack(per_layer))
    if not config.tie_word_embeddings:
        params["lm_head"] = np.ascontiguousarray(take("lm_head.weight", (V, D)).T)
    return params


def read_hf_folder(path: str | os.PathLike) -> tuple[LlamaConfig, dict[str, Any]]:
    """Config and params from a folder with ``config.json`` and ``*.safetensors`` (sharded ok)."""
    from safetensors.numpy import load_file

    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    config = config_from_hf_dict(cfg, str(cfg_path))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights found")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        f = folder / name
        if not f.is_file():
            raise FileNotFoundError(f"{f}: listed in the safetensors index but missing")
        for k, v in load_file(str(f)).items():
            tensors[k] = v.astype(np.float32) if v.dtype != np.float32 else v
    if "lm_head.weight" in tensors and config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    return config, params_from_hf_tensors(config, tensors, str(folder))


# ----------------------------------------------------------------------------- GGUF

# llama.cpp tensor names -> HF names (for blk.{i}.*, "{i}" is filled in)
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of Q/K weights ([d_out, d_in]).

    llama.cpp reorders each head's rows from the "rotate half" layout into interleaved pairs:
    permuted = w.reshape(n, 2, E/2, d_in).swapaxes(1, 2). The inverse (as transformers' GGUF
    loader does) is reshape(n, E/2, 2, d_in).swapaxes(1, 2).
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_field(reader, key: str, source: str, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise CheckpointError(f"{source}: GGUF metadata key '{key}' is missing")
        return default
    return field.contents()


def read_gguf(path: str | os.PathLike) -> tuple[LlamaConfig, dict[str, Any]]:
    """Config and params (dequantised to float32) from a llama-architecture GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    src = str(path)
    try:
        reader = gguf.GGUFReader(src)
    except Exception as e:  # the gguf package raises assorted errors on bad files
        raise CheckpointError(f"{src}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _gguf_field(reader, "general.architecture", src)
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(f"{src}: unsupported GGUF architecture {arch!r} (supported: llama)")
    n_heads = int(_gguf_field(reader, f"{arch}.attention.head_count", src))
    n_kv = int(_gguf_field(reader, f"{arch}.attention.head_count_kv", src, n_heads))
    hidden = int(_gguf_field(reader, f"{arch}.embedding_length", src))
    names = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise CheckpointError(f"{src}: missing tensor 'token_embd.weight'")
    vocab = int(names["token_embd.weight"].shape[-1])
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(_gguf_field(reader, f"{arch}.feed_forward_length", src)),
        num_layers=int(_gguf_field(reader, f"{arch}.block_count", src)),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=int(_gguf_field(reader, f"{arch}.attention.key_length", src, hidden // n_heads)),
        rope_theta=float(_gguf_field(reader, f"{arch}.rope.freq_base", src, 10000.0)),
        rms_norm_eps=float(_gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", src, 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_gguf_field(reader, f"{arch}.context_length", src, 2048)),
        bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id", src, None),
        eos_token_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id", src, None),
    )
    supported_types = {
        gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
        gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q5_0,
        gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_K,
        gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.Q8_K,
    }
    tensors: dict[str, np.ndarray] = {}
    for gguf_name, hf_name in _GGUF_NAMES.items():
        for i in range(config.num_layers) if "{i}" in gguf_name else [None]:
            name = gguf_name.format(i=i)
            if name not in names:
                continue  # params_from_hf_tensors reports what is missing
            t = names[name]
            if t.tensor_type not in supported_types:
                raise CheckpointError(
                    f"{src}: tensor '{name}' uses GGUF quantisation {t.tensor_type.name}, which jaxcl "
                    f"does not dequantise (supported: {', '.join(sorted(q.name for q in supported_types))})"
                )
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGML lists dims fastest-first
            if name.endswith("attn_q.weight"):
                w = unpermute_rotary_rows(w, n_heads)
            elif name.endswith("attn_k.weight"):
                w = unpermute_rotary_rows(w, n_kv)
            tensors[hf_name.format(i=i)] = w
    return config, params_from_hf_tensors(config, tensors, src)
