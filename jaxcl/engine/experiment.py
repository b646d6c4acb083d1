"""``run_experiment``: resolve a RunConfig into model + data + method, run it in a run directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from jaxcl.engine.config import RunConfig
from jaxcl.engine.outputs import write_outputs
from jaxcl.engine.runner import Result, RunDirError, run_stream


def default_run_dir(config: RunConfig) -> Path:
    what = "-".join(config.tasks) if config.tasks else f"{config.benchmark}{config.order}"
    return Path("runs") / f"{config.method}_{what}_{config.preset}_s{config.seed}"


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def prepare_run_dir(run_dir: Path, config_json: dict, resume: bool, overwrite: bool) -> None:
    """Create ``run_dir`` or check it belongs to this run. Refuses to touch a different run."""
    cfg_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not cfg_path.is_file():
            raise RunDirError(f"{run_dir} exists and is not a jaxcl run directory; choose another --out")
        else:
            try:
                old = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise RunDirError(f"{cfg_path} is unreadable ({e}); use --overwrite to start again") from None
            # a field added after that run was written counts as its default there
            old = {**{k: v for k, v in config_json.items() if k not in old and k in _FIELD_DEFAULTS
                      and v == _FIELD_DEFAULTS[k]}, **old}
            if old != config_json:
                diff = sorted(k for k in set(old) | set(config_json) if old.get(k) != config_json.get(k))
                raise RunDirError(
                    f"{run_dir} holds a different run (differs in: {', '.join(diff)}); "
                    f"use another --out, or --overwrite to replace it"
                )
            if not resume:
                raise RunDirError(f"{run_dir} already holds this run; use --resume to continue it or --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(config_json, indent=2, sort_keys=True))


def run_experiment(
    config: RunConfig, run_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
    progress: bool = True, model=None,
) -> Result:
    """Load the model and data named by ``config``, build the method, run the stream, write outputs."""
    import jaxcl
    from jaxcl.data import load_stream, task_order
    from jaxcl.methods import get_method

    config = config.resolved()
    method = get_method(config.method, **dict(config.method_kwargs))  # unknown names fail before any work
    names = list(config.tasks) if config.tasks else task_order(config.benchmark, config.order)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    config_json = config.to_json()
    prepare_run_dir(run_dir, config_json, resume, overwrite)
    stream = load_stream(names, config.data_dir, max_train=config.max_train, max_test=config.max_test, seed=config.seed)
    for t in stream:
        if t.test_from_train:
            print(f"note: task {t.name} has no test split; testing on a held-out part of its train split")
    model = model or jaxcl.load_pretrained(config.model)
    result = run_stream(method, model, stream, config, run_dir=run_dir, resume=resume, progress=progress)
    write_outputs(run_dir, result, config_json)
    return dataclasses.replace(result, run_dir=run_dir)
