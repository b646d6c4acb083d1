"""Evaluation: batched greedy generation with the KV cache, exact match after normalisation."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
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
) -> list[str]:
    """Greedy answers (decoded, cut at EOS) of left-padded, length-bucketed prompt batches."""
    from jaxcl.data.batching import eval_batches

    pad_id = config.eos_token_id if config.eos_token_id is not None else 0
    answers: list[str | None] = [None] * len(prompts)
    for tokens, mask, index in eval_batches(prompts, batch_size, pad_id, buckets):
        out = np.asarray(llama.generate_jit(config, params, jax.numpy.asarray(tokens), jax.numpy.asarray(mask), max_new_tokens))
        for row, i in enumerate(index):
            if i is None or i < 0:
                continue
            answers[i] = tokenizer.decode(cut_at_eos(out[row], config.eos_token_id), skip_special_tokens=True)
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        raise RuntimeError(f"evaluation produced no answer for prompts {missing[:5]}")
    return answers  # type: ignore[return-value]


def evaluate_task(config, params, tokenizer, prompts, labels, label_set, batch_size, max_new_tokens, buckets) -> TaskEval:
    """Exact-match accuracy (normalised: lower-case, no ASCII punctuation, collapsed spaces)."""
    preds = generate_answers(config, params, tokenizer, prompts, batch_size, max_new_tokens, buckets)
    correct = [exact_match(p, l) for p, l in zip(preds, labels)]
    conf = confusion_counts([normalize_answer(p) for p in preds], [normalize_answer(l) for l in labels],
                            [normalize_answer(l) for l in label_set])
    return TaskEval(accuracy=float(np.mean(correct)) if correct else float("nan"), predictions=preds, confusion=conf)
