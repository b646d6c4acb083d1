"""Shared fixtures: a tiny random LLaMA written as a real HF folder, and the embedded SmolLM2."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def tiny_hf_llama(tmp_path, *, tie=False, heads=4, kv_heads=2, layers=2, seed=0, vocab=97):
    """Write a random transformers LlamaForCausalLM to ``tmp_path`` (safetensors) and return it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
        rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, eos_token_id=2, bos_token_id=1,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    # non-trivial norms so a wrong norm weight shows up
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.fixture(scope="session")
def smollm2():
    import jaxcl

    return jaxcl.load_pretrained("smollm2-135m")


def load_experiment_script(name: str):
    """Import ``experiments/<name>.py`` (a script, not a package module) so tests can call its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
