"""The O-LoRA CL_Benchmark: task orders, the data folder, and loading a task's examples.

Layout of a data folder (the O-LoRA repo's, kept as is; ``shared/cl_benchmark/`` or the embedded
subset ``jaxcl/data/embedded/``)::

    <root>/CL_Benchmark/<type>/<task>/{train,test,labels}.json   (or .json.gz)
    <root>/configs/instruction_config.json

``<type>`` is the prompt group (TC, SC, NLI, QQP, BoolQA, COPA, MultiRC, WiC); a file is one JSON
list of ``{"label": str, "sentence": str}``; ``labels.json`` fixes the order of the options in the
prompt (benchmark_protocol.md §1). ``dev.json`` is never read (it equals ``test.json``, §1).

Deviations from the O-LoRA loader, all opt-in or forced by our copy of the data:

- ``max_train``/``max_test`` cap a split by a *proportionally stratified*, seeded draw (each
  label keeps its share, largest-remainder rounding); O-LoRA trains on every record ("full"
  sampling) and tests on the whole test file, which is what ``None`` (the default) does.
  Proportional rather than equal shares keeps the test sets' label priors (QQP test is 36% True,
  BoolQ 62%; MNLI's 131 unscorable "-" records stay a 1.7% share, §4).
- The train cap is drawn with ``seed``; the test cap and the held-out split below with a seed
  derived from the task name only, so every run (any seed, any method) is scored on the same
  examples.
- Tasks whose test file is missing from our copy (yelp, IMDB, MultiRC; ``shared/cl_benchmark/
  PROVENANCE.md``) get a deterministic stratified held-out part of ``train.json`` as test
  (``holdout``: a fraction or a count), disjoint from the train examples, and
  ``TaskData.test_from_train`` is True (§7: "hold out a deterministic part of train").
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# benchmark_protocol.md §3. Orders 1-3 from O-LoRA's configs/order{1,2,3}_configs; 4-6 from the
# papers (order 6 is O-LoRA's scripts/long.sh). Names are the task folder names of the data.
BENCHMARKS: dict[str, dict[int, list[str]]] = {
    "standard": {
        1: ["dbpedia", "amazon", "yahoo", "agnews"],
        2: ["dbpedia", "amazon", "agnews", "yahoo"],
        3: ["yahoo", "amazon", "agnews", "dbpedia"],
    },
    "long": {
        4: ["MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB",
            "yelp", "amazon", "SST-2", "dbpedia", "agnews", "MultiRC", "yahoo"],
        5: ["MultiRC", "BoolQA", "WiC", "MNLI", "CB", "COPA", "QQP", "RTE",
            "IMDB", "SST-2", "dbpedia", "agnews", "yelp", "amazon", "yahoo"],
        6: ["yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB",
            "SST-2", "dbpedia", "agnews", "yahoo", "MultiRC", "BoolQA", "WiC"],
    },
}

DATA_DIR_ENV = "JAXCL_DATA_DIR"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
INSTRUCTION_CONFIG = Path("configs") / "instruction_config.json"
# MNLI's test file holds 131 records labelled "-" (unlabelled in MultiNLI). They are kept, and
# can never be scored correct (benchmark_protocol.md §4); the label is accepted in test files only.
UNLABELLED = "-"


def task_order(benchmark: str, order: int) -> list[str]:
    """The task names of ``BENCHMARKS[benchmark][order]`` (a fresh list)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {sorted(BENCHMARKS)}")
    orders = BENCHMARKS[benchmark]
    if order not in orders:
        raise ValueError(f"benchmark {benchmark!r} has no order {order!r}; valid orders: {sorted(orders)}")
    return list(orders[order])


@dataclass
class Example:
    sentence: str
    label: str


@dataclass
class TaskData:
    """One task: its examples and what its prompt needs.

    ``task_type`` is the prompt group (the ``<type>`` folder); ``labels`` the option strings in
    ``labels.json`` order; ``instruction`` the zero-shot instruction of the type without its
    trailing newline, None where the config has none (COPA); ``source`` the task folder.
    """

    name: str
    task_type: str
    labels: list[str]
    instruction: str | None
    train: list[Example]
    test: list[Example]
    test_from_train: bool
    source: str


