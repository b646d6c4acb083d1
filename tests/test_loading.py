"""Loader errors name the problem; nothing is half-loaded."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxcl
from jaxcl.models import CheckpointError
from tests.conftest import tiny_hf_llama


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        jaxcl.load_pretrained("/nonexistent/model")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        jaxcl.load_pretrained(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        jaxcl.load_pretrained(tmp_path)


def test_missing_tensor_and_shape_mismatch(tmp_path):
    tiny_hf_llama(tmp_path)
    f = tmp_path / "model.safetensors"
    tensors = load_file(str(f))
    good = dict(tensors)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(f))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.weight'"):
        jaxcl.load_pretrained(tmp_path)
    good["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 32), np.float32)
    save_file(good, str(f))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight' has shape \(5, 32\), expected \(48, 32\)"):
        jaxcl.load_pretrained(tmp_path)


def test_not_a_gguf(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        jaxcl.load_pretrained(f)


def test_bad_token_shape(tmp_path):
    tiny_hf_llama(tmp_path)
    m = jaxcl.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"tokens must be int32 \[B, T\]"):
        m(np.zeros(5, np.int32))
