"""The batch format of jaxcl's training and evaluation steps, and its collation from token lists.

A training batch is a dict of numpy/jax arrays:

    tokens          int32 [B, T]   prompt + answer (+ EOS), RIGHT-padded
    attention_mask  int32 [B, T]   1 on real tokens
    target_pos      int32 [B, A]   position t whose hidden state predicts a target token (t+1)
    target_ids      int32 [B, A]   the target (answer) token ids
    target_mask   float32 [B, A]   1 on real targets, 0 on padding

With a shared prefix (``split_prefix``) the batch also holds ``prefix int32 [P]``, the tokens that
precede every row, and ``tokens``/``attention_mask``/``target_pos`` refer to the rest of the rows.

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


MIN_SHARED_PREFIX = 8  # a shorter common head is not worth a pass of its own


def shared_prefix_len(prompts: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """P: how many leading token ids all ``prompts`` share (a task's instruction head), capped so
    every prompt keeps at least one token after it; 0 if that is below ``minimum``."""
    if not prompts:
        return 0
    first = list(prompts[0])
    P = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < P and p[k] == first[k]:
            k += 1
        P = k
    return P if P >= minimum else 0


def split_prefix(batch: dict[str, np.ndarray], P: int) -> dict[str, np.ndarray]:
    """A training batch whose rows all start with the same P tokens, as that ``prefix`` int32 [P]
    plus the rest of each row: ``tokens``/``attention_mask`` [B, T - P] and ``target_pos`` - P.

    ``jaxcl.models.llama.hidden_states(..., prefix_P=batch["prefix"])`` then runs the prefix once
    for the batch (same result). Rows that are all padding (``_pad_rows``) are allowed; a real row
    that does not start with the prefix, or whose targets lie inside it, raises ValueError.
    """
    tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["attention_mask"])
    if not 0 < P < tokens.shape[1]:
        raise ValueError(f"prefix length {P} must be in (0, {tokens.shape[1]})")
    real = mask[:, 0] > 0
    if not real.any():
        raise ValueError("split_prefix: the batch has no real row")
    prefix = tokens[np.argmax(real), :P]
    for i in np.flatnonzero(real):
        if not (mask[i, :P].all() and np.array_equal(tokens[i, :P], prefix)):
            raise ValueError(f"split_prefix: row {i} does not start with the batch's shared {P}-token prefix")
    target_pos = np.asarray(batch["target_pos"])
    weighted = np.asarray(batch["target_mask"]) > 0
    if (target_pos[weighted] < P).any():
        raise ValueError(f"split_prefix: a target is predicted from inside the {P}-token prefix")
    out = dict(batch)
    out.update(prefix=prefix.astype(np.int32), tokens=tokens[:, P:], attention_mask=mask[:, P:],
               target_pos=np.maximum(target_pos - P, 0).astype(np.int32))
    return out