def _check_root(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if path.name == "CL_Benchmark" and (path.parent / INSTRUCTION_CONFIG).is_file():
        path = path.parent
    missing = [str(path / p) for p in ("CL_Benchmark", INSTRUCTION_CONFIG)
               if not (path / p).exists()]
    if missing:
        raise FileNotFoundError(
            f"{what} {path} is not a CL_Benchmark data folder: missing {', '.join(missing)} "
            f"(expected <dir>/CL_Benchmark/<type>/<task>/ and <dir>/{INSTRUCTION_CONFIG})"
        )
    return path


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$JAXCL_DATA_DIR``, else the embedded subset.

    The folder must hold ``CL_Benchmark/`` and ``configs/instruction_config.json``
    (FileNotFoundError otherwise). The embedded subset has only the 4 Standard-CL tasks.
    """
    if data_dir is not None:
        return _check_root(Path(data_dir), "data_dir")
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return _check_root(Path(env), f"${DATA_DIR_ENV}")
    return _check_root(EMBEDDED_DIR, "the embedded data subset")


def available_tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the task folders under ``CL_Benchmark/<type>/``."""
    root = find_data_dir(data_dir)
    return sorted(p.name for p in (root / "CL_Benchmark").glob("*/*") if p.is_dir())


def _task_dir(root: Path, name: str) -> Path:
    """``CL_Benchmark/<type>/<name>`` (exact name, else a unique case-insensitive match)."""
    dirs = [p for p in (root / "CL_Benchmark").glob("*/*") if p.is_dir()]
    hits = [p for p in dirs if p.name == name] or [p for p in dirs if p.name.lower() == name.lower()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"task {name!r} is ambiguous in {root / 'CL_Benchmark'}: {[str(h) for h in hits]}")
    hint = "" if root != EMBEDDED_DIR else (
        f" (the embedded subset has only the Standard-CL tasks; set ${DATA_DIR_ENV} or pass "
        "data_dir= for the full CL_Benchmark)"
    )
    raise ValueError(
        f"unknown task {name!r} in {root / 'CL_Benchmark'}; available: {sorted(p.name for p in dirs)}{hint}"
    )


def _split_file(task_dir: Path, split: str) -> Path | None:
    """``<split>.json`` or ``<split>.json.gz`` in ``task_dir``, None if neither exists."""
    for suffix in (".json", ".json.gz"):
        path = task_dir / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


def _read_json(path: Path) -> Any:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _read_labels(task_dir: Path) -> list[str]:
    path = _split_file(task_dir, "labels")
    if path is None:
        raise FileNotFoundError(f"{task_dir / 'labels.json'} is missing")
    labels = _read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected a non-empty JSON list of label strings, got {labels!r:.200}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: duplicate labels in {labels}")
    return labels


def _read_split(path: Path, labels: Sequence[str], allow_unlabelled: bool) -> list[Example]:
    """The records of one split file, checked: a list of {"sentence": str, "label": str in labels}."""
    records = _read_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    valid = set(labels) | ({UNLABELLED} if allow_unlabelled else set())
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is a {type(rec).__name__}, not an object: {rec!r:.200}")
        for key in ("sentence", "label"):
            if key not in rec:
                raise ValueError(f"{path}: record {i} has no {key!r} field: {rec!r:.200}")
            if not isinstance(rec[key], str):
                raise ValueError(f"{path}: record {i}: {key!r} is not a string: {rec[key]!r:.200}")
        if rec["label"] not in valid:
            raise ValueError(
                f"{path}: record {i}: label {rec['label']!r} is not in labels.json {list(labels)}"
            )
        out.append(Example(rec["sentence"], rec["label"]))
    return out


def _instruction(root: Path, task_type: str) -> str | None:
    """The type's first zero-shot instruction (strategy "single", §2), without the trailing newline."""
    path = root / INSTRUCTION_CONFIG
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of task type -> instructions")
    entries = [e for e in config.get(task_type, []) if e.get("instruction_type") == "zero-shot"]
    if not entries:
        return None
    text = entries[0].get("instruction")
    if not isinstance(text, str):
        raise ValueError(f"{path}: {task_type!r}: the zero-shot entry has no instruction string")
    return text[:-1] if text.endswith("\n") else text


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by ints and strings (strings through crc32, stable across runs)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode("utf-8")) for k in key]
    return np.random.default_rng(ints)


