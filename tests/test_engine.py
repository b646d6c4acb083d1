"""The CL engine on a tiny random model with the real tokenizer and the embedded benchmark subset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcl.engine import RunDirError, run_experiment
from jaxcl.engine.checkpoint import RunCheckpoints
from tests.engine_helpers import tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def reference_run(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    return run_experiment(tiny_config(), d, progress=False, model=model)


def test_run_writes_outputs(reference_run):
    d = reference_run.run_dir
    for f in ("config.json", "metrics.json", "results.md", "log.jsonl", "accuracy_matrix.png", "average_accuracy.png"):
        assert (d / f).is_file(), f
    m = json.loads((d / "metrics.json").read_text())
    assert m["tasks"] == ["dbpedia", "agnews"]
    R = np.array(m["R"], dtype=float)
    assert R.shape == (2, 2) and np.isnan(R[0, 1]) and np.all(np.isfinite([R[0, 0], R[1, 0], R[1, 1]]))
    assert set(m["summary"]) >= {"average_accuracy", "backward_transfer", "forgetting"}
    steps = [json.loads(l) for l in (d / "log.jsonl").read_text().splitlines()]
    train = [s for s in steps if "loss" in s]
    assert len(train) >= 2 * 6 and all(np.isfinite(s["loss"]) and s["tokens_per_s"] > 0 for s in train)
    # the method memory holds the first task's frozen adapter after task 2
    assert RunCheckpoints(d).latest_task()[0] == 1


def test_resume_after_kill_equals_uninterrupted(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # killed mid-way through task 2 (step 3, after the in-task checkpoint at step 2)
    p = subprocess.run([sys.executable, "-m", "tests._crash_run", str(run_dir), "1", "3"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    ckpts = RunCheckpoints(run_dir)
    assert ckpts.latest_task()[0] == 0 and ckpts.inflight()["step"] == 2
    assert not (run_dir / "metrics.json").exists()
    resumed = run_experiment(tiny_config(), run_dir, resume=True, progress=False, model=tiny_model())
    np.testing.assert_array_equal(resumed.R, reference_run.R)
    for a, b in zip(jax.tree.leaves(resumed.memory), jax.tree.leaves(reference_run.memory)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the losses logged after the resume equal the uninterrupted run's
    ref = {(s["task"], s["step"]): s["loss"] for s in map(json.loads, (reference_run.run_dir / "log.jsonl").open()) if "loss" in s}
    got = {(s["task"], s["step"]): s["loss"] for s in map(json.loads, (run_dir / "log.jsonl").open()) if "loss" in s}
    assert got == ref


def test_refuses_a_different_run(reference_run, model):
    with pytest.raises(RunDirError, match="different run"):
        run_experiment(tiny_config(seed=1), reference_run.run_dir, progress=False, model=model)
    with pytest.raises(RunDirError, match="--resume"):
        run_experiment(tiny_config(), reference_run.run_dir, progress=False, model=model)
    assert (reference_run.run_dir / "metrics.json").is_file()  # nothing was lost


def test_unknown_method_and_task(model, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_experiment(tiny_config(method="nope"), tmp_path / "a", progress=False, model=model)
    with pytest.raises(ValueError, match="nosuchtask"):
        run_experiment(tiny_config(tasks=("nosuchtask",)), tmp_path / "b", progress=False, model=model)
    with pytest.raises(ValueError, match=r"method 'olora': bad hyper-parameters \['lamda'\]"):
        run_experiment(tiny_config(method_kwargs=(("lamda", 0.1),)), tmp_path / "c", progress=False, model=model)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # failed before writing


def test_cli_hyperparameters_are_python_literals():
    from jaxcl.methods import parse_hyperparams

    assert parse_hyperparams(["lam1=0.1", "project_gradients=False", "rank_rule=fixed", "targets=('q_proj',)"]) == {
        "lam1": 0.1, "project_gradients": False, "rank_rule": "fixed", "targets": ("q_proj",)}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_hyperparams(["lam1"])


def test_nan_loss_stops_and_keeps_last_checkpoint(model, tmp_path):
    cfg = tiny_config(method="seqft", learning_rate=1e30, clip_norm=1e30, checkpoint_every=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+"):
        run_experiment(cfg, tmp_path / "run", progress=False, model=model)


def test_corrupt_checkpoint_is_reported_not_overwritten(reference_run, model, tmp_path):
    import shutil

    from jaxcl.engine.checkpoint import CheckpointCorrupt

    run_dir = tmp_path / "run"
    shutil.copytree(reference_run.run_dir, run_dir)
    meta = run_dir / "checkpoints" / "task_001" / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(CheckpointCorrupt, match="task_001/meta.json"):
        run_experiment(tiny_config(), run_dir, resume=True, progress=False, model=model)
    assert meta.read_text() == "{not json"  # left as it was for the user to inspect
    shutil.copy(reference_run.run_dir / "checkpoints" / "task_001" / "meta.json", meta)
    for f in (run_dir / "checkpoints" / "task_001" / "state").rglob("*"):
        if f.is_file() and "manifest" in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointCorrupt, match="cannot restore checkpoint"):
        run_experiment(tiny_config(), run_dir, resume=True, progress=False, model=model)
