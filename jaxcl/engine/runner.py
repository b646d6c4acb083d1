"""``run_stream``: train a CL method through a task stream, evaluating after every task.

For task i of the stream:
    jaxcl.fit.start_task: begin_task, init(key_i), tx = method.tx(optimizer, memory), the jit step
    for each batch: jit step (loss + penalty, grads w.r.t. trainable, tx update, post_update)
    params, memory = end_task(...)
    R[i, j] = exact-match accuracy on task j ≤ i with the deployed weights (no task id)

Deterministic given the seed: batch order depends on (seed, task, epoch), init keys on
(seed, task). A run killed at any point resumes from its checkpoints (``resume=True``) and ends
with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.batch import shared_prefix_len, split_prefix
from jaxcl.core import Method, TaskInfo, deployed_params
from jaxcl.engine.checkpoint import CheckpointCorrupt, RunCheckpoints
from jaxcl.engine.config import RunConfig
from jaxcl.engine.evaluate import evaluate_task
from jaxcl.engine.sharding import shard_batch, shard_params
from jaxcl.eval import metrics as M
from jaxcl.fit import default_optimizer, start_task


class RunDirError(RuntimeError):
    """The output directory holds a different run (or is unusable)."""


@dataclasses.dataclass
class Result:
    """What a CL run produced. ``R[i, j]``: accuracy on task j after training task i (NaN for j > i)."""

    task_names: list[str]
    R: np.ndarray
    metrics: dict[str, Any]
    params: Any
    memory: Any
    reports: list[dict[str, float]]
    run_dir: Path | None = None


@dataclasses.dataclass
class EncodedStream:
    tasks: list[Any]  # TaskData
    encoded: list[Any]  # EncodedTask


def encode_stream(stream, tokenizer, config: RunConfig) -> EncodedStream:
    from jaxcl.data.prompts import encode_task

    return EncodedStream(
        tasks=list(stream),
        encoded=[encode_task(t, tokenizer, config.max_length, config.with_task_prefix) for t in stream],
    )


def _task_batches(enc, config: RunConfig, pad_id: int, task_index: int, answer_len: int) -> list[dict]:
    from jaxcl.data.batching import train_batches

    out = []
    for epoch in range(config.epochs):
        out += train_batches(
            enc.train_prompts, enc.train_answers, config.batch_size, pad_id, answer_len,
            buckets=config.buckets, seed=config.seed * 1000 + task_index, epoch=epoch,
        )
    return out


def _merge_for_joint(encoded: list) -> Any:
    """One training set of all tasks' examples (the MTL regime)."""
    first = encoded[0]
    return dataclasses.replace(
        first,
        train_prompts=[p for e in encoded for p in e.train_prompts],
        train_answers=[a for e in encoded for a in e.train_answers],
    )


class _Log:
    def __init__(self, path: Path | None):
        self.f = open(path, "a") if path else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()


