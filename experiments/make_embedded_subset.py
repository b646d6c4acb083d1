"""Build ``jaxcl/data/embedded/``: a small stratified subset of the 4 Standard-CL tasks.

    python3 experiments/make_embedded_subset.py [--src /work/shared/cl_benchmark] [--train 400] [--test 200]

The subset is exactly ``jaxcl.data.load_task(task, src, max_train, max_test, seed)`` of the full
data (proportionally stratified by label; the train draw seeded by ``--seed``, the test draw fixed
per task), written in the CL_Benchmark layout so ``load_task`` reads it unchanged:
``CL_Benchmark/<type>/<task>/{train,test}.json.gz`` (gzip of ``json.dumps(records,
ensure_ascii=False)``, mtime 0, so the bytes are reproducible), ``labels.json``, and
``configs/instruction_config.json``; plus a PROVENANCE.md with the counts and checksums.
Re-running with the same arguments reproduces the same bytes.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

from jaxcl.data.benchmark import BENCHMARKS, INSTRUCTION_CONFIG, load_task

REPO = Path(__file__).resolve().parent.parent
TASKS = BENCHMARKS["standard"][1]  # dbpedia, amazon, yahoo, agnews


def _gzip_json(records, path: Path) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(json.dumps(records, ensure_ascii=False).encode("utf-8"))
    path.write_bytes(buf.getvalue())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="/work/shared/cl_benchmark", help="the full CL_Benchmark data folder")
    ap.add_argument("--out", default=str(REPO / "jaxcl" / "data" / "embedded"))
    ap.add_argument("--train", type=int, default=400, help="train records per task")
    ap.add_argument("--test", type=int, default=200, help="test records per task")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)

    if out.exists():
        shutil.rmtree(out)
    (out / INSTRUCTION_CONFIG).parent.mkdir(parents=True)
    shutil.copyfile(src / INSTRUCTION_CONFIG, out / INSTRUCTION_CONFIG)
    rows, label_lines, sums = [], [], []
    for name in TASKS:
        task = load_task(name, src, max_train=args.train, max_test=args.test, seed=args.seed)
        task_dir = out / "CL_Benchmark" / task.task_type / task.name
        task_dir.mkdir(parents=True)
        src_dir = Path(task.source)
        shutil.copyfile(src_dir / "labels.json", task_dir / "labels.json")
        for split, examples in (("train", task.train), ("test", task.test)):
            _gzip_json([{"label": e.label, "sentence": e.sentence} for e in examples], task_dir / f"{split}.json.gz")
            counts = collections.Counter(e.label for e in examples)
            label_lines.append(f"- {name} {split} ({len(examples)}): "
                               + ", ".join(f"{c} {counts[c]}" for c in task.labels))
        n_src = {s: len(json.loads((src_dir / f"{s}.json").read_text("utf-8"))) for s in ("train", "test")}
        rows.append(f"| {name} (`{task.task_type}/{name}`) | {len(task.labels)} | {len(task.train)} of "
                    f"{n_src['train']} | {len(task.test)} of {n_src['test']} |")
        for s in ("train", "test"):
            sums.append(f"| `{task.task_type}/{name}/{s}.json` | `{_sha256(src_dir / f'{s}.json')}` |")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        train=args.train, test=args.test, seed=args.seed, src=src, rows="\n".join(rows),
        labels="\n".join(label_lines), sums="\n".join(sums), total=total,
    ), encoding="utf-8")
    print(f"wrote {out} ({total:,} bytes before PROVENANCE.md)")


PROVENANCE = """# PROVENANCE: jaxcl/data/embedded

A small subset of the O-LoRA CL_Benchmark's **Standard CL** tasks (dbpedia, amazon, yahoo,
agnews; orders 1-3), shipped with jaxcl so that the examples and tests run without the full data.
It is the default data folder of `jaxcl.data.load_task` when neither `data_dir` nor
`$JAXCL_DATA_DIR` is given. It is far too small for paper-scale numbers: use it for smoke runs,
tests and CPU-scale demos, and say so in any result.

## Source
- The full data copied from https://github.com/cmnfriend/O-LoRA (commit
  `07117e1fc4a5f5ad9308a815a42cee8f46502dc8`), as kept in `shared/cl_benchmark/` with its own
  PROVENANCE.md. There, `TC/dbpedia/train.json` (3352 of 14000 records), `TC/yahoo/train.json`
  (2539 of 10000) and `TC/yahoo/test.json` (1199 of 7600) are recovered prefixes of the original
  files; the other files used here match their git blob ids.
- Licence: the O-LoRA repository is MIT ("Copyright (c) 2023 Xiao Wang"); the texts come from the
  datasets of Zhang, Zhao & LeCun (2015) (AG News, Amazon Reviews, DBpedia-14, Yahoo! Answers),
  which keep their own terms and are in practice distributed for research use.

## How it was made
`python3 experiments/make_embedded_subset.py --src {src} --train {train} --test {test} --seed {seed}`:
for each task, `jaxcl.data.load_task(task, src, max_train={train}, max_test={test}, seed={seed})`,
i.e. a proportionally stratified random draw by label (largest-remainder rounding; train drawn with
seed {seed}, test with a seed fixed by the task name), records kept in their original order. Each
task has a real test split, so none is held out of train. Written as
`CL_Benchmark/<type>/<task>/{{train,test}}.json.gz` (gzip, mtime 0, of
`json.dumps(records, ensure_ascii=False)`, records `{{"label", "sentence"}}`), with the task's
`labels.json` and `configs/instruction_config.json` copied unchanged. `dev.json` is not included
(identical to `test.json` in the source, never read). Total {total:,} bytes.

## Counts
| task (folder) | #labels | train | test |
|---|---|---|---|
{rows}

Per label (in `labels.json` order):
{labels}

## Source files (sha256 of the files read)
| file | sha256 |
|---|---|
{sums}
"""


if __name__ == "__main__":
    main()
