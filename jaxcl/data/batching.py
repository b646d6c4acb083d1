"""Fixed-shape batches: examples grouped into length buckets, so XLA compiles one program per bucket.

``train_batches`` gives ``jaxcl.batch`` dicts ``[B, bucket]`` / ``[B, answer_len]``: at most
``len(buckets)`` shapes per task. ``eval_batches`` gives LEFT-padded generation prompts
``[B, bucket]`` (``jaxcl.models.llama.generate``'s layout). A batch short of ``B`` real rows is
filled with padding rows (pad tokens, attention 0, target_mask 0), which add nothing to the loss
(``answer_loss`` weights by ``target_mask``) and whose generations are dropped; a fully masked row
is finite in ``llama`` (its masked scores are -1e30, not -inf).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxcl.batch import collate_train

DEFAULT_BUCKETS = (64, 128, 256, 512)


def _bucket_of(lengths: Sequence[int], buckets: Sequence[int]) -> np.ndarray:
    """Index of the smallest bucket ≥ each length; ValueError naming the first that fits none."""
    edges = np.asarray(sorted(buckets))
    if edges.size == 0 or edges[0] < 1:
        raise ValueError(f"buckets must be positive lengths, got {tuple(buckets)}")
    lengths = np.asarray(lengths, np.int64)
    which = np.searchsorted(edges, lengths, side="left")
    too_long = np.flatnonzero(which == edges.size)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"example {i} has {int(lengths[i])} tokens, more than the largest bucket {int(edges[-1])} "
            f"({too_long.size} such examples; encode with a smaller max_length or add a bucket)"
        )
    return edges[which]


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def train_batches(
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    answer_len: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> list[dict[str, np.ndarray]]:
    """One epoch of training batches, shuffled deterministically by ``(seed, epoch)``.

    The examples are shuffled, split by bucket (smallest ≥ prompt + answer tokens), cut into
    batches of ``batch_size`` within each bucket, and the batches shuffled again. Each batch is
    ``collate_train(..., length=bucket, answer_len=answer_len)``; a bucket's last partial batch is
    padded to ``batch_size`` with rows of target_mask 0, or dropped with ``drop_last``.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    size = _bucket_of([len(p) + len(a) for p, a in zip(prompts, answers)], buckets)
    order = rng.permutation(len(prompts))
    groups = [(int(T), chunk) for T in sorted(set(size.tolist()))
              for chunk in _chunks(order[size[order] == T], batch_size)
              if len(chunk) == batch_size or not drop_last]
    batches = []
    for g in rng.permutation(len(groups)):
        T, rows = groups[g]
        batch = collate_train([prompts[i] for i in rows], [answers[i] for i in rows], pad_id, T, answer_len)
        batches.append(_pad_rows(batch, batch_size, pad_id))
    return batches


def _pad_rows(batch: dict[str, np.ndarray], batch_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """Append rows (tokens ``pad_id``, everything else 0) up to ``batch_size``."""
    missing = batch_size - len(batch["tokens"])
    if missing == 0:
        return batch
    out = {}
    for key, x in batch.items():
        fill = np.full((missing,) + x.shape[1:], pad_id if key == "tokens" else 0, x.dtype)
        out[key] = np.concatenate([x, fill])
    return out


def eval_batches(
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Generation batches ``(tokens int32 [B, T], mask int32 [B, T], index)``, LEFT-padded.

    Prompts are grouped by bucket (smallest ≥ prompt length), in their given order within a bucket;
    ``index[r]`` is the position in ``prompts`` of row ``r``; rows ``len(index):`` are padding.
    Every prompt appears in exactly one batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    size = _bucket_of([len(p) for p in prompts], buckets)
    out = []
    for T in sorted(set(size.tolist())):
        for rows in _chunks(np.flatnonzero(size == T), batch_size):
            tokens = np.full((batch_size, T), pad_id, np.int32)
            mask = np.zeros((batch_size, T), np.int32)
            for r, i in enumerate(rows):
                tokens[r, T - len(prompts[i]):] = prompts[i]
                mask[r, T - len(prompts[i]):] = 1
            out.append((tokens, mask, [int(i) for i in rows]))
    return out
