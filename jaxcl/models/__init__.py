"""LLaMA-family models as pure functions over a params pytree, and their checkpoint loaders."""

from jaxcl.models.checkpoints import CheckpointError, read_gguf, read_hf_folder
from jaxcl.models.llama import LlamaConfig, apply, generate, hidden_states, init_params, logits_from_hidden
from jaxcl.models.pretrained import Model, left_pad, load_pretrained

__all__ = [
    "CheckpointError", "LlamaConfig", "Model", "apply", "generate", "hidden_states", "init_params",
    "left_pad", "load_pretrained", "logits_from_hidden", "read_gguf", "read_hf_folder",
]
