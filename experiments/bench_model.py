"""Benchmark: SmolLM2-135M forward, jaxcl (jit, scan and unrolled layers) vs transformers (PyTorch eager).

Same weights (the embedded GGUF), same batch (B x T random tokens), same process, same CPU.
Prints a Markdown table: compile time, median forward time over --runs runs after warm-up,
tokens/s, and the ratio against PyTorch measured in this run. Usage:

    python experiments/bench_model.py [--batch 8] [--seq 128] [--runs 5] [--out experiments/results/bench_model.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import numpy as np


def timed(fn, runs):
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import jax
    import torch
    import transformers

    import jaxcl
    from jaxcl.models import llama
    from jaxcl.models.pretrained import embedded_model_path

    B, T = args.batch, args.seq
    tokens = np.random.default_rng(0).integers(3, 49152, size=(B, T)).astype(np.int32)
    ntok = B * T
    rows = []

    model = jaxcl.load_pretrained("smollm2-135m", tokenizer=False)
    for scan in (True, False):
        cfg = dataclasses.replace(model.config, scan_layers=scan)
        fwd = jax.jit(llama.apply, static_argnums=0)
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(cfg, model.params, tokens))
        compile_s = time.perf_counter() - t0
        sec = timed(lambda: jax.block_until_ready(fwd(cfg, model.params, tokens)), args.runs)
        rows.append((f"jaxcl jit ({'scan' if scan else 'unrolled'} layers)", compile_s, sec))

    path = embedded_model_path("smollm2-135m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32, local_files_only=True).eval()
    tt = torch.tensor(tokens, dtype=torch.long)
    with torch.inference_mode():
        sec = timed(lambda: hf(tt).logits, args.runs)
    rows.append(("transformers eager (PyTorch)", float("nan"), sec))

    ref = rows[-1][2]
    lines = [
        f"SmolLM2-135M forward, batch {B} x {T} tokens, float32, median of {args.runs} runs after warm-up",
        f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "",
        "| implementation | compile (s) | forward (s) | tokens/s | speed vs PyTorch |",
        "|---|---|---|---|---|",
    ]
    for name, c, s in rows:
        lines.append(f"| {name} | {'–' if np.isnan(c) else f'{c:.1f}'} | {s:.3f} | {ntok / s:,.0f} | {ref / s:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
