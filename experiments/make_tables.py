"""Regenerate the comparison table and plots from the per-cell JSONs written by run_grid.py.

    python experiments/make_tables.py [--benchmark standard] [--preset quick]

Writes experiments/results/<benchmark>/<preset>/{table.md, comparison.md, aa_bwt.png, heatmaps/<cell>.png}:
per method, AA as mean and spread (min–max) over seeds, per order, and AA / BWT / forgetting as the mean over
orders of each order's seed mean; and
``comparison.md``, jaxcl's AA next to the papers' T5-large AA (``experiments/paper_results.json``,
transcribed from the specs) with both rankings and their Spearman correlation.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=HERE / "results", help="the folder run_grid.py writes into")
    ap.add_argument("--benchmark", default="standard")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--sweep", metavar="METHOD:KEY", help="instead: tabulate METHOD's runs over the values of its "
                    "hyper-parameter KEY, from the preset's folder and its run_grid --tag variants (<preset>-*)")
    args = ap.parse_args(argv)
    if args.sweep:
        method, _, key = args.sweep.partition(":")
        out = args.results / args.benchmark / f"sweep_{method}_{key}.md"
        out.write_text(sweep_table(args.results / args.benchmark, args.preset, method, key))
        print(out.read_text())
        return
    from jaxcl.eval import plots

    folder = args.results / args.benchmark / args.preset
    cells = sorted(folder.glob("*.json"))
    if not cells:
        raise SystemExit(f"no results in {folder}; run experiments/run_grid.py first")
    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    (folder / "heatmaps").mkdir(exist_ok=True)
    runs = {f.stem: json.loads(f.read_text()) for f in cells}
    for stem, m in runs.items():
        method, order = m["config"]["method"], m["config"]["order"]
        by_method[method][order].append(m["summary"])
        R = np.array([[np.nan if v is None else v for v in row] for row in m["R"]])
        plots.plot_accuracy_matrix(R, m["tasks"], folder / "heatmaps" / f"{stem}.png", title=stem)
    orders = sorted({o for d in by_method.values() for o in d})
    lines = ["| method | " + " | ".join(f"order {o} AA" for o in orders) + " | mean AA | mean BWT | mean forgetting | seeds |",
             "|---" * (len(orders) + 5) + "|"]
    summaries = {}
    for method, d in sorted(by_method.items()):
        cols, nseeds = [], []
        for o in orders:
            order_runs = d.get(o, [])
            aa = [100 * r["average_accuracy"] for r in order_runs]
            nseeds.append(len(order_runs))
            cols.append("–" if not aa else f"{np.mean(aa):.1f}" + (f" ({min(aa):.1f}–{max(aa):.1f})" if len(aa) > 1 else ""))
        mean_aa, mean_bwt, mean_fg = (order_balanced_mean(d, key) for key in ("average_accuracy", "backward_transfer", "forgetting"))
        summaries[method] = {"average_accuracy": mean_aa / 100, "backward_transfer": mean_bwt / 100}
        lines.append(f"| {method} | " + " | ".join(cols) + f" | {mean_aa:.1f} | {mean_bwt:.1f} | "
                     f"{mean_fg:.1f} | {','.join(map(str, nseeds))} |")
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    plots.plot_comparison(summaries, folder / "aa_bwt.png")
    print(table)
    comparison = paper_comparison(by_method, args.benchmark, args.preset)
    (folder / "comparison.md").write_text(comparison)
    print(comparison)
    train = train_terms_table(runs)
    if train:
        (folder / "train_terms.md").write_text(train)


def train_terms_table(runs: dict[str, dict]) -> str:
    """Markdown: per run and task, the mean over the task's steps of the cross-entropy, of each
    penalty term and of the gradient norm before clipping (the result files' ``"train"``, written
    by ``run_grid.py``) of ``runs`` (result-file stem -> its contents); runs without it are left
    out. Empty string when no run has it."""
    lines = []
    for stem, m in runs.items():
        for t in m.get("train", []):
            mean = t["mean"]
            penalties = ", ".join(f"{k} {v:.3g}" for k, v in sorted(mean.items()) if k not in ("ce", "loss", "grad_norm"))
            lines.append(f"| {stem} | {t['task']} | {t['steps']} | {mean.get('ce', float('nan')):.3f} | "
                         f"{penalties or '–'} | {mean.get('grad_norm', float('nan')):.3g} |")
    if not lines:
        return ""
    head = ["Mean over each task's training steps (from the runs' log.jsonl; clipping to global norm 1.0 "
            "scales every gradient whose norm is above 1).", "",
            "| run | task | steps | cross-entropy | penalty terms | grad norm |", "|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def sweep_table(root: Path, preset: str, method: str, key: str) -> str:
    """Markdown: ``method``'s runs grouped by the value of its hyper-parameter ``key`` (its
    ``method_kwargs`` entry, else the method's default), from ``root/<preset>`` and every
    ``root/<preset>-<tag>`` folder (``root``: a benchmark's results folder): AA per order (seed
    mean); mean AA and BWT over the orders, only for a row that has every order any row has; and
    the cross-entropy and penalty terms averaged over the tasks after the first (each task's mean
    over its steps)."""
    from jaxcl.methods import method_defaults

    defaults = method_defaults(method)  # an unknown method fails here, naming the known ones
    if key not in defaults:
        raise SystemExit(f"{method} has no hyper-parameter {key!r}; it has {', '.join(defaults)}")
    default = defaults[key]
    rows: dict[float, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    folders = {}
    for folder in [root / preset, *sorted(root.glob(f"{preset}-*"))]:
        for f in sorted(folder.glob(f"{method}_o*_s*.json")):
            m = json.loads(f.read_text())
            if m["config"]["method"] != method:
                continue
            value = m["config"].get("method_kwargs", {}).get(key, default)
            rows[value][m["config"]["order"]].append(m)
            folders.setdefault(value, set()).add(f.parent.name)
    if not rows:
        raise SystemExit(f"no {method} results under {root}/{preset}[-*]")
    orders = sorted({o for d in rows.values() for o in d})
    lines = [f"{method}: average accuracy (%) after the last task against `{key}` (default {default}), "
             f"benchmark {root.name!r}, preset {preset!r}; per order the mean over seeds (seeds in brackets); means "
             "over orders only for rows that have every order. "
             "Cross-entropy and penalty: each task's mean over its steps, averaged over the tasks after the first "
             "(of the runs whose result file has them).", "",
             f"| {key} | " + " | ".join(f"order {o} AA" for o in orders)
             + " | mean AA | mean BWT | cross-entropy | penalty | results folder |",
             "|---" * (len(orders) + 6) + "|"]
    for value, d in sorted(rows.items()):
        cols = []
        for o in orders:
            aa = [100 * m["summary"]["average_accuracy"] for m in d.get(o, [])]
            cols.append("–" if not aa else f"{np.mean(aa):.1f}" + (f" ({len(aa)})" if len(aa) > 1 else ""))
        summaries = {o: [m["summary"] for m in ms] for o, ms in d.items()}
        later = [t["mean"] for ms in d.values() for m in ms for t in m.get("train", [])[1:]]
        ce, pen = (f"{np.mean([t['ce'] for t in later]):.3g}", f"{np.mean([t['loss'] - t['ce'] for t in later]):.3g}") \
            if later else ("–", "–")  # no run of this row kept its training log
        complete = set(d) == set(orders)  # means only over the same orders as the other rows
        aa, bwt = (f"{order_balanced_mean(summaries, k):.1f}" if complete else "–" for k in ("average_accuracy", "backward_transfer"))
        lines.append(f"| {value:g} | " + " | ".join(cols) + f" | {aa} | {bwt} | {ce} | {pen} | "
                     f"{', '.join(sorted(folders[value]))} |")
    return "\n".join(lines) + "\n"


def order_balanced_mean(runs_by_order: dict[int, list[dict]], key: str, orders=None) -> float:
    """Mean (in %) over orders of each order's mean over seeds (so an order with more seeds does not weigh
    more), of ``summary[key]``; ``orders`` restricts it to those orders."""
    per_order = [np.nanmean([100 * r[key] for r in runs]) for o, runs in sorted(runs_by_order.items())
                 if runs and (orders is None or o in orders)]
    return float(np.mean(per_order))


def _ranks(values: list[float]) -> np.ndarray:
    """1 = best (highest); ties share their mean rank."""
    v = np.asarray(values, float)
    order = (-v).argsort(kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        ranks[v == x] = ranks[v == x].mean()
    return ranks


def paper_comparison(by_method: dict, benchmark: str, preset: str) -> str:
    """Markdown: jaxcl AA per method vs the papers' T5-large AA on the same orders, with ranks."""
    paper = json.loads((HERE / "paper_results.json").read_text())
    key = "standard" if benchmark == "standard" else "long"
    first_order = 1 if key == "standard" else 4
    # Rank methods on the same orders: those that every method has run (a partly run order is left out).
    orders = sorted(set.intersection(*({o for o, runs in d.items() if runs} for d in by_method.values())))
    rows = []
    for method, d in sorted(by_method.items()):
        ours = [100 * r["average_accuracy"] for o in orders for r in d[o]]
        bwt = order_balanced_mean(d, "backward_transfer", orders)
        mean_aa = order_balanced_mean(d, "average_accuracy", orders)
        ref = paper["methods"].get(method)
        theirs, note = None, ""
        if ref is not None:
            per_order = [ref[key][o - first_order] for o in orders]
            if all(v is not None for v in per_order):
                theirs = float(np.mean(per_order))
            elif ref[key][3] is not None:
                theirs, note = ref[key][3], " †"
        rows.append((method, mean_aa, ours, bwt, theirs, note, ref["source"] if ref else "–"))
    both = [r for r in rows if r[4] is not None]
    ours_rank = dict(zip([r[0] for r in both], _ranks([r[1] for r in both])))
    paper_rank = dict(zip([r[0] for r in both], _ranks([r[4] for r in both])))
    lines = [
        f"jaxcl (SmolLM2-135M, preset '{preset}') vs the papers ({paper['model']}), {benchmark} benchmark: "
        f"average accuracy (%) after the last task, mean over order(s) {','.join(map(str, orders))} (those every "
        "method has run; each order's mean over its seeds; min–max over all those runs) and the paper's value on "
        "the same orders († = only the paper's mean over all orders is known). Ranks among the methods with both numbers.",
        "",
        "| method | runs | jaxcl AA (min–max) | jaxcl BWT | paper AA | jaxcl rank | paper rank | paper source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, mean_aa, ours, bwt, theirs, note, source in rows:
        spread = f" ({min(ours):.1f}–{max(ours):.1f})" if len(ours) > 1 else ""
        lines.append(
            f"| {method} | {len(ours)} | {mean_aa:.1f}{spread} | {bwt:.1f} | "
            + ("–" if theirs is None else f"{theirs:.1f}{note}")
            + f" | {ours_rank.get(method, float('nan')):.1f} | {paper_rank.get(method, float('nan')):.1f} | {source} |".replace("nan", "–")
        )
    if len(both) >= 3:
        a = np.array([ours_rank[r[0]] for r in both])
        b = np.array([paper_rank[r[0]] for r in both])
        rho = float(np.corrcoef(a, b)[0, 1])
        lines += ["", f"Spearman rank correlation over the {len(both)} methods with both numbers: {rho:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
