"""The CL engine: task streams through a method, evaluation after every task, checkpoints, outputs."""

from jaxcl.engine.config import PRESETS, RunConfig
from jaxcl.engine.runner import Result, RunDirError, run_stream
from jaxcl.engine.experiment import run_experiment

__all__ = ["PRESETS", "Result", "RunConfig", "RunDirError", "run_experiment", "run_stream"]
