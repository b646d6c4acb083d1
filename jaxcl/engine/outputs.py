"""Run-directory outputs: metrics.json, results.md, plots; and ``report`` over several runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxcl.eval import metrics as M


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def write_outputs(run_dir: Path, result, config_json: dict) -> None:
    """metrics.json (matrix + summary), results.md, accuracy-matrix and AA-curve PNGs."""
    from jaxcl.eval import plots

    run_dir = Path(run_dir)
    metrics = {
        "method": config_json.get("method"),
        "tasks": result.task_names,
        "R": [[None if math.isnan(v) else v for v in row] for row in result.R.tolist()],
        "summary": result.metrics["summary"],
        "average_accuracy_per_step": [None if math.isnan(v) else v for v in M.average_accuracy_per_step(result.R)],
        "reports": result.reports,
        "evals": result.metrics.get("evals", {}),
        "config": config_json,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (run_dir / "results.md").write_text(markdown_matrix(result.task_names, result.R, result.metrics["summary"], config_json.get("method", "")))
    plots.plot_accuracy_matrix(result.R, result.task_names, run_dir / "accuracy_matrix.png", title=str(config_json.get("method")))
    plots.plot_average_accuracy({str(config_json.get("method")): M.average_accuracy_per_step(result.R)}, run_dir / "average_accuracy.png")


def markdown_matrix(names: Sequence[str], R: np.ndarray, summary: dict, title: str) -> str:
    lines = [f"# {title}", "", "Accuracy (%) on task j (columns) after training task i (rows).", ""]
    lines.append("| after \\ on | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(_pct(v) for v in R[i]) + " |")
    lines += ["", "| metric | value |", "|---|---|"]
    for k in ("average_accuracy", "backward_transfer", "forgetting"):
        if k in summary:
            lines.append(f"| {k} (%) | {_pct(summary[k])} |")
    return "\n".join(lines) + "\n"


def load_run(run_dir: Path) -> dict:
    f = Path(run_dir) / "metrics.json"
    if not f.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (not a finished jaxcl run)")
    return json.loads(f.read_text())


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """A Markdown comparison table of finished runs (and a side-by-side plot if ``out`` is given)."""
    from jaxcl.eval import plots

    rows = ["| run | method | tasks | AA | BWT | forgetting |", "|---|---|---|---|---|---|"]
    summaries, curves = {}, {}
    for d in run_dirs:
        m = load_run(Path(d))
        s = m["summary"]
        name = Path(d).name
        summaries[name] = s
        curves[name] = [np.nan if v is None else v for v in m["average_accuracy_per_step"]]
        rows.append(f"| {name} | {m['method']} | {len(m['tasks'])} | {_pct(s.get('average_accuracy'))} | "
                    f"{_pct(s.get('backward_transfer'))} | {_pct(s.get('forgetting'))} |")
    table = "\n".join(rows) + "\n"
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plots.plot_comparison(summaries, out / "comparison.png")
        plots.plot_average_accuracy(curves, out / "average_accuracy.png")
        (out / "report.md").write_text(table)
    return table
