"""A LLaMA-family decoder as pure functions over a plain params pytree.

One file, no framework: ``apply(config, params, tokens, attention_mask) -> logits``.

Shapes use one-letter names:
    B batch, T query length, S key length (= T, or the cache length),
    D hidden size, F MLP size, V vocabulary,
    L layers, H query heads, K key/value heads, G = H // K (heads per KV group), E head dim.

Params pytree (float arrays; weights stored ``[d_in, d_out]`` so a linear layer is ``x @ W``;
per-layer weights are stacked on a leading ``L`` axis and the layers run under ``jax.lax.scan``):

    {
      "embed_tokens": [V, D],
      "layers": {
        "input_layernorm": [L, D],
        "q_proj": [L, D, H*E], "k_proj": [L, D, K*E], "v_proj": [L, D, K*E], "o_proj": [L, H*E, D],
        "post_attention_layernorm": [L, D],
        "gate_proj": [L, D, F], "up_proj": [L, D, F], "down_proj": [L, F, D],
      },
      "norm": [D],
      "lm_head": [D, V],          # only when tie_word_embeddings is False
    }

Leaf names follow the Hugging Face module names, so adapters target modules by path
("layers/q_proj"). The model never changes: CL methods transform this pytree. A linear weight
may also be a ``LowRank(high, u, s, v)`` (``W = high + u diag(s) vᵀ``, run without forming W).

Math per layer (pre-norm):
    h = x + o_proj(attn(rope(q_proj(n1(x))), rope(k_proj(n1(x))), v_proj(n1(x))))
    y = h + down_proj(silu(gate_proj(n2(h))) * up_proj(n2(h)))
with n(x) = w * x / sqrt(mean(x²) + eps) (RMSNorm in float32), rotary embeddings in the
"rotate half" layout of transformers (inv_freq_i = theta^(-2i/E)), causal grouped-query
attention with a key-padding mask, and logits = norm(x_L) @ lm_head (or @ embed_tokensᵀ).

Shared prefix: when every row of a batch starts with the same P tokens (a task's instruction
head), ``hidden_states`` and ``generate`` take them once as ``prefix_P`` and the rows without
them: training packs [prefix; rows] into one sequence of P + B·T' tokens whose rows attend to the
prefix keys/values broadcast (``packed_prefix_attention``); ``generate`` fills the prefix's cache
columns once (``prefix_cache``). A step costs P + B·T' tokens instead of B·(P + T'); the math is the
same as on the full rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Params = dict[str, Any]

_NEG_INF = -1e30  # finite, so a fully masked (padding) query row gives a uniform softmax, not NaN
ATTENTION_BLOCK = 64  # query block of ``causal_attention`` (longer sequences skip future key blocks)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Static hyper-parameters (hashable: usable as a static jit argument)."""

    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # K
    head_dim: int  # E
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    scan_layers: bool = True  # lax.scan over the stacked layers (fast compile) or an unrolled loop

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def param_shapes(self) -> dict[str, Any]:
        """The expected shape of every params leaf (the pytree layout in the module docstring)."""
        L, D, F, V = self.num_layers, self.hidden_size, self.intermediate_size, self.vocab_size
        HE, KE = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        shapes = {
            "embed_tokens": (V, D),
            "layers": {
                "input_layernorm": (L, D),
                "q_proj": (L, D, HE),
                "k_proj": (L, D, KE),
                "v_proj": (L, D, KE),
                "o_proj": (L, HE, D),
                "post_attention_layernorm": (L, D),
                "gate_proj": (L, D, F),
                "up_proj": (L, D, F),
                "down_proj": (L, F, D),
            },
            "norm": (D,),
        }
        if not self.tie_word_embeddings:
            shapes["lm_head"] = (D, V)
        return shapes


