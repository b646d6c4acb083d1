"""Scoring and the CL metrics against hand-computed matrices; the plots render."""

import numpy as np
import pytest

from jaxcl.eval import metrics as M
from jaxcl.eval import plots

nan = float("nan")
# R[i, j]: accuracy on task j after training task i; the upper triangle is unseen
R = [[0.5, nan, nan],
     [0.8, 0.7, nan],
     [0.6, 0.6, 0.9]]


def test_normalize_and_exact_match():
    assert M.normalize_answer("  Science or  Technology.\n") == "science or technology"
    assert M.normalize_answer("Society & Culture") == "society culture"
    assert M.normalize_answer("The World!") == "the world"  # articles are kept (protocol §4)
    assert M.exact_match("very positive ", "Very Positive") and not M.exact_match("positive", "very positive")
    assert not M.exact_match("World", "The World")
    assert M.accuracy(["World", "sports.", "Business"], ["World", "Sports", "World"]) == pytest.approx(2 / 3)
    assert np.isnan(M.accuracy([], []))


def test_confusion_counts():
    counts = M.confusion_counts(["yes.", "No", "maybe", "Yes"], ["Yes", "Yes", "No", "-"], ["Yes", "No"])
    assert counts == {
        "Yes": {"Yes": 1, "No": 1, "<other>": 0},
        "No": {"Yes": 0, "No": 0, "<other>": 1},
        "-": {"Yes": 1, "No": 0, "<other>": 0},
    }


def test_metrics_by_hand():
    # AA = (.6 + .6 + .9) / 3; BWT = ((.6 - .5) + (.6 - .7)) / 2; F = ((.8 - .6) + (.7 - .6)) / 2
    assert M.average_accuracy(R) == pytest.approx(0.7)
    assert M.backward_transfer(R) == pytest.approx(0.0)
    assert M.forgetting(R) == pytest.approx(0.15)
    np.testing.assert_allclose(M.average_accuracy_per_step(R), [0.5, 0.75, 0.7])
    # forgetting takes the best earlier accuracy, BWT the one just after learning
    R2 = [[0.9, nan], [0.3, 0.8]]
    assert M.backward_transfer(R2) == pytest.approx(-0.6) and M.forgetting(R2) == pytest.approx(0.6)


def test_partial_and_single_step():
    partial = np.array(R)[:2]  # two of three tasks trained
    assert M.average_accuracy(partial) == pytest.approx(0.75)
    assert M.backward_transfer(partial) == pytest.approx(0.3)
    assert M.forgetting(partial) == pytest.approx(-0.3)  # improved since: negative forgetting
    one = [[0.4, nan, nan]]
    assert M.average_accuracy(one) == pytest.approx(0.4)
    assert np.isnan(M.backward_transfer(one)) and np.isnan(M.forgetting(one))
    with pytest.raises(ValueError, match="steps"):
        M.average_accuracy(np.zeros((3, 2)))
    # a NaN where a seen task should be scored propagates instead of being skipped
    assert np.isnan(M.average_accuracy([[0.5, nan], [nan, 0.7]]))


def test_inputs_not_mutated():
    arr = np.array(R)
    before = arr.copy()
    as_list = [row[:] for row in R]
    for f in (M.average_accuracy, M.backward_transfer, M.forgetting, M.average_accuracy_per_step, M.summary):
        f(arr)
        f(as_list)
    np.testing.assert_array_equal(arr, before)
    assert str(as_list) == str(R)
    s = M.summary(arr)
    assert s["average_accuracy"] == pytest.approx(0.7) and s["forgetting"] == pytest.approx(0.15)
    assert s["final_accuracies"] == pytest.approx([0.6, 0.6, 0.9]) and s["just_learned"] == pytest.approx([0.5, 0.7, 0.9])
    assert s["steps"] == 3 and s["tasks"] == 3


def test_plots_write_pngs(tmp_path):
    names = ["dbpedia", "amazon", "yahoo"]
    paths = [
        plots.plot_accuracy_matrix(np.array(R) * 100, names, tmp_path / "m.png", "seqlora"),
        plots.plot_average_accuracy({"a": M.average_accuracy_per_step(R), "b": [0.4, 0.5]}, tmp_path / "aa.png"),
        plots.plot_comparison({"a": M.summary(R), "b": {"average_accuracy": 0.5, "backward_transfer": None}},
                              tmp_path / "sub" / "cmp.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(ValueError, match="task names"):
        plots.plot_accuracy_matrix(R, names[:2], tmp_path / "x.png")
