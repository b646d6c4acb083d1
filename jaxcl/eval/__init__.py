"""Scoring and continual-learning metrics (pure functions over the accuracy matrix R), and plots.

``jaxcl.eval.plots`` imports matplotlib on first use only.
"""

from jaxcl.eval.metrics import (
    accuracy,
    average_accuracy,
    average_accuracy_per_step,
    backward_transfer,
    confusion_counts,
    exact_match,
    forgetting,
    normalize_answer,
    summary,
)
from jaxcl.eval.plots import plot_accuracy_matrix, plot_average_accuracy, plot_comparison

__all__ = [
    "accuracy", "average_accuracy", "average_accuracy_per_step", "backward_transfer",
    "confusion_counts", "exact_match", "forgetting", "normalize_answer", "plot_accuracy_matrix",
    "plot_average_accuracy", "plot_comparison", "summary",
]
