"""A tiny random LLaMA with the real SmolLM2 tokenizer, and a tiny run config on the embedded data."""

import jax

from jaxcl.engine import RunConfig
from jaxcl.models import Model, llama
from jaxcl.models.pretrained import embedded_model_path, load_tokenizer


def tiny_model(seed: int = 0) -> Model:
    tok = load_tokenizer(embedded_model_path("smollm2-135m"))
    cfg = llama.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, eos_token_id=2, bos_token_id=1)
    return Model(cfg, llama.init_params(cfg, jax.random.PRNGKey(seed)), tok, "tiny")


def tiny_config(**kw) -> RunConfig:
    base = dict(method="olora", tasks=("dbpedia", "agnews"), max_train=24, max_test=8, max_length=160,
                batch_size=4, buckets=(128, 160), checkpoint_every=2, eval_batch_size=8)
    base.update(kw)
    return RunConfig(**base)
