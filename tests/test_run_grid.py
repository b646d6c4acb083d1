"""experiments/run_grid.py: the per-cell lock that lets two grid processes share a method list,
the ``--status`` view of where each cell stands, the per-task training summary kept in each result
file, a ``--set`` variant that must carry a ``--tag``, and the CPU presets' per-method settings."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import load_experiment_script


@pytest.fixture(scope="module")
def run_grid():
    return load_experiment_script("run_grid")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_is_exclusive_and_takes_over_stale_locks(run_grid, tmp_path):
    lock = tmp_path / "runs" / "olora_o1_s0.lock"
    assert run_grid.claim(lock)
    assert lock.read_text() == str(os.getpid())
    assert run_grid.claim(lock)  # our own lock
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(live.pid))
        assert not run_grid.claim(lock)  # a live process holds it
        assert lock.read_text() == str(live.pid)
    finally:
        live.kill()
        live.wait()
    lock.write_text(str(dead_pid()))
    assert run_grid.claim(lock)  # stale: taken over
    assert lock.read_text() == str(os.getpid())
    lock.write_text("garbage")
    assert run_grid.claim(lock)


def test_cell_state(run_grid, tmp_path):
    result = tmp_path / "results" / "olora_o1_s0.json"
    run_dir = tmp_path / "runs" / "olora_o1_s0"
    lock = tmp_path / "runs" / "olora_o1_s0.lock"
    assert run_grid.cell_state(result, run_dir, lock) == "not started"

    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    assert run_grid.cell_state(result, run_dir, lock) == "interrupted, 0 task(s) finished: resumes on the next call"
    meta = run_dir / "checkpoints" / "task_002" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"task_index": 2}))
    assert run_grid.cell_state(result, run_dir, lock) == "interrupted, 3 task(s) finished: resumes on the next call"

    lock.write_text(str(os.getpid()))
    assert run_grid.cell_state(result, run_dir, lock) == f"running (pid {os.getpid()}), 3 task(s) finished"
    lock.write_text(str(dead_pid()))
    assert run_grid.cell_state(result, run_dir, lock).startswith("interrupted")

    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"summary": {"average_accuracy": 0.5812}, "wall_time_s": 600}))
    assert run_grid.cell_state(result, run_dir, lock) == "done: AA 58.1, 10 min"


def test_train_summary_means_each_task_and_counts_a_resumed_step_once(run_grid, tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [
        {"task": 0, "task_name": "dbpedia", "step": 0, "time_s": 9.0, "ce": 2.0, "grad_norm": 1.0, "loss": 2.0},
        {"task": 0, "task_name": "dbpedia", "step": 1, "time_s": 4.0, "ce": 1.0, "grad_norm": 3.0, "loss": 1.0},
        {"event": "eval", "after_task": 0, "accuracy": 0.8},
        {"task": 1, "task_name": "amazon", "step": 0, "ce": 1.5, "orth/orth": 4.0, "loss": 5.5, "grad_norm": 9.0},
        {"task": 1, "task_name": "amazon", "step": 1, "ce": 9.0, "orth/orth": 9.0, "loss": 18.0, "grad_norm": 9.0},
        # resumed from the checkpoint after step 0: step 1 is logged again; the later entry counts
        {"task": 1, "task_name": "amazon", "step": 1, "ce": 0.5, "orth/orth": 2.0, "loss": 2.5, "grad_norm": 5.0},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = run_grid.train_summary(log)
    assert [(t["task"], t["steps"]) for t in out] == [("dbpedia", 2), ("amazon", 2)]
    assert out[0]["mean"] == {"ce": 1.5, "grad_norm": 2.0, "loss": 1.5}  # time_s and the eval row left out
    assert out[1]["mean"] == {"ce": 1.0, "grad_norm": 7.0, "loss": 4.0, "orth/orth": 3.0}


def test_set_without_tag_is_refused(run_grid, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_grid.py", "--set", "lam=0.1", "--status"])
    with pytest.raises(SystemExit):
        run_grid.main()
    assert "--tag" in capsys.readouterr().err


def test_cell_config_applies_cpu_preset_settings_and_set_overrides_them(run_grid):
    quick = run_grid.cell_config("oliera", "standard", "quick", 1, 0, {}, None)
    assert dict(quick.method_kwargs) == {"lam": 1e-3} and quick.learning_rate == 1e-2
    swept = run_grid.cell_config("oliera", "standard", "quick", 1, 0, {"lam": 0.5, "order": 1}, None)
    assert dict(swept.method_kwargs) == {"lam": 0.5, "order": 1}
    long = run_grid.cell_config("oliera", "long", "quick-long", 4, 0, {}, "data")
    assert dict(long.method_kwargs) == {"lam": 1e-3} and long.data_dir == "data"
    paper = run_grid.cell_config("oliera", "standard", "paper", 1, 0, {}, None)
    assert paper.method_kwargs == () and paper.learning_rate is None  # the method's and preset's own
    osft = run_grid.cell_config("osft", "standard", "quick", 2, 1, {}, None)
    assert osft.method_kwargs == () and osft.learning_rate == 1e-4 and (osft.order, osft.seed) == (2, 1)