def stratified_indices(labels: Sequence[str], n: int | None, rng: np.random.Generator,
                       label_order: Sequence[str] = ()) -> np.ndarray:
    """Sorted indices of a proportionally stratified random draw of ``n`` of ``labels``' positions.

    Label c with count N_c gets ⌊n·N_c/N⌋ draws, and the remaining ones go to the largest
    remainders (ties: ``label_order``, then first appearance). ``n`` None or ≥ N: all positions.
    """
    N = len(labels)
    if n is None or n >= N:
        return np.arange(N)
    if n < 0:
        raise ValueError(f"a cap must be >= 0, got {n}")
    present = dict.fromkeys(labels)
    order = [c for c in label_order if c in present]
    order += [c for c in present if c not in set(order)]
    groups = {c: [] for c in order}
    for i, c in enumerate(labels):
        groups[c].append(i)
    exact = np.array([n * len(groups[c]) / N for c in order])
    quota = np.floor(exact).astype(int)
    rest = n - int(quota.sum())
    by_remainder = sorted(range(len(order)), key=lambda k: (-(exact[k] - quota[k]), k))
    quota[by_remainder[:rest]] += 1
    picked = [rng.permutation(groups[c])[:q] for c, q in zip(order, quota)]
    return np.sort(np.concatenate(picked).astype(np.int64))


def _holdout_count(holdout: float | int, n: int, path: Path) -> int:
    if isinstance(holdout, float) and 0.0 < holdout < 1.0:
        k = int(round(holdout * n))
    elif isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 1:
        k = holdout
    else:
        raise ValueError(f"holdout must be a fraction in (0, 1) or a count >= 1, got {holdout!r}")
    if not 1 <= k < n:
        raise ValueError(f"{path}: cannot hold out {k} of {n} records as a test set")
    return k


def _take(examples: Sequence[Example], idx) -> list[Example]:
    return [examples[i] for i in idx]


def _draw(examples: Sequence[Example], n: int | None, rng, labels: Sequence[str]) -> np.ndarray:
    return stratified_indices([e.label for e in examples], n, rng, labels)


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    holdout: float | int = 0.2,
) -> TaskData:
    """Load task ``name`` from ``CL_Benchmark/<type>/<name>/`` of ``find_data_dir(data_dir)``.

    ``max_train``/``max_test``: proportionally stratified caps (None: the whole split; the
    protocol's setting). The train draw is seeded by ``seed``, the test draw by the task name only.
    Without a test file, ``holdout`` (fraction or count of ``train.json``, stratified, fixed per
    task) becomes the test set and the rest the train set (``test_from_train=True``).
    Each file is read once. Errors name the file and record.
    """
    root = find_data_dir(data_dir)
    task_dir = _task_dir(root, name)
    labels = _read_labels(task_dir)
    train_path = _split_file(task_dir, "train")
    if train_path is None:
        raise FileNotFoundError(f"{task_dir / 'train.json'} is missing")
    train = _read_split(train_path, labels, allow_unlabelled=False)
    test_path = _split_file(task_dir, "test")
    if test_path is not None:
        test = _read_split(test_path, labels, allow_unlabelled=True)
    else:
        k = _holdout_count(holdout, len(train), train_path)
        held = _draw(train, k, _rng(0, task_dir.name, "holdout"), labels)
        train, test = _take(train, np.setdiff1d(np.arange(len(train)), held)), _take(train, held)
    train = _take(train, _draw(train, max_train, _rng(seed, task_dir.name), labels))
    test = _take(test, _draw(test, max_test, _rng(0, task_dir.name, "test"), labels))
    return TaskData(
        name=task_dir.name,
        task_type=task_dir.parent.name,
        labels=labels,
        instruction=_instruction(root, task_dir.parent.name),
        train=train,
        test=test,
        test_from_train=test_path is None,
        source=str(task_dir),
    )


def load_stream(
    names: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    holdout: float | int = 0.2,
) -> list[TaskData]:
    """``[load_task(name, ...) for name in names]`` from one data folder (e.g. ``task_order(...)``)."""
    root = find_data_dir(data_dir)
    return [load_task(n, root, max_train, max_test, seed, holdout) for n in names]
