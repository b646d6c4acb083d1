"""The batch format of jaxcl's training and evaluation steps, and its collation from token lists.

A training batch is a dict of numpy/jax arrays:

    tokens          int32 [B, T]   prompt + answer (+ EOS), RIGHT-padded
    attention_mask  int32 [B, T]   1 on real tokens
    target_pos      int32 [B, A]   position t whose hidden state predicts a target token (t+1)
    target_ids      int32 [B, A]   the target (answer) token ids
    target_mask   float32 [B, A]   1 on real targets, 0 on padding

Only the A answer positions go through the output projection (49k-vocab logits are the
largest tensor of a step), so a step costs ~B·A·D·V for the head instead of B·T·D·V.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def collate_train(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    length: int | None = None,
    answer_len: int | None = None,
) -> dict[str, np.ndarray]:
    """Right-padded training batch from prompt and answer token lists (answers include EOS).

    ``length``/``answer_len`` fix T and A (bucketing, so XLA compiles few shapes); by default
    the batch maxima. Raises ValueError if an example does not fit.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    T = length or max(len(p) + len(a) for p, a in zip(prompts, answers))
    A = answer_len or max(len(a) for a in answers)
    B = len(prompts)
    tokens = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    target_pos = np.zeros((B, A), np.int32)
    target_ids = np.zeros((B, A), np.int32)
    target_mask = np.zeros((B, A), np.float32)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        n = len(p) + len(a)
        if n > T or len(a) > A:
            raise ValueError(f"example {i} ({len(p)} prompt + {len(a)} answer tokens) does not fit T={T}, A={A}")
        if not len(p) or not len(a):
            raise ValueError(f"example {i} has an empty prompt or answer")
        tokens[i, :n] = list(p) + list(a)
        mask[i, :n] = 1
        target_pos[i, : len(a)] = np.arange(len(p) - 1, n - 1)
        target_ids[i, : len(a)] = a
        target_mask[i, : len(a)] = 1.0
    return {
        "tokens": tokens, "attention_mask": mask,
        "target_pos": target_pos, "target_ids": target_ids, "target_mask": target_mask,
    }
