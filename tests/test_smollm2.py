"""The embedded SmolLM2-135M GGUF: jaxcl vs transformers loading the same file."""

import numpy as np
import pytest
import torch

from jaxcl.models.pretrained import embedded_model_path

PROMPTS = [
    "The capital of France is",
    "Continual learning is the problem of",
    "def fibonacci(n):\n",
]


@pytest.fixture(scope="module")
def hf_smollm2():
    import transformers

    path = embedded_model_path("smollm2-135m")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32, local_files_only=True
    )
    return model.eval()


def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0


def test_smollm2_logits_match_transformers(smollm2, hf_smollm2):
    tok = smollm2.tokenizer
    worst = 0.0
    for prompt in PROMPTS:
        ids = np.array([tok(prompt)["input_ids"]], np.int32)
        with torch.no_grad():
            ref = hf_smollm2(torch.tensor(ids, dtype=torch.long)).logits.numpy()
        got = np.asarray(smollm2(ids))
        np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
        worst = max(worst, float(np.abs(got - ref).max()))
    # logits are O(10-30); float32 accumulation-order differences only
    assert worst < 2e-3, worst


def test_smollm2_greedy_20_tokens_match_transformers(smollm2, hf_smollm2):
    tok = smollm2.tokenizer
    for prompt in PROMPTS[:2]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            ref = hf_smollm2.generate(
                torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(ids):].numpy()
        got = np.asarray(smollm2.generate_tokens(np.array([ids], np.int32), np.ones((1, len(ids)), np.int32), 20))[0]
        np.testing.assert_array_equal(got, ref)


def test_smollm2_chat_answer(smollm2):
    answer = smollm2.generate("What is the capital of France?", max_new_tokens=16, chat=True)
    assert "Paris" in answer
