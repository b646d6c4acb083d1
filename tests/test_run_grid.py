"""experiments/run_grid.py: the per-cell lock that lets two grid processes share a method list,
and the ``--status`` view of where each cell stands."""

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