def init_params(config: LlamaConfig, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random params (normal, std 0.02; norms at 1) with the layout of ``config.param_shapes``."""
    shapes = config.param_shapes
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
    out = []
    for k, shape, path in zip(keys, leaves, paths):
        if "norm" in path:
            out.append(jnp.ones(shape, dtype))
        else:
            out.append((0.02 * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def check_params(config: LlamaConfig, params: Params) -> None:
    """Raise ValueError naming the first missing/unexpected leaf or shape mismatch."""
    expected = config.param_shapes
    for name, shape in _flat(expected).items():
        got = _flat(params).get(name)
        if got is None:
            raise ValueError(f"params is missing the tensor '{name}' (expected shape {shape})")
        if tuple(got.shape) != tuple(shape):
            raise ValueError(f"tensor '{name}' has shape {tuple(got.shape)}, expected {tuple(shape)}")
    extra = set(_flat(params)) - set(_flat(expected))
    if extra:
        raise ValueError(f"params has unexpected tensors: {sorted(extra)}")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, name + "/"))
        else:
            out[name] = v
    return out


# ----------------------------------------------------------------------------- blocks


class LowRank(NamedTuple):
    """A linear weight in factorised form, ``W = high + u diag(s) vᵀ``, applied without forming W.

    ``high: [..., d_in, d_out]``, ``u: [..., d_in, c]``, ``s: [..., c]``, ``v: [..., d_out, c]``
    (leading axes: the stacked layers). ``linear`` computes ``x @ high + ((x @ u) ⊙ s) @ vᵀ``:
    2·N·c·(d_in + d_out) FLOPs for the low part on N tokens, instead of d_in·d_out·c to rebuild W
    every step (the thin path of OSFT's factorised form, ``experiments/bench_osft.py``).
    """

    high: jax.Array
    u: jax.Array
    s: jax.Array
    v: jax.Array

    def dense(self) -> jax.Array:
        """``high + u diag(s) vᵀ``: ``[..., d_in, d_out]``."""
        return self.high + (self.u * self.s[..., None, :]) @ jnp.swapaxes(self.v, -1, -2)


def linear(x_BTI: jax.Array, w: jax.Array | LowRank) -> jax.Array:
    """``x @ W`` for a dense ``W: [I, O]`` or a ``LowRank`` one (thin low-rank path).

    The leading axes are flattened first (``[B·T, I] @ [I, O]``): the weight gradient is then
    one 2-D matmul ``xᵀ dy``; with a 3-D ``x`` XLA's CPU backend copies ``dy`` into a transposed
    layout first, which slowed every weight gradient (full fine-tuning, OSFT, LoRA's merged ΔW).
    """
    lead = x_BTI.shape[:-1]
    x_NI = x_BTI.reshape(-1, x_BTI.shape[-1])
    if isinstance(w, LowRank):
        y_NO = x_NI @ w.high + ((x_NI @ w.u) * w.s) @ jnp.swapaxes(w.v, -1, -2)
    else:
        y_NO = x_NI @ w
    return y_NO.reshape(*lead, y_NO.shape[-1])


def rms_norm(x_BTD: jax.Array, w_D: jax.Array, eps: float) -> jax.Array:
    """w * x / sqrt(mean(x², -1) + eps), computed in float32, returned in x's dtype."""
    x32 = x_BTD.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (w_D * y.astype(x_BTD.dtype)).astype(x_BTD.dtype)


def rope(x_BTNE: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, transformers' "rotate half" layout: x·cos + rotate_half(x)·sin."""
    E = x_BTNE.shape[-1]
    inv_freq_E2 = 1.0 / (theta ** (jnp.arange(0, E, 2, dtype=jnp.float32) / E))
    angles_BTE2 = positions_BT[..., None].astype(jnp.float32) * inv_freq_E2
    angles_BTE = jnp.concatenate([angles_BTE2, angles_BTE2], axis=-1)
    cos, sin = jnp.cos(angles_BTE)[:, :, None, :], jnp.sin(angles_BTE)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNE.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_BTNE.astype(jnp.float32) * cos + rotated * sin).astype(x_BTNE.dtype)


def _grouped(q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array):
    """Queries scaled by 1/√E as [B, K, G, T, E]; keys/values as [B, K, S, E] (heads major)."""
    B, T, H, E = q_BTHE.shape
    K = k_BSKE.shape[2]
    q_BKGTE = (q_BTHE.reshape(B, T, K, H // K, E) / math.sqrt(E)).astype(q_BTHE.dtype).transpose(0, 2, 3, 1, 4)
    return q_BKGTE, k_BSKE.transpose(0, 2, 1, 3), v_BSKE.transpose(0, 2, 1, 3)


def _attend(q_BKGTE: jax.Array, k_BKSE: jax.Array, v_BKSE: jax.Array, allowed_BTS: jax.Array) -> jax.Array:
    """softmax(q kᵀ masked) v for pre-scaled grouped queries; [B, K, G, T, E].

    Each KV group's G·T query rows run as one matmul against its S keys (batch axes B, K)."""
    B, K, G, T, E = q_BKGTE.shape
    S = k_BKSE.shape[2]
    scores_BKXS = jnp.einsum("bkxe,bkse->bkxs", q_BKGTE.reshape(B, K, G * T, E), k_BKSE)
    scores_BKGTS = jnp.where(allowed_BTS[:, None, None], scores_BKXS.reshape(B, K, G, T, S).astype(jnp.float32), _NEG_INF)
    probs_BKXS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSE.dtype).reshape(B, K, G * T, S)
    probs_BKXS = checkpoint_name(probs_BKXS, "attention_probs")
    return jnp.einsum("bkxs,bkse->bkxe", probs_BKXS, v_BKSE).reshape(B, K, G, T, E)


@functools.partial(
    jax.checkpoint, static_argnums=(4, 5, 6), policy=jax.checkpoint_policies.save_only_these_names("attention_probs")
)
def _attend_block(q_BKGTE, k_BKSE, v_BKSE, allowed_BTS, start: int, end: int, keys: int) -> jax.Array:
    """``_attend`` of query rows [start, end) against keys [0, keys); [B, K, G, end - start, E].

    Rematerialised except for the softmax output: the backward pass keeps the probabilities and
    re-slices the queries, keys and values from the whole arrays (which every block shares)
    instead of storing each block's key prefix as a residual; a causal loop over T = 512 in blocks
    of 64 would otherwise store 4.5 copies of k and v per layer (a training step's XLA temporaries
    for SmolLM2-135M at 4 × 512: −17–21%, ``experiments/bench_methods.py --memory``; no slower)."""
    return _attend(q_BKGTE[:, :, :, start:end], k_BKSE[:, :, :keys], v_BKSE[:, :, :keys], allowed_BTS[:, start:end, :keys])


def _ungrouped(o_BKGTE: jax.Array) -> jax.Array:
    """[B, K, G, T, E] → [B, T, H·E] (head h = k·G + g, as the query heads were split)."""
    B, K, G, T, E = o_BKGTE.shape
    return o_BKGTE.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G * E)


def attention(
    q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, allowed_BTS: jax.Array
) -> jax.Array:
    """Grouped-query softmax attention; ``allowed`` is the boolean causal+padding mask. [B, T, H·E]."""
    return _ungrouped(_attend(*_grouped(q_BTHE, k_BSKE, v_BSKE), allowed_BTS))


def causal_attention(
    q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, allowed_BTS: jax.Array,
    key_offset: int = 0, block: int | None = None,
) -> jax.Array:
    """``attention`` under a causal mask, skipping key blocks that lie wholly in the future.

    Query rows [i, i + b) (b = ``block``, default ``ATTENTION_BLOCK``) can only attend to keys
    [0, key_offset + i + b), so each query block is run against that key prefix alone: at T = 512
    and b = 64 this skips 7/16 of the score matrix and its softmax (the backward's largest
    memory-bound tensors). The heads-major layout is made once, outside the block loop. Real
    query rows get the same result as ``attention`` (a masked score adds exp(-1e30 - max) = 0);
    fully masked padding rows give different finite garbage. ``key_offset`` is the static
    position of query 0 among the keys (0 without a cache).
    """
    b = block or ATTENTION_BLOCK
    T, S = q_BTHE.shape[1], k_BSKE.shape[1]
    q_BKGTE, k_BKSE, v_BKSE = _grouped(q_BTHE, k_BSKE, v_BSKE)
    outs = []
    for start in range(0, T, b):
        end = min(start + b, T)
        keys = min(key_offset + end, S)
        outs.append(_attend_block(q_BKGTE, k_BKSE, v_BKSE, allowed_BTS, start, end, keys))
    return _ungrouped(jnp.concatenate(outs, axis=3))


def packed_prefix_attention(
    q_1NHE: jax.Array, k_1NKE: jax.Array, v_1NKE: jax.Array, allowed_RTS: jax.Array, P: int, R: int
) -> jax.Array:
    """Attention over a packed sequence N = P + R·T: a prefix of P tokens attends causally to
    itself; each of the R rows of T tokens attends to the whole prefix and causally to its own
    tokens (``allowed_RTS`` [R, T, P + T]: the rows' mask over [prefix keys; own keys]). The
    prefix keys/values are broadcast to the rows, never copied per row in the packed sequence.
    Returns [1, N, H·E], the same as attention over the R full rows [prefix; row]."""
    _, N, H, E = q_1NHE.shape
    T = (N - P) // R
    out_1PX = causal_attention(q_1NHE[:, :P], k_1NKE[:, :P], v_1NKE[:, :P], jnp.tril(jnp.ones((P, P), bool))[None])

    def rows(x_1NXE):
        return x_1NXE[0, P:].reshape(R, T, *x_1NXE.shape[2:])

    def with_prefix(x_1NKE):
        return jnp.concatenate([jnp.broadcast_to(x_1NKE[:, :P], (R, P) + x_1NKE.shape[2:]), rows(x_1NKE)], axis=1)

    out_RTX = causal_attention(rows(q_1NHE), with_prefix(k_1NKE), with_prefix(v_1NKE), allowed_RTS, key_offset=P)
    return jnp.concatenate([out_1PX, out_RTX.reshape(1, R * T, H * E)], axis=1)


def mlp(x_BTD: jax.Array, layer: Params) -> jax.Array:
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""
    return linear(jax.nn.silu(linear(x_BTD, layer["gate_proj"])) * linear(x_BTD, layer["up_proj"]), layer["down_proj"])


def decoder_layer(
    config: LlamaConfig,
    layer: Params,
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    allowed_BTS: jax.Array,
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    packed_prefix: tuple[int, int] | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One pre-norm block; returns (x, keys/values). With ``kv_cache`` ([B, S, K, E] each) the new
    keys/values are written at ``cache_index``, attention runs over the whole cache and the updated
    cache is returned; otherwise the returned keys/values are this call's [B, T, K, E].

    ``packed_prefix = (P, R)``: ``x`` is [1, P + R·T', D], a shared prefix of P tokens followed by R
    rows of T' tokens, packed so that every projection and the MLP run as one matmul over all
    tokens; attention is ``packed_prefix_attention`` (``allowed`` is then the rows' [R, T', P + T'])."""
    B, T, _ = x_BTD.shape
    H, K, E = config.num_heads, config.num_kv_heads, config.head_dim
    with jax.named_scope("attention"):
        h_BTD = rms_norm(x_BTD, layer["input_layernorm"], config.rms_norm_eps)
        q_BTHE = rope(linear(h_BTD, layer["q_proj"]).reshape(B, T, H, E), positions_BT, config.rope_theta)
        k_BTKE = rope(linear(h_BTD, layer["k_proj"]).reshape(B, T, K, E), positions_BT, config.rope_theta)
        v_BTKE = linear(h_BTD, layer["v_proj"]).reshape(B, T, K, E)
        if kv_cache is not None:
            k_cache, v_cache = kv_cache
            k_BSKE = jax.lax.dynamic_update_slice(k_cache, k_BTKE.astype(k_cache.dtype), (0, cache_index, 0, 0))
            v_BSKE = jax.lax.dynamic_update_slice(v_cache, v_BTKE.astype(v_cache.dtype), (0, cache_index, 0, 0))
            kv_cache = (k_BSKE, v_BSKE)
        else:
            k_BSKE, v_BSKE = k_BTKE, v_BTKE
        if packed_prefix is not None:
            attended = packed_prefix_attention(q_BTHE, k_BSKE, v_BSKE, allowed_BTS, *packed_prefix)
        elif kv_cache is None or isinstance(cache_index, int):  # no cache, or a prefill at a static index
            attended = causal_attention(q_BTHE, k_BSKE, v_BSKE, allowed_BTS, key_offset=cache_index or 0)
        else:  # a decoding step: T is 1
            attended = attention(q_BTHE, k_BSKE, v_BSKE, allowed_BTS)
        x_BTD = x_BTD + linear(attended, layer["o_proj"])  # heads flattened: [B, T, H·E]
    with jax.named_scope("mlp"):
        x_BTD = x_BTD + mlp(rms_norm(x_BTD, layer["post_attention_layernorm"], config.rms_norm_eps), layer)
    return x_BTD, kv_cache if kv_cache is not None else (k_BTKE, v_BTKE)


# ----------------------------------------------------------------------------- forward


def default_positions(attention_mask_BT: jax.Array) -> jax.Array:
    """Position of each token among the real tokens of its row (works for left and right padding)."""
    return jnp.maximum(jnp.cumsum(attention_mask_BT, axis=-1) - 1, 0).astype(jnp.int32)


def _run_layers(config, params, x_BTD, positions_BT, allowed_BTS, cache=None, cache_index=None, packed_prefix=None):
    """All layers: plain (or packed, see ``decoder_layer``), or over a KV ``cache`` (returned updated)."""
    layers = params["layers"]
    if cache is None:
        def body(x, layer):
            return decoder_layer(config, layer, x, positions_BT, allowed_BTS, packed_prefix=packed_prefix)[0], None

        if config.scan_layers:
            x_BTD, _ = jax.lax.scan(body, x_BTD, layers)
        else:
            for i in range(config.num_layers):
                x_BTD, _ = body(x_BTD, jax.tree.map(lambda a: a[i], layers))
        return x_BTD, None

    def body_cached(x, layer_and_cache):
        layer, k, v = layer_and_cache
        x, (k, v) = decoder_layer(config, layer, x, positions_BT, allowed_BTS, (k, v), cache_index)
        return x, (k, v)

    x_BTD, (k_LBSKE, v_LBSKE) = jax.lax.scan(body_cached, x_BTD, (layers, cache["k"], cache["v"]))
    return x_BTD, {"k": k_LBSKE, "v": v_LBSKE}


def _attention_inputs(tokens_BT, attention_mask_BT=None, positions_BT=None):
    """(mask [B, T], positions [B, T], allowed [B, T, T]: causal and not a padding key)."""
    B, T = tokens_BT.shape
    if attention_mask_BT is None:
        attention_mask_BT = jnp.ones((B, T), jnp.int32)
    if positions_BT is None:
        positions_BT = default_positions(attention_mask_BT)
    allowed_BTS = jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask_BT[:, None, :].astype(bool)
    return attention_mask_BT, positions_BT, allowed_BTS


def hidden_states(
    config: LlamaConfig,
    params: Params,
    tokens_BT: jax.Array,
    attention_mask_BT: jax.Array | None = None,
    positions_BT: jax.Array | None = None,
    prefix_P: jax.Array | None = None,
) -> jax.Array:
    """Final normed hidden states [B, T, D] (before the output projection).

    ``attention_mask`` is 1 for real tokens and 0 for padding (left or right). Padded query
    rows produce finite garbage that callers must ignore. With ``prefix_P`` (int32 [P], tokens
    that precede every row at positions 0..P-1), ``tokens_BT`` are the rows after that prefix, at
    positions P + their own: the result equals the last T columns of the run on the full rows
    ``[prefix, row]``, computed with the prefix once (packed: ``packed_prefix_attention``).
    """
    if prefix_P is not None:
        if positions_BT is not None:
            raise ValueError("hidden_states: positions_BT cannot be given with prefix_P (rows start at position P)")
        return _hidden_states_after_prefix(config, params, prefix_P, tokens_BT, attention_mask_BT)
    attention_mask_BT, positions_BT, allowed_BTS = _attention_inputs(tokens_BT, attention_mask_BT, positions_BT)
    x_BTD = params["embed_tokens"][tokens_BT]
    x_BTD, _ = _run_layers(config, params, x_BTD, positions_BT, allowed_BTS)
    return rms_norm(x_BTD, params["norm"], config.rms_norm_eps)


def prefix_keys_values(config: LlamaConfig, params: Params, prefix_P: jax.Array) -> dict[str, jax.Array]:
    """Per-layer keys/values {"k", "v"}: [L, 1, P, K, E] of a prefix at positions 0..P-1, run once
    (batch 1). Rows that follow it broadcast them (gradients reach the prefix summed over rows)."""
    P = prefix_P.shape[0]
    positions_1P = jnp.arange(P, dtype=jnp.int32)[None]
    allowed_1PP = jnp.tril(jnp.ones((P, P), bool))[None]

    def body(x, layer):
        return decoder_layer(config, layer, x, positions_1P, allowed_1PP)

    _, (k_L1PKE, v_L1PKE) = jax.lax.scan(body, params["embed_tokens"][prefix_P][None], params["layers"])
    return {"k": k_L1PKE, "v": v_L1PKE}


def prefix_cache(config: LlamaConfig, params: Params, prefix_P: jax.Array, batch: int, length: int) -> dict[str, jax.Array]:
    """KV cache [L, batch, length, K, E] whose columns [0, P) hold ``prefix_keys_values`` broadcast to
    ``batch`` rows; the other columns are zero (``generate`` fills them)."""
    P = prefix_P.shape[0]
    widths = ((0, 0), (0, 0), (0, length - P), (0, 0), (0, 0))
    return {name: jnp.pad(jnp.broadcast_to(kv, (kv.shape[0], batch) + kv.shape[2:]), widths)
            for name, kv in prefix_keys_values(config, params, prefix_P).items()}


def _hidden_states_after_prefix(config, params, prefix_P, tokens_BT, attention_mask_BT=None):
    """``hidden_states`` of the rows after a shared prefix (see there)."""
    B, T = tokens_BT.shape
    P = prefix_P.shape[0]
    if attention_mask_BT is None:
        attention_mask_BT = jnp.ones((B, T), jnp.int32)
    D = config.hidden_size
    positions_BT = P + default_positions(attention_mask_BT)
    key_mask_BS = jnp.concatenate([jnp.ones((B, P), bool), attention_mask_BT.astype(bool)], axis=1)
    allowed_BTS = (jnp.arange(P + T)[None, None, :] <= P + jnp.arange(T)[None, :, None]) & key_mask_BS[:, None, :]
    # pack [prefix; row 0; row 1; ...] as one sequence N = P + B·T so every matmul runs once over all tokens
    x_1ND = jnp.concatenate([params["embed_tokens"][prefix_P], params["embed_tokens"][tokens_BT].reshape(B * T, D)])[None]
    positions_1N = jnp.concatenate([jnp.arange(P, dtype=jnp.int32), positions_BT.reshape(B * T)])[None]
    x_1ND, _ = _run_layers(config, params, x_1ND, positions_1N, allowed_BTS, packed_prefix=(P, B))
    return rms_norm(x_1ND[0, P:].reshape(B, T, D), params["norm"], config.rms_norm_eps)


def output_weight(config: LlamaConfig, params: Params) -> jax.Array:
    """The [D, V] output projection (the transposed embedding when tied)."""
    return params["embed_tokens"].T if config.tie_word_embeddings else params["lm_head"]


def logits_from_hidden(config: LlamaConfig, params: Params, h_BTD: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] logits in float32."""
    return (h_BTD @ output_weight(config, params)).astype(jnp.float32)


def apply(
    config: LlamaConfig,
    params: Params,
    tokens_BT: jax.Array,
    attention_mask_BT: jax.Array | None = None,
    positions_BT: jax.Array | None = None,
) -> jax.Array:
    """Logits [B, T, V] for int32 tokens [B, T]."""
    h_BTD = hidden_states(config, params, tokens_BT, attention_mask_BT, positions_BT)
    return logits_from_hidden(config, params, h_BTD)


# ----------------------------------------------------------------------------- generation


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Empty KV cache: k, v [L, B, S, K, E]."""
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def generate(
    config: LlamaConfig,
    params: Params,
    prompt_BT: jax.Array,
    prompt_mask_BT: jax.Array,
    max_new_tokens: int,
    prefix_P: jax.Array | None = None,
) -> jax.Array:
    """Greedy decoding with a KV cache; returns the new tokens [B, max_new_tokens].

    Prompts must be LEFT-padded (``prompt_mask`` 0 on the padding) so every row's last prompt
    token sits at column T-1. Rows keep decoding after an EOS; callers cut at the first EOS.
    With ``prefix_P`` (int32 [P]) every prompt is ``[prefix, row]``: the prefix fills cache
    columns [0, P) once for all rows (``prefix_cache``), the rows follow at positions P + their own.
    Jit with ``static_argnames=("config", "max_new_tokens")`` (``jaxcl.models.generate_jit``).
    """
    B, T = prompt_BT.shape
    P = 0 if prefix_P is None else prefix_P.shape[0]
    S = P + T + max_new_tokens
    if prefix_P is None:
        cache = init_cache(config, B, S, params["embed_tokens"].dtype)
    else:
        cache = prefix_cache(config, params, prefix_P, B, S)
    key_mask_BS = jnp.zeros((B, S), bool).at[:, :P].set(True).at[:, P:P + T].set(prompt_mask_BT.astype(bool))
    positions_BT = P + default_positions(prompt_mask_BT)

    # prefill: all prompt tokens at once, cache columns [P, P + T)
    allowed_BTS = (jnp.arange(S)[None, None, :] <= P + jnp.arange(T)[None, :, None]) & key_mask_BS[:, None, :]
    x_BTD = params["embed_tokens"][prompt_BT]
    x_BTD, cache = _run_layers(config, params, x_BTD, positions_BT, allowed_BTS, cache, P)
    h_BD = rms_norm(x_BTD[:, -1], params["norm"], config.rms_norm_eps)
    first_B = jnp.argmax(logits_from_hidden(config, params, h_BD), axis=-1).astype(jnp.int32)

    def step(carry, i):
        token_B, cache, key_mask_BS, pos_B = carry
        index = P + T + i  # cache column of this token
        key_mask_BS = key_mask_BS.at[:, index].set(True)
        allowed_B1S = (jnp.arange(S)[None, None, :] <= index) & key_mask_BS[:, None, :]
        x_B1D = params["embed_tokens"][token_B][:, None]
        x_B1D, cache = _run_layers(config, params, x_B1D, pos_B[:, None], allowed_B1S, cache, index)
        h_BD = rms_norm(x_B1D[:, 0], params["norm"], config.rms_norm_eps)
        next_B = jnp.argmax(logits_from_hidden(config, params, h_BD), axis=-1).astype(jnp.int32)
        return (next_B, cache, key_mask_BS, pos_B + 1), token_B

    last_pos_B = positions_BT[:, -1] + 1
    _, tokens_NB = jax.lax.scan(
        step, (first_B, cache, key_mask_BS, last_pos_B), jnp.arange(max_new_tokens)
    )
    return tokens_NB.T


generate_jit = jax.jit(generate, static_argnames=("config", "max_new_tokens"))
apply_jit = jax.jit(apply, static_argnames=("config",))


def generate_no_cache(config, params, prompt_BT, prompt_mask_BT, max_new_tokens):
    """Reference greedy decoding that re-runs the full forward each step (for tests)."""
    tokens, mask = prompt_BT, prompt_mask_BT
    out = []
    for _ in range(max_new_tokens):
        logits = apply_jit(config, params, tokens, mask)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        out.append(nxt)
        tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
        mask = jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], axis=1)
    return jnp.stack(out, axis=1)


def layer_io_similarity(
    config: LlamaConfig, params: Params, tokens_BT: jax.Array, attention_mask_BT: jax.Array | None = None
) -> jax.Array:
    """Per-layer mean cosine similarity between a block's input and output hidden states: [L].

    cos_l = mean over real tokens of <x_l, x_{l+1}> / (|x_l| |x_{l+1}|). A high value means the
    layer changes its input little (Sculpting Subspaces' layer-importance statistic).
    """
    attention_mask_BT, positions_BT, allowed_BTS = _attention_inputs(tokens_BT, attention_mask_BT)
    mask_BT = attention_mask_BT.astype(jnp.float32)

    def body(x, layer):
        y, _ = decoder_layer(config, layer, x, positions_BT, allowed_BTS)
        x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
        cos_BT = jnp.sum(x32 * y32, -1) / (jnp.linalg.norm(x32, axis=-1) * jnp.linalg.norm(y32, axis=-1) + 1e-12)
        return y, jnp.sum(cos_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)

    _, cos_L = jax.lax.scan(body, params["embed_tokens"][tokens_BT], params["layers"])
    return cos_L
