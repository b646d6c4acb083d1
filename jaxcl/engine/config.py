"""Run configuration of the CL engine and its presets (``quick`` for a 2-core CPU, ``paper``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # ~15 minutes on a 2-core CPU with SmolLM2-135M on the embedded standard benchmark
    "quick": dict(max_train=200, max_test=50, max_length=128, batch_size=8, epochs=1, buckets=(96, 128)),
    # the long sequence (15 tasks) on a 2-core CPU: half the examples, ~30 minutes per method
    "quick-long": dict(max_train=100, max_test=30, max_length=128, batch_size=8, epochs=1, buckets=(96, 128)),
    # the papers' settings (for a GPU): full train/test sets, 512 tokens, effective batch 64, 1 epoch
    "paper": dict(max_train=None, max_test=None, max_length=512, batch_size=64, epochs=1,
                  buckets=(128, 256, 384, 512)),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a CL run (saved as ``config.json`` in the run directory).

    Fields left ``None`` are filled from the preset; explicit values win over the preset.
    """

    method: str = "olora"
    benchmark: str = "standard"
    order: int = 1
    tasks: tuple[str, ...] | None = None  # an explicit task list overrides benchmark/order
    model: str = "smollm2-135m"
    data_dir: str | None = None
    preset: str = "quick"
    max_train: int | None = None
    max_test: int | None = None
    max_length: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    buckets: tuple[int, ...] | None = None
    learning_rate: float | None = None  # None: the method's recommended rate, else 1e-3
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    grad_accum: int = 1
    compute_dtype: str = "float32"  # or "bfloat16" (mixed precision: fp32 master weights)
    seed: int = 0
    eval_batch_size: int = 16
    with_task_prefix: bool = True
    share_prefix: bool = True  # run a task's common prompt head once per batch (same math, fewer FLOPs)
    checkpoint_every: int = 10  # optimizer steps between mid-task checkpoints (0: task ends only)
    method_kwargs: tuple[tuple[str, Any], ...] = ()

    def resolved(self) -> "RunConfig":
        """A copy with the preset's values filled in (raises ValueError for an unknown preset)."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        out = dataclasses.replace(self, **fill)
        if out.batch_size < 1 or out.epochs < 1 or out.max_length < 16:
            raise ValueError(f"bad run config: batch_size={out.batch_size}, epochs={out.epochs}, max_length={out.max_length}")
        if max(out.buckets) > out.max_length:
            out = dataclasses.replace(out, buckets=tuple(b for b in out.buckets if b < out.max_length) + (out.max_length,))
        return out

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks) if self.tasks else None
        d["buckets"] = list(self.buckets) if self.buckets else None
        d["method_kwargs"] = dict(self.method_kwargs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}")
        d = dict(d)
        if d.get("tasks"):
            d["tasks"] = tuple(d["tasks"])
        if d.get("buckets"):
            d["buckets"] = tuple(d["buckets"])
        d["method_kwargs"] = tuple(sorted((d.get("method_kwargs") or {}).items()))
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)
