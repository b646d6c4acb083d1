"""Orbax checkpoints of a CL run: one per finished task, plus the latest in-task state.

Layout under ``<run>/checkpoints/``:

    task_003/state/        orbax: {"memory": memory, "params": {path: leaf}}  (only the base
                           leaves the method changed, e.g. SeqFT/OSFT weights; adapters live in memory)
    task_003/meta.json     {"task_index": 3, "rows": R rows so far, ...}   written last = the commit mark
    inflight/state/        orbax: {"trainable": ..., "opt_state": ...} of the task being trained
    inflight/meta.json     {"task_index": 4, "step": 120}

A checkpoint counts only once its ``meta.json`` exists (written atomically after orbax has
committed), so a run killed while saving leaves the previous checkpoint as the latest. Older
task checkpoints are deleted only after a newer one is committed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcl.core import leaf_paths, get_path, set_path


class CheckpointCorrupt(RuntimeError):
    """A checkpoint that exists but cannot be read (the message names the path)."""


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _save_tree(path: Path, tree: Any) -> None:
    if path.exists():
        shutil.rmtree(path)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path.absolute(), tree)
    ckpt.wait_until_finished()
    ckpt.close()


def _restore_tree(path: Path, target: Any = None) -> Any:
    ckpt = ocp.StandardCheckpointer()
    try:
        if target is None:
            return ckpt.restore(path.absolute())
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = ckpt.restore(path.absolute(), abstract)
        return jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored))
    except Exception as e:  # orbax raises many kinds of errors on damaged/incompatible files
        raise CheckpointCorrupt(f"{path}: cannot restore checkpoint ({type(e).__name__}: {e})") from None
    finally:
        ckpt.close()


def changed_leaves(params: Any, base: Any) -> dict[str, Any]:
    """{path: leaf} of the params leaves that are not the very same arrays as in ``base``."""
    return {p: get_path(params, p) for p in leaf_paths(params) if get_path(params, p) is not get_path(base, p)}


class RunCheckpoints:
    """Save/restore the checkpoints of one run directory."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir) / "checkpoints"

    # --- task ends
    def save_task(self, task_index: int, params: Any, base_params: Any, memory: Any, meta: dict) -> None:
        d = self.root / f"task_{task_index:03d}"
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / "meta.json"
        if meta_path.exists():
            meta_path.unlink()  # uncommitted until the new meta is written
        _save_tree(d / "state", {"memory": memory, "params": changed_leaves(params, base_params)})
        _write_json_atomic(meta_path, {**meta, "task_index": task_index})
        for old in self.root.glob("task_*"):
            if old != d and old.is_dir():
                shutil.rmtree(old)
        self.clear_inflight()

    def latest_task(self) -> tuple[int, dict] | None:
        """(index, meta) of the latest committed task checkpoint, or None."""
        best = None
        for d in sorted(self.root.glob("task_*")):
            meta_path = d / "meta.json"
            if not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointCorrupt(f"{meta_path}: unreadable ({e}); delete it or rerun with --overwrite") from None
            best = (int(meta["task_index"]), meta)
        return best

    def restore_task(self, task_index: int, base_params: Any) -> tuple[Any, Any]:
        """(params, memory) saved at the end of task ``task_index``."""
        tree = _restore_tree(self.root / f"task_{task_index:03d}" / "state")
        params = base_params
        for path, leaf in (tree.get("params") or {}).items():
            params = set_path(params, path, jax.numpy.asarray(leaf))
        memory = jax.tree.map(jax.numpy.asarray, tree.get("memory") or {})
        return params, memory

    # --- inside a task
    def save_inflight(self, task_index: int, step: int, trainable: Any, opt_state: Any, extra: dict) -> None:
        d = self.root / "inflight"
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / "meta.json"
        if meta_path.exists():
            meta_path.unlink()
        _save_tree(d / "state", {"trainable": trainable, "opt_state": opt_state})
        _write_json_atomic(meta_path, {**extra, "task_index": task_index, "step": step})

    def inflight(self) -> dict | None:
        meta_path = self.root / "inflight" / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            return json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointCorrupt(f"{meta_path}: unreadable ({e}); delete it or rerun with --overwrite") from None

    def restore_inflight(self, trainable_target: Any, opt_state_target: Any) -> tuple[Any, Any]:
        tree = _restore_tree(self.root / "inflight" / "state", {"trainable": trainable_target, "opt_state": opt_state_target})
        return tree["trainable"], tree["opt_state"]

    def clear_inflight(self) -> None:
        d = self.root / "inflight"
        if d.exists():
            shutil.rmtree(d)
