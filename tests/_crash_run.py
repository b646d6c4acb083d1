"""Run a tiny CL run and SIGKILL this process at a given (task, step): the resume tests' victim.

    python -m tests._crash_run RUN_DIR TASK STEP ['{"method": "osft", ...}']   (RunConfig overrides, JSON)
"""

import json
import os
import signal
import sys

import jaxcl.fit as fit
from jaxcl.engine import run_experiment
from tests.engine_helpers import tiny_config, tiny_model

run_dir, crash_task, crash_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
if "method_kwargs" in overrides:
    overrides["method_kwargs"] = tuple(sorted(overrides["method_kwargs"].items()))
make = fit.make_train_step


def make_and_crash(*a, **k):
    step = make(*a, **k)
    task = runner_task[0]

    def wrapped(trainable, opt_state, params, memory, batch, s, total):
        if task == crash_task and s == crash_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(trainable, opt_state, params, memory, batch, s, total)

    runner_task[0] += 1
    return wrapped


runner_task = [0]
fit.make_train_step = make_and_crash  # what start_task calls once per task
run_experiment(tiny_config(**overrides), run_dir, resume=True, progress=False, model=tiny_model())