def run_stream(
    method: Method,
    model,
    stream: Sequence[Any],
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    fsdp: bool = False,
    encoded: EncodedStream | None = None,
) -> Result:
    """Train ``method`` on ``model`` through ``stream`` (a list of ``jaxcl.data.TaskData``).

    Args:
      method: a composed ``Method`` (e.g. ``jaxcl.methods.get_method("olora")``).
      model: a ``jaxcl.Model`` (config, params, tokenizer).
      stream: the tasks in training order.
      config: a ``RunConfig`` (resolved against its preset here).
      run_dir: where checkpoints, logs and metrics go (None: nothing is written, no resume).
      resume: continue from the checkpoints in ``run_dir``.
      progress: show tqdm progress bars.
      mesh: a ``jax.sharding.Mesh`` with a "data" axis (``jaxcl.engine.sharding.data_mesh()``):
        batches are sharded over it and the parameters replicated, or split FSDP-style with
        ``fsdp=True`` (multi-host: call ``jax.distributed.initialize()`` first).
    """
    config = config.resolved()
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("run_stream needs a model with a tokenizer")
    mcfg = model.config
    pad_id = mcfg.eos_token_id if mcfg.eos_token_id is not None else 0
    enc = encoded or encode_stream(stream, tokenizer, config)
    names = [t.name for t in enc.tasks]
    T = len(names)
    answer_len = max(e.answer_len for e in enc.encoded)
    max_new_tokens = answer_len + 1

    run_dir = Path(run_dir) if run_dir else None
    ckpts = RunCheckpoints(run_dir) if run_dir else None
    log = _Log(run_dir / "log.jsonl" if run_dir else None)
    place_params = (lambda t: t) if mesh is None else (lambda t: shard_params(t, mesh, fsdp))
    place_batch = (lambda b: b) if mesh is None else (lambda b: shard_batch(b, mesh))

    base_params = place_params(model.params)
    params, memory = base_params, method.init_memory(base_params)
    R = np.full((T, T), np.nan)
    reports: list[dict[str, float]] = []
    evals: dict[str, Any] = {}
    first_task = 0
    if resume and ckpts is not None:
        latest = ckpts.latest_task()
        if latest is not None:
            done, meta = latest
            params, memory = ckpts.restore_task(done, base_params)
            params, memory = place_params(params), place_params(memory)
            R = np.array(meta["R"], dtype=float)
            reports = meta.get("reports", [])
            evals = meta.get("evals", {})
            first_task = done + 1

    joint = method.regime == "joint"
    schedule = [("+".join(names), _merge_for_joint(enc.encoded), list(range(T)))] if joint else [
        (n, e, [i]) for i, (n, e) in enumerate(zip(names, enc.encoded))
    ]
    compute_dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None

    bar_tasks = _tqdm(total=len(schedule), initial=first_task, desc=f"{method.name}: tasks", disable=not progress)
    try:
        for t_idx in range(first_task, len(schedule)):
            tname, tenc, covered = schedule[t_idx]
            batches = _task_batches(tenc, config, pad_id, t_idx, answer_len)
            prefix_len = shared_prefix_len(tenc.train_prompts) if config.share_prefix else 0
            n_steps = len(batches)
            task = TaskInfo(index=t_idx, name=tname, num_tasks=len(schedule), config=mcfg,
                            batches=lambda b=batches: iter(b), num_steps=n_steps)
            key = jax.random.fold_in(jax.random.PRNGKey(config.seed), t_idx)
            lr = config.learning_rate or _recommended_lr(method, t_idx) or 1e-3
            params, memory, trainable, _, opt_state, step_fn = start_task(
                method, mcfg, params, memory, task, default_optimizer(lr, config.weight_decay, config.clip_norm), key,
                compute_dtype, config.grad_accum, place_params)
            step0 = 0
            if resume and ckpts is not None:
                infl = ckpts.inflight()
                if infl is not None and infl.get("task_index") == t_idx:
                    trainable, opt_state = ckpts.restore_inflight(trainable, opt_state)
                    step0 = int(infl["step"])
            bar = _tqdm(total=n_steps, initial=step0, desc=f"task {t_idx + 1}/{len(schedule)} {tname}",
                        leave=False, disable=not progress)
            for s in range(step0, n_steps):
                batch = batches[s] if not prefix_len else split_prefix(batches[s], prefix_len)
                batch = place_batch(jax.tree.map(jnp.asarray, batch))
                t0 = time.perf_counter()
                trainable, opt_state, m = step_fn(trainable, opt_state, params, memory, batch, s, n_steps)
                m = {k: float(v) for k, v in m.items()}
                dt = time.perf_counter() - t0
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(
                        f"task {t_idx} ({tname}): non-finite loss {m['loss']} at step {s}; stopped, "
                        f"the last good checkpoint is kept"
                    )
                ntok = int(np.sum(batches[s]["attention_mask"]))
                log.write({"task": t_idx, "task_name": tname, "step": s, "time_s": dt, "tokens_per_s": ntok / dt,
                           "shared_prefix": prefix_len, **m})
                bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{ntok / dt:.0f}")
                bar.update(1)
                if ckpts is not None and config.checkpoint_every and (s + 1) % config.checkpoint_every == 0 and s + 1 < n_steps:
                    ckpts.save_inflight(t_idx, s + 1, trainable, opt_state, {"method": method.name})
            bar.close()
            reports.append(method.report(params, trainable, memory))
            params, memory = method.end_task(params, trainable, memory, task)

            # evaluate on every task seen so far, with the deployed weights (no task id)
            deployed = jax.jit(lambda p, m_: deployed_params(method, p, m_))(params, memory)
            seen = range(T) if joint else range(t_idx + 1)
            row = t_idx if not joint else 0
            for j in _tqdm(seen, desc="eval", leave=False, disable=not progress):
                e, td = enc.encoded[j], enc.tasks[j]
                ev = evaluate_task(mcfg, deployed, tokenizer, e.test_prompts, e.test_labels, td.labels,
                                   config.eval_batch_size, max_new_tokens, config.buckets, config.share_prefix)
                R[row, j] = ev.accuracy
                evals[f"{row}/{j}"] = {"accuracy": ev.accuracy, "confusion": ev.confusion,
                                       "examples": list(zip(e.test_labels[:5], ev.predictions[:5]))}
                log.write({"event": "eval", "after_task": row, "task": j, "task_name": names[j], "accuracy": ev.accuracy})
            if joint:
                R[:] = R[0]  # one model for all tasks: every "step" row is the same
            if ckpts is not None:
                ckpts.save_task(t_idx, params, base_params, memory,
                                {"R": R.tolist(), "reports": reports, "evals": evals, "names": names})
            bar_tasks.update(1)
    finally:
        bar_tasks.close()
        log.close()

    summary = M.summary(R)
    return Result(task_names=names, R=R, metrics={"summary": summary, "reports": reports, "evals": evals},
                  params=params, memory=memory, reports=reports, run_dir=run_dir)


def _recommended_lr(method: Method, task_index: int) -> float | None:
    from jaxcl.methods import recommended_learning_rate

    return recommended_learning_rate(method.name, task_index)


def _tqdm(*args, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)
