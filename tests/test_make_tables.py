"""experiments/make_tables.py: means over orders weigh each order once (not each run), and methods
are ranked against the papers only on the orders that every method has run; the table of
training-loss terms lists each task of the runs that logged them."""

import pytest

from tests.conftest import load_experiment_script


@pytest.fixture(scope="module")
def make_tables():
    return load_experiment_script("make_tables")


def run(aa: float, bwt: float = -0.1) -> dict:
    return {"average_accuracy": aa, "backward_transfer": bwt, "forgetting": -bwt}


def test_order_balanced_mean_weighs_orders_not_runs(make_tables):
    # order 1: two seeds (0.4, 0.6) -> 50 %; order 2: one seed 0.8 -> 80 %; balanced mean 65 %, not 60 %.
    runs = {1: [run(0.4), run(0.6)], 2: [run(0.8)]}
    assert make_tables.order_balanced_mean(runs, "average_accuracy") == pytest.approx(65.0)
    assert make_tables.order_balanced_mean(runs, "average_accuracy", orders=[1]) == pytest.approx(50.0)
    assert make_tables.order_balanced_mean(runs, "backward_transfer") == pytest.approx(-10.0)


def test_comparison_ranks_on_the_orders_every_method_ran(make_tables):
    # olora has order 2 as well; seqft only order 1: the comparison must use order 1 alone, where
    # olora (30 %) is below seqft (40 %), although olora's order 2 (90 %) would lift its pooled mean.
    by_method = {"olora": {1: [run(0.3)], 2: [run(0.9)]}, "seqft": {1: [run(0.4)]}, "inclora": {1: [run(0.35)]}}
    text = make_tables.paper_comparison(by_method, "standard", "quick")
    assert "mean over order(s) 1 " in text
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["olora"][3].strip() == "30.0"
    assert rows["olora"][6].strip() == "3.0" and rows["seqft"][6].strip() == "1.0"  # jaxcl ranks
    assert rows["olora"][5].strip() == "75.4"  # the paper's order-1 value, not its 3-order mean


def test_train_terms_table_lists_each_task_of_runs_that_have_it(make_tables):
    with_train = {"train": [
        {"task": "dbpedia", "steps": 25, "mean": {"ce": 1.25, "loss": 1.25, "orthogonal/orth": 0.0, "grad_norm": 4.0}},
        {"task": "amazon", "steps": 25, "mean": {"ce": 0.5, "loss": 6.25, "orthogonal/orth": 5.75, "grad_norm": 19.0}},
    ]}
    without = {"summary": {}}
    assert make_tables.train_terms_table({"seqft_o1_s0": without}) == ""
    lines = make_tables.train_terms_table({"olora_o1_s0": with_train, "seqft_o1_s0": without}).splitlines()
    assert "| olora_o1_s0 | amazon | 25 | 0.500 | orthogonal/orth 5.75 | 19 |" in lines
    assert sum(line.startswith("| olora_o1_s0") for line in lines) == 2 and not any("seqft" in line for line in lines)


def test_sweep_table_groups_runs_by_the_hyperparameter_value(make_tables, tmp_path):
    import json

    def cell(folder, order, seed, aa, lam=None, log=True):
        kwargs = {} if lam is None else {"lam": lam}
        train = [{"task": "a", "steps": 2, "mean": {"ce": 2.0, "loss": 2.0}},
                 {"task": "b", "steps": 2, "mean": {"ce": 0.5, "loss": 0.5 + (lam or 0.5) * 10}}]
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"oliera_o{order}_s{seed}.json").write_text(json.dumps({
            "config": {"method": "oliera", "order": order, "method_kwargs": kwargs},
            "summary": run(aa, -0.02), **({"train": train} if log else {})}))

    cell("quick", 1, 0, 0.40)  # the default lam (0.5)
    cell("quick", 2, 0, 0.50)
    cell("quick-lam0.01", 1, 0, 0.60, lam=0.01)
    cell("quick-lam0.01", 1, 1, 0.70, lam=0.01)
    cell("quick-lam0.01", 2, 0, 0.50, lam=0.01)
    cell("quick-lam0.1", 2, 0, 0.55, lam=0.1)  # order 2 only: no mean over orders
    cell("other", 1, 0, 0.99, lam=0.01)  # not a variant of the preset: ignored
    cell("quick-lam0.2", 1, 0, 0.45, lam=0.2, log=False)  # a result file without the training summary
    text = make_tables.sweep_table(tmp_path, "quick", "oliera", "lam")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "default 0.5" in text
    assert rows["0.5"][:5] == ["40.0", "50.0", "45.0", "-2.0", "0.5"]
    assert rows["0.01"][:3] == ["65.0 (2)", "50.0", "57.5"]  # order 1 mean of two seeds, then over orders
    assert rows["0.01"][5] == "0.1" and rows["0.01"][6] == "quick-lam0.01"  # penalty of the later task only
    assert rows["0.1"][:4] == ["–", "55.0", "–", "–"]
    assert rows["0.2"][4:6] == ["–", "–"]  # no cross-entropy or penalty to average
    with pytest.raises(ValueError, match="unknown method"):
        make_tables.sweep_table(tmp_path, "quick", "nope", "lam")


def test_main_writes_every_table_of_a_results_folder(make_tables, tmp_path):
    import json

    folder = tmp_path / "standard" / "quick"
    folder.mkdir(parents=True)
    for method, seed, aa in [("olora", 0, 0.5), ("olora", 1, 0.7), ("seqft", 0, 0.3)]:
        (folder / f"{method}_o1_s{seed}.json").write_text(json.dumps({
            "config": {"method": method, "order": 1}, "summary": run(aa), "tasks": ["a", "b"],
            "R": [[0.9, None], [0.5, 0.8]],
            "train": [{"task": "a", "steps": 3, "mean": {"ce": 1.0, "loss": 1.0, "grad_norm": 2.0}}]}))
    make_tables.main(["--results", str(tmp_path)])
    table = (folder / "table.md").read_text()
    assert "| olora | 60.0 (50.0–70.0) | 60.0 |" in table and table.rstrip().endswith("| 1 |")
    assert "| olora_o1_s1 | a | 3 | 1.000 |" in (folder / "train_terms.md").read_text()
    assert (folder / "comparison.md").is_file() and (folder / "heatmaps" / "seqft_o1_s0.png").is_file()
