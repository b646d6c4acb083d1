"""Benchmark: train-step time of every CL method on SmolLM2-135M, relative to its plain counterpart.

Adapter methods are compared with plain LoRA (`seqlora`), full-weight methods (`osft`) with plain
full fine-tuning (`seqft`), all measured in this run on the same batch (B x T random tokens with
4 answer tokens), at the *second* task of a stream (so memories — frozen adapters, past updates,
bases — exist). Also prints each method's task setup time, column "begin_task" (``jaxcl.fit.start_task``:
begin_task, e.g. OSFT's SVD of every target + importance, then the fresh trainable and optimizer
state), and its trained / optimizer-state floats (the optimizer state includes OSFT's bases).
Median of --runs steps after a warm-up step (which includes compilation, reported separately).
A method may carry hyper-parameter overrides, ``name:key=value:key=value`` (Python literals), e.g.
``osft:project_gradients=False`` (the final update projected, not the gradient).

``--memory`` times nothing: it compiles each method's step for the same batch and reports XLA's
memory analysis of it (temporaries: activations kept for the backward pass and scratch; arguments:
weights, trainables, optimizer state, memories, batch), against the same reference. It needs no
quiet machine, and the header names the jaxcl checkout measured, so
``PYTHONPATH=<another checkout> python experiments/bench_methods.py --memory`` measures another revision.

    python experiments/bench_methods.py [--batch 8] [--seq 128] [--runs 5] [--methods a,b] [--memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ADAPTER_REF, FULL_REF = "seqlora", "seqft"
FULL_METHODS = {"seqft", "osft"}


def parse_method(spec: str) -> tuple[str, dict]:
    """``"osft:project_gradients=False"`` -> ``("osft", {"project_gradients": False})``."""
    from jaxcl.methods import parse_hyperparams

    name, *overrides = spec.split(":")
    return name, parse_hyperparams(overrides)


def jaxcl_revision(jaxcl) -> str:
    """The imported jaxcl's checkout and git commit (with "+changes" when its tree differs from it)."""
    root = Path(jaxcl.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "jaxcl"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(root)
    return f"{root.name} @ {rev}" + ("+changes" if dirty else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    ap.add_argument("--memory", action="store_true", help="XLA memory of each compiled step instead of timings")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    import jaxcl
    from jaxcl.batch import collate_train
    from jaxcl.core import TaskInfo
    from jaxcl.fit import default_optimizer, start_task
    from jaxcl.methods import available_methods, get_method

    model = jaxcl.load_pretrained("smollm2-135m", tokenizer=False)
    cfg, base = model.config, model.params
    B, T = args.batch, args.seq
    rng = np.random.default_rng(0)
    batch = collate_train([list(rng.integers(3, 49152, T - 4)) for _ in range(B)], [[5, 6, 7, 2]] * B, 2, T, 4)
    batch = jax.tree.map(jnp.asarray, batch)
    skip = {"mtl"}  # mtl is seqlora's step
    names = args.methods.split(",") if args.methods else [m for m in available_methods() if m not in skip]
    if not args.methods:
        names += ["osft:project_gradients=False", "osft:factorised=True",
                  "osft:factorised=True:rank_rule='fixed':ratio=0.8"]
    for ref in (ADAPTER_REF, FULL_REF):
        if ref not in names:
            names.insert(0, ref)

    def second_task(name):
        """(params, memory, trainable, opt_state, step, begin_task seconds) at task 2 of a stream."""
        base_name, overrides = parse_method(name)
        method = get_method(base_name, **overrides)
        params, memory = base, method.init_memory(base)
        # task 1: pretend-trained (random small update), so task 2 has a memory
        t1 = TaskInfo(index=0, name="t1", num_tasks=2, config=cfg, batches=lambda: [batch], num_steps=10)
        params, memory = method.begin_task(params, memory, t1)
        tr = method.init(jax.random.PRNGKey(0), params, memory)
        tr = jax.tree.map(lambda x: x + 1e-3 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)
                          if jnp.issubdtype(x.dtype, jnp.floating) else x, tr)
        params, memory = method.end_task(params, tr, memory, t1)
        t2 = TaskInfo(index=1, name="t2", num_tasks=2, config=cfg, batches=lambda: [batch], num_steps=10)
        t0 = time.perf_counter()
        params, memory, tr, _, opt, step = start_task(method, cfg, params, memory, t2, default_optimizer(1e-4),
                                                      jax.random.PRNGKey(2))
        jax.block_until_ready((memory, tr, opt))
        return params, memory, tr, opt, step, time.perf_counter() - t0

    def reference(name):
        return FULL_REF if parse_method(name)[0] in FULL_METHODS else ADAPTER_REF

    header = [f"Train step on SmolLM2-135M, batch {B} x {T}, float32, second task of a stream; "
              + ("XLA memory analysis of the compiled step" if args.memory else f"median of {args.runs} steps"),
              f"device: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.devices()[0].platform}); "
              f"jaxcl: {jaxcl_revision(jaxcl)}", ""]
    rows = {}
    for name in names:
        params, memory, tr, opt, step, begin_s = second_task(name)
        if args.memory:
            analysis = step.lower(tr, opt, params, memory, batch, 0, 10).compile().memory_analysis()
            rows[name] = (analysis.temp_size_in_bytes / 2**20, analysis.argument_size_in_bytes / 2**20)
            print(f"{name}: temporaries {rows[name][0]:,.0f} MiB, arguments {rows[name][1]:,.0f} MiB", flush=True)
            del tr, opt, step, memory, params
            continue
        t0 = time.perf_counter()
        tr, opt, m = step(tr, opt, params, memory, batch, 0, 10)
        jax.block_until_ready(tr)
        first_s = time.perf_counter() - t0
        ts = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            tr, opt, m = step(tr, opt, params, memory, batch, 1 + i, 10)
            jax.block_until_ready(tr)
            ts.append(time.perf_counter() - t0)
        floats = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))
        rows[name] = (first_s, statistics.median(ts), begin_s, floats(tr), floats(opt))
        print(f"{name}: step {rows[name][1]:.3f}s (first {first_s:.1f}s, begin_task {begin_s:.2f}s, "
              f"{rows[name][3] / 1e6:.1f} M trained, {rows[name][4] / 1e6:.1f} M optimizer-state floats)", flush=True)
        del tr, opt, step, memory, params

    if args.memory:
        lines = header + ["| method | reference | temporaries (MiB) | vs reference | arguments (MiB) | vs reference |",
                          "|---|---|---|---|---|---|"]
        for name, (temp, arg) in rows.items():
            ref = rows[reference(name)]
            lines.append(f"| {name} | {reference(name)} | {temp:,.0f} | {temp / ref[0]:.2f}x | {arg:,.0f} | {arg / ref[1]:.2f}x |")
    else:
        lines = header + ["| method | reference | step (s) | vs reference | first step incl. compile (s) | begin_task (s) "
                          "| trained floats | optimizer-state floats |",
                          "|---|---|---|---|---|---|---|---|"]
        for name, (first_s, step_s, begin_s, n_train, n_opt) in rows.items():
            lines.append(f"| {name} | {reference(name)} | {step_s:.3f} | {step_s / rows[reference(name)][1]:.2f}x | "
                         f"{first_s:.1f} | {begin_s:.2f} | {n_train / 1e6:.1f} M | {n_opt / 1e6:.1f} M |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
