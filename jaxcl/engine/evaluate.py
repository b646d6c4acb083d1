"""Evaluation: batched greedy generation with the KV cache, exact match after normalisation."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxcl.eval.metrics import confusion_counts, exact_match, normalize_answer
from jaxcl.models import llama
from jaxcl.models.pretrained import cut_at_eos


@dataclasses.dataclass
class TaskEval:
    accuracy: float  # exact match in [0, 1]
    predictions: list[str]
    confusion: dict


def generate_answers(
    config: llama.LlamaConfig,
    params,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    max_new_tokens: int,
    buckets: Sequence[int],
    share_prefix: bool = True,
) -> list[str]:
    """Greedy answers (decoded, cut at EOS) of left-padded, length-bucketed prompt batches.

    With ``share_prefix`` the prompts' common head (``jaxcl.batch.shared_prefix_len``) is run once
    per batch (``llama.generate(..., prefix_P=...)``) and the rest is bucketed by the full length."""
    from jaxcl.batch import shared_prefix_len
    from jaxcl.data.batching import eval_batches

    pad_id = config.eos_token_id if config.eos_token_id is not None else 0
    P = shared_prefix_len(prompts) if share_prefix else 0
    prefix = jnp.asarray(prompts[0][:P], jnp.int32) if P else None
    rests = [p[P:] for p in prompts]
    rest_buckets = sorted({b - P for b in buckets if b > P})
    answers: list[str | None] = [None] * len(prompts)
    for tokens, mask, index in eval_batches(rests, batch_size, pad_id, rest_buckets):
        out = np.asarray(llama.generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), max_new_tokens, prefix))
        for row, i in enumerate(index):
            if i is None or i < 0:
                continue
            answers[i] = tokenizer.decode(cut_at_eos(out[row], config.eos_token_id), skip_special_tokens=True)
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        raise RuntimeError(f"evaluation produced no answer for prompts {missing[:5]}")
    return answers  # type: ignore[return-value]


def evaluate_task(config, params, tokenizer, prompts, labels, label_set, batch_size, max_new_tokens, buckets,
                  share_prefix: bool = True) -> TaskEval:
    """Exact-match accuracy (normalised: lower-case, no ASCII punctuation, collapsed spaces)."""
    preds = generate_answers(config, params, tokenizer, prompts, batch_size, max_new_tokens, buckets, share_prefix)
    correct = [exact_match(p, l) for p, l in zip(preds, labels)]
    conf = confusion_counts([normalize_answer(p) for p in preds], [normalize_answer(l) for l in labels],
                            [normalize_answer(l) for l in label_set])
    return TaskEval(accuracy=float(np.mean(correct)) if correct else float("nan"), predictions=preds, confusion=conf)
