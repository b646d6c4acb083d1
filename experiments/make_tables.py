"""Regenerate the comparison table and plots from the per-cell JSONs written by run_grid.py.

    python experiments/make_tables.py [--benchmark standard] [--preset quick]

Writes experiments/results/<benchmark>/<preset>/{table.md, aa_bwt.png, heatmaps/<cell>.png}:
per method, AA / BWT / forgetting as mean ± spread (min–max) over seeds, per order.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", default="standard")
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()
    from jaxcl.eval import plots

    folder = HERE / "results" / args.benchmark / args.preset
    cells = sorted(folder.glob("*.json"))
    if not cells:
        raise SystemExit(f"no results in {folder}; run experiments/run_grid.py first")
    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    (folder / "heatmaps").mkdir(exist_ok=True)
    for f in cells:
        m = json.loads(f.read_text())
        method, order = m["config"]["method"], m["config"]["order"]
        by_method[method][order].append(m["summary"])
        R = np.array([[np.nan if v is None else v for v in row] for row in m["R"]])
        plots.plot_accuracy_matrix(R, m["tasks"], folder / "heatmaps" / f"{f.stem}.png", title=f.stem)
    orders = sorted({o for d in by_method.values() for o in d})
    lines = ["| method | " + " | ".join(f"order {o} AA" for o in orders) + " | mean AA | mean BWT | mean forgetting | seeds |",
             "|---" * (len(orders) + 5) + "|"]
    summaries = {}
    for method, d in sorted(by_method.items()):
        cols, aa_all, bwt_all, fg_all, nseeds = [], [], [], [], []
        for o in orders:
            runs = d.get(o, [])
            aa = [100 * r["average_accuracy"] for r in runs]
            aa_all += aa
            bwt_all += [100 * r["backward_transfer"] for r in runs]
            fg_all += [100 * r["forgetting"] for r in runs]
            nseeds.append(len(runs))
            cols.append("–" if not aa else f"{np.mean(aa):.1f}" + (f" ({min(aa):.1f}–{max(aa):.1f})" if len(aa) > 1 else ""))
        summaries[method] = {"average_accuracy": np.mean(aa_all) / 100, "backward_transfer": np.nanmean(bwt_all) / 100}
        lines.append(f"| {method} | " + " | ".join(cols) + f" | {np.mean(aa_all):.1f} | {np.nanmean(bwt_all):.1f} | "
                     f"{np.nanmean(fg_all):.1f} | {','.join(map(str, nseeds))} |")
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    plots.plot_comparison(summaries, folder / "aa_bwt.png")
    print(table)


if __name__ == "__main__":
    main()
