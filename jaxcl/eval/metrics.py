"""Scoring generations and the continual-learning metrics over an accuracy matrix.

Scoring (benchmark_protocol.md §4, O-LoRA ``compute_metrics.py``): exact match of the generated
text against the label string after both are normalised (lower-cased, ASCII punctuation removed,
whitespace collapsed; articles are NOT removed). A prediction that is not one of the options is
wrong; MNLI's "-" test labels can never match.

The accuracy matrix ``R`` is ``[S, T]`` (``S ≤ T`` steps so far, ``T`` tasks in order):
``R[i, j]`` = accuracy on task j after training task i. Entries with ``j > i`` (tasks not yet
seen) may be NaN and are never read. The metrics are pure: ``R`` is copied to a float array, never
modified, and any unit (fraction or %) goes in and comes out. With ``S < T`` they describe the
run so far (row ``S-1``, tasks ``0..S-1``). Written ``t = S - 1`` (the last step):

- AA  = 1/(t+1) Σ_{j≤t} R[t, j]                                   average accuracy (O-LoRA's headline)
- BWT = 1/t Σ_{j<t} (R[t, j] − R[j, j])                            Lopez-Paz & Ranzato 2017 (GEM, NeurIPS)
- F   = 1/t Σ_{j<t} (max_{j≤i<t} R[i, j] − R[t, j])                 Chaudhry et al. 2018 (RWalk, ECCV)

BWT and F are NaN with one step. Definitions as in Avalanche/Mammoth (whose ``forgetting``
mutates its input; this one does not).
"""

from __future__ import annotations

import re
import string
from typing import Iterable, Sequence

import numpy as np

_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
OTHER = "<other>"


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation (``string.punctuation``), collapse whitespace."""
    return " ".join(_PUNCT.sub("", s.lower()).split())


def exact_match(pred: str, label: str) -> bool:
    """``normalize_answer(pred) == normalize_answer(label)``."""
    return normalize_answer(pred) == normalize_answer(label)


def accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Fraction of exact matches (multiply by 100 for the papers' %); NaN for no examples."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    if not len(labels):
        return float("nan")
    return float(np.mean([exact_match(p, y) for p, y in zip(preds, labels)]))


def confusion_counts(preds: Sequence[str], labels: Sequence[str],
                     label_set: Iterable[str]) -> dict[str, dict[str, int]]:
    """``counts[true][predicted]``: predictions mapped to the option they exactly match.

    Rows: every label of ``label_set`` then any other true label met (MNLI's "-"); columns: the
    options, then ``"<other>"`` for a prediction that matches none.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    options = list(label_set)
    by_norm = {normalize_answer(c): c for c in options}
    rows = list(dict.fromkeys(options + list(labels)))
    counts = {y: {c: 0 for c in options + [OTHER]} for y in rows}
    for p, y in zip(preds, labels):
        counts[y][by_norm.get(normalize_answer(p), OTHER)] += 1
    return counts


def _matrix(R) -> np.ndarray:
    """A float64 copy of R, checked to be [S, T] with 1 ≤ S ≤ T."""
    R = np.array(R, dtype=np.float64, copy=True)
    if R.ndim != 2 or not 1 <= R.shape[0] <= R.shape[1]:
        raise ValueError(f"R must be [steps, tasks] with 1 <= steps <= tasks, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """AA: mean accuracy over the tasks seen so far, after the last step (module docstring)."""
    R = _matrix(R)
    t = R.shape[0] - 1
    return float(np.mean(R[t, : t + 1]))


def backward_transfer(R) -> float:
    """BWT (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"):
    mean over j < t of R[t, j] − R[j, j]; negative = forgetting. NaN with one step."""
    R = _matrix(R)
    t = R.shape[0] - 1
    if t == 0:
        return float("nan")
    return float(np.mean(R[t, :t] - np.diag(R)[:t]))


def forgetting(R) -> float:
    """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"):
    mean over j < t of max_{j ≤ i < t} R[i, j] − R[t, j]; negative where tasks improved. NaN with one step."""
    R = _matrix(R)
    t = R.shape[0] - 1
    if t == 0:
        return float("nan")
    best = [np.max(R[j:t, j]) for j in range(t)]
    return float(np.mean(np.asarray(best) - R[t, :t]))


def average_accuracy_per_step(R) -> np.ndarray:
    """[S]: entry i is the mean of R[i, j] over j ≤ i (the AA curve of the run)."""
    R = _matrix(R)
    return np.array([np.mean(R[i, : i + 1]) for i in range(R.shape[0])])


def summary(R) -> dict:
    """AA, BWT, forgetting, the AA curve, the final per-task accuracies and the diagonal
    (accuracy on each task just after learning it), as plain floats/lists."""
    R = _matrix(R)
    t = R.shape[0] - 1
    return {
        "average_accuracy": average_accuracy(R),
        "backward_transfer": backward_transfer(R),
        "forgetting": forgetting(R),
        "average_accuracy_per_step": average_accuracy_per_step(R).tolist(),
        "final_accuracies": R[t, : t + 1].tolist(),
        "just_learned": np.diag(R)[: t + 1].tolist(),
        "steps": t + 1,
        "tasks": R.shape[1],
    }
