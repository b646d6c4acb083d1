"""Benchmark: jaxcl vs PyTorch + PEFT on the same SmolLM2-135M weights, the same batches, the same machine.

Both sides load the embedded Q4_1 GGUF (dequantised to float32): jaxcl with
``jaxcl.load_pretrained("smollm2-135m")``, transformers with ``from_pretrained(gguf_file=...)``
(offline). A first check per batch shape asserts that they give the same logits (max |Δ| below
``--logits-tol``) and the same answer loss, and reports whether greedy generations agree.

(a) Identical step at an identical batch, for every shape of ``--shapes`` (default 8x128 and 4x512;
    every row is exactly T real tokens of dbpedia prompts, ending in the label + EOS):
    - train step, LoRA: jaxcl ``seqlora`` vs PEFT ``LoraConfig`` (r 8, α 32, q_proj + v_proj, no dropout)
    - train step, OSF: jaxcl ``osft`` (rank_rule "fixed", ratio --osf-ratio, preserve_pretrained: dense
      weights, projected AdamW update) vs PEFT ``OSFConfig(effective_rank=--osf-ratio)`` (factorised
      U_low S_low V_low, gradient hooks), all 7 linear weights of every layer; ``osf-factorised``
      (not in the default --methods): jaxcl's ``osft`` with ``factorised=True``, PEFT's own form
      (trainable U_low, s_low, V_low, thin low-rank forward), vs the same PEFT OSF
    - train step, full FT: jaxcl ``seqft`` vs plain PyTorch training the same 7 linear weights
    - forward: logits [B, T, V]
    - generation: --new-tokens greedy tokens after the B x T prompt (KV cache on both sides)
    AdamW (β 0.9/0.999, ε 1e-8, no weight decay) after global-norm clipping at 1.0; learning rate
    --lr-lora (1e-3) and --lr-full (1e-5, the OSFT preset's rate; used for OSF and full FT). The loss
    is the mean cross-entropy over the answer tokens: jaxcl's ``answer_loss`` projects only the
    answer positions onto the vocabulary, transformers computes the full LM head [B, T, V] and
    ignores the other positions (labels -100): each side's natural way, on the same batch.
(b) End to end: one epoch over --e2e-examples examples of the first standard task (dbpedia, from
    ``jaxcl.data``, max_length --e2e-max-length, batch 8, the same token ids on both sides), each
    side's usual practice: jaxcl with its engine's training loop (``train_batches`` length buckets,
    one jit step per bucket, ``float(metrics)`` every step, the task's common prompt head run once
    per batch (``split_prefix``; off with --e2e-no-shared-prefix), as ``jaxcl.engine.runner``); PyTorch +
    PEFT with a plain loop over shuffled batches padded to the longest row (dynamic padding).
    The time includes jax's compilation and each side's method setup (PEFT wrapping, SVDs).

Every configuration runs in its own subprocess (``--worker``), so its peak memory is its own. Timings
are the median of --runs calls after one warm-up call (for jax the warm-up includes compilation,
reported as "compile" = first call - median call). Peak memory on CPU is the peak resident set size
(VmHWM of /proc/self/status) of the worker over the timed calls: it is reset after model loading and
the warm-up through /proc/self/clear_refs (falls back to ``ru_maxrss`` of the whole worker where
that is not allowed). torch uses as many threads as the process may use cores
(``torch.set_num_threads(len(os.sched_getaffinity(0)))``); jax keeps XLA's default CPU thread pool
(not set here). On a GPU (``jax.devices()[0].platform == "gpu"``) both sides run on it, torch with TF32
matmuls (``set_float32_matmul_precision("high")``, XLA's default for float32 dots on GPU), peak
memory is the device allocator's peak, and MFU is reported (model FLOPs in ``model_flops``;
peak FLOP/s in ``PEAK_TFLOPS``, dense TF32).

Usage:

    python experiments/bench_vs_torch.py       # the full measurement, writes results/bench_vs_torch.md
                                               # (42 min on one core of a 2-core EPYC, the other busy)
    taskset -c 0 python experiments/bench_vs_torch.py --quick   # smoke run: shape 2x32, 2 timed calls,
                                               # 16 e2e examples, prints only (about 7 min on one core)
    python experiments/bench_vs_torch.py --parts verify,train --methods lora --shapes 8x128

Flags: --shapes BxT,... --runs N --methods lora,osf,full --parts verify,train,forward,generate,e2e
--e2e-methods lora[,osf,full] --e2e-examples N --new-tokens N --out FILE (--out '' writes nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "smollm2-135m"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=8, alpha=32.0, targets=["q_proj", "v_proj"])
METHODS = {  # our name -> (jaxcl preset, PyTorch side)
    "lora": ("seqlora", "PEFT LoRA"),
    "osf": ("osft", "PEFT OSF"),
    "osf-factorised": ("osft factorised", "PEFT OSF"),
    "full": ("seqft", "plain full FT"),
}
# Dense peak FLOP/s (TFLOP/s) by device name (NVIDIA data sheets, SXM parts unless named).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
MFU_PRECISION = "tf32"  # float32 weights, TF32 matmuls on both sides (module docstring)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_vs_torch.md"


# ============================================================================= measuring


def cores() -> int:
    """How many cores this process may run on (the affinity mask; taskset respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """VmHWM of this process in MiB (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_then_time(fn, runs: int, after_warmup=reset_peak_rss) -> tuple[float, list[float], bool]:
    """One warm-up call (for jax: compilation included), ``after_warmup()`` (resets the peak-memory
    counter), then ``runs`` timed calls. ``fn`` must block until its results exist.
    Returns (seconds of the warm-up call, seconds of each timed call, what after_warmup returned)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reset = after_warmup()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times, reset


def model_flops(dims: dict, kind: str, B: int, T: int, new_tokens: int = 0) -> float:
    """Model FLOPs of one call (for MFU), the same count for both sides.

    Forward per sequence of T tokens: 2·T·N_linear (the 7 projections of every layer) + 4·L·T²·H·E
    (QKᵀ and PV, causal mask not discounted) + 2·T·D·V (full LM head). A train step counts
    3 x forward (the dense-training convention, also for LoRA/OSF). Generation: prefill (head at
    the last position only) + per new token one position over a cache of ~T keys.
    """
    L, D, F, V, HE, KE = (dims[k] for k in ("L", "D", "F", "V", "HE", "KE"))
    n_linear = L * (D * HE + 2 * D * KE + HE * D + 3 * D * F)

    def fwd(tokens, keys, head_positions):
        return 2 * tokens * n_linear + 4 * L * tokens * keys * HE + 2 * head_positions * D * V

    if kind == "train":
        return 3.0 * B * fwd(T, T, T)
    if kind == "forward":
        return 1.0 * B * fwd(T, T, T)
    if kind == "generate":
        return 1.0 * B * (fwd(T, T, 1) + sum(fwd(1, T + i + 1, 1) for i in range(new_tokens)))
    return float("nan")


# ============================================================================= data (parent)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for s in text.split(","):
        b, t = s.lower().split("x")
        out.append((int(b), int(t)))
    return out


def _context_rows(enc, B: int, T: int, with_answer: bool) -> tuple[list[list[int]], list[list[int]]]:
    """B rows of exactly T real tokens: earlier examples as left context, then example i's prompt
    (and, for training, its answer). Real dbpedia text, so greedy argmaxes are not near ties."""
    n = len(enc.train_prompts)
    full = [p + a for p, a in zip(enc.train_prompts, enc.train_answers)]
    prompts, answers = [], []
    for i in range(B):
        answer = list(enc.train_answers[i % n]) if with_answer else []
        need = T - len(answer)
        ctx, j = list(enc.train_prompts[i % n]), i
        while len(ctx) < need:
            j -= 1
            ctx = full[j % n] + ctx
        prompts.append(ctx[-need:])
        answers.append(answer)
    return prompts, answers


def prepare_data(args, work: Path) -> dict:
    """Tokenise once (shared by every worker): the (a) batches per shape and the (b) task's ids."""
    from jaxcl.batch import collate_train
    from jaxcl.data import encode_task, load_task
    from jaxcl.models.pretrained import embedded_model_path, load_tokenizer

    tok = load_tokenizer(embedded_model_path(MODEL))
    task = load_task(args.task, max_train=args.e2e_examples, seed=0)
    pad_id = int(tok.eos_token_id)
    long = encode_task(task, tok, max_length=1 << 16)  # untruncated prompts as the (a) filler text
    files = {}
    for B, T in args.shape_list:
        prompts, answers = _context_rows(long, B, T, with_answer=True)
        batch = collate_train(prompts, answers, pad_id, T, long.answer_len)
        gen_prompts, _ = _context_rows(long, B, T, with_answer=False)
        path = work / f"batch_{B}x{T}.npz"
        np.savez(path, **batch, gen_tokens=np.asarray(gen_prompts, np.int32), gen_mask=np.ones((B, T), np.int32))
        files[f"{B}x{T}"] = str(path)
    enc = encode_task(task, tok, max_length=args.e2e_max_length)
    e2e = work / "e2e.json"
    e2e.write_text(json.dumps({
        "task": task.name, "prompts": enc.train_prompts, "answers": enc.train_answers,
        "answer_len": enc.answer_len, "pad_id": pad_id, "truncated": enc.n_truncated[0],
    }))
    return {"batches": files, "e2e": str(e2e), "pad_id": pad_id}


# ============================================================================= jaxcl side (worker)


def jax_model():
    import jax

    import jaxcl

    t0 = time.perf_counter()
    model = jaxcl.load_pretrained(MODEL, tokenizer=False)
    jax.block_until_ready(model.params)
    return model, time.perf_counter() - t0


def jax_dims(cfg) -> dict:
    return dict(L=cfg.num_layers, D=cfg.hidden_size, F=cfg.intermediate_size, V=cfg.vocab_size,
                HE=cfg.num_heads * cfg.head_dim, KE=cfg.num_kv_heads * cfg.head_dim)


def jax_method(name: str, osf_ratio: float):
    from jaxcl.methods import get_method

    if name == "lora":
        return get_method("seqlora", rank=LORA["r"], alpha=LORA["alpha"])
    if name == "osf":  # as PEFT's OSF: a fixed preserved fraction of the pretrained weights, from task 0 on
        return get_method("osft", rank_rule="fixed", ratio=osf_ratio, preserve_pretrained=True)
    if name == "osf-factorised":  # the same, in PEFT's own form: trainable U_low, s_low, V_low
        return get_method("osft", factorised=True, rank_rule="fixed", ratio=osf_ratio, preserve_pretrained=True)
    if name == "full":
        return get_method("seqft")
    raise ValueError(f"unknown method {name!r}")


class JaxTrainer:
    """A jaxcl method's state and jit train step, set up as the engine does (``jaxcl.fit.start_task``)."""

    def __init__(self, model, method_name: str, lr: float, osf_ratio: float, batches_fn, num_steps: int):
        import jax

        from jaxcl.core import TaskInfo
        from jaxcl.fit import default_optimizer, start_task

        self.method = jax_method(method_name, osf_ratio)
        self.cfg = model.config
        task = TaskInfo(index=0, name="bench", num_tasks=1, config=self.cfg, batches=batches_fn, num_steps=num_steps)
        self.params, self.memory, self.trainable, _, self.opt_state, self.step_fn = start_task(
            self.method, self.cfg, model.params, self.method.init_memory(model.params), task,
            default_optimizer(lr, 0.0, 1.0), jax.random.PRNGKey(0))
        self.total = num_steps
        self.i = 0
        jax.block_until_ready((self.trainable, self.opt_state, self.memory))

    def step(self, batch) -> dict:
        self.trainable, self.opt_state, m = self.step_fn(
            self.trainable, self.opt_state, self.params, self.memory, batch, self.i, self.total)
        self.i += 1
        return {k: float(v) for k, v in m.items()}  # blocks, as the engine does every step


def jax_train(args, spec, data) -> dict:
    import jax
    import jax.numpy as jnp

    model, load_s = jax_model()
    batch = {k: jnp.asarray(v) for k, v in data.items() if not k.startswith("gen_")}
    lr = args.lr_lora if spec["method"] == "lora" else args.lr_full
    t0 = time.perf_counter()
    trainer = JaxTrainer(model, spec["method"], lr, args.osf_ratio, lambda: iter([batch]), 1000)
    setup_s = time.perf_counter() - t0
    losses = []
    first, times, reset = warm_then_time(lambda: losses.append(trainer.step(batch)["loss"]), args.runs)
    return dict(first_s=first, times=times, setup_s=setup_s, load_s=load_s, rss_reset=reset,
                losses=losses, dims=jax_dims(model.config))


def jax_forward(args, spec, data) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxcl.models import llama

    model, load_s = jax_model()
    tokens, mask = jnp.asarray(data["tokens"]), jnp.asarray(data["attention_mask"])
    fn = lambda: jax.block_until_ready(llama.apply_jit(model.config, model.params, tokens, mask))  # noqa: E731
    first, times, reset = warm_then_time(fn, args.runs)
    return dict(first_s=first, times=times, load_s=load_s, rss_reset=reset, dims=jax_dims(model.config))


def jax_generate(args, spec, data) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxcl.models import llama

    model, load_s = jax_model()
    tokens, mask = jnp.asarray(data["gen_tokens"]), jnp.asarray(data["gen_mask"])
    out = []
    fn = lambda: out.append(np.asarray(llama.generate_jit(model.config, model.params, tokens, mask, args.new_tokens)))  # noqa: E731
    first, times, reset = warm_then_time(fn, args.runs)
    return dict(first_s=first, times=times, load_s=load_s, rss_reset=reset, dims=jax_dims(model.config),
                generated=out[-1].tolist())


def jax_e2e(args, spec, data) -> dict:
    """One epoch as ``jaxcl.engine.runner.run_stream`` trains a task (no evaluation, no checkpoints)."""
    import jax
    import jax.numpy as jnp

    from jaxcl.batch import shared_prefix_len, split_prefix
    from jaxcl.data.batching import train_batches

    model, load_s = jax_model()
    reset = reset_peak_rss()
    lr = args.lr_lora if spec["method"] == "lora" else args.lr_full
    t_start = time.perf_counter()
    batches = train_batches(data["prompts"], data["answers"], args.e2e_batch, data["pad_id"], data["answer_len"],
                            buckets=args.e2e_buckets, seed=0, epoch=0)
    prefix_len = 0 if args.e2e_no_shared_prefix else shared_prefix_len(data["prompts"])
    run = [split_prefix(b, prefix_len) if prefix_len else b for b in batches]
    trainer = JaxTrainer(model, spec["method"], lr, args.osf_ratio, lambda: iter(batches), len(batches))
    setup_s = time.perf_counter() - t_start
    step_times, losses, shapes = [], [], []
    for b in run:
        t0 = time.perf_counter()
        losses.append(trainer.step(jax.tree.map(jnp.asarray, b))["loss"])
        step_times.append(time.perf_counter() - t0)
        shapes.append(int(b["tokens"].shape[1]))
    total = time.perf_counter() - t_start
    return dict(total_s=total, setup_s=setup_s, load_s=load_s, rss_reset=reset, steps=len(batches),
                step_times=step_times, step_shapes=shapes, losses=losses,
                real_tokens=int(sum(b["attention_mask"].sum() for b in batches)),
                padded_tokens=int(sum(b["tokens"].size + b.get("prefix", np.empty(0)).size for b in run)),
                shared_prefix=prefix_len,
                examples=len(data["prompts"]), compile_s=_compile_estimate(step_times, shapes))


def _compile_estimate(step_times: list[float], shapes: list[int]) -> float:
    """Σ over shapes of (first step of that shape - median step of that shape)."""
    total = 0.0
    for s in sorted(set(shapes)):
        ts = [t for t, x in zip(step_times, shapes) if x == s]
        if len(ts) > 1:
            total += max(ts[0] - statistics.median(ts[1:]), 0.0)
    return total


# ============================================================================= PyTorch side (worker)


def torch_setup():
    """Import torch with as many threads as jax gets cores; the device (cuda when jax has a GPU)."""
    import torch

    torch.set_num_threads(cores())
    device = "cpu"
    if _jax_platform() == "gpu" and torch.cuda.is_available():
        device = "cuda"
        torch.set_float32_matmul_precision("high")  # TF32, as XLA's default for float32 dots
    return torch, device


def _jax_platform() -> str:
    """jax's default platform, asked in a throwaway subprocess (keeps jax out of torch workers)."""
    env_platform = os.environ.get("BENCH_JAX_PLATFORM")
    if env_platform:
        return env_platform
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "cpu"


def torch_model(torch, device):
    import transformers

    from jaxcl.models.pretrained import embedded_model_path  # sets the HF offline variables

    path = embedded_model_path(MODEL)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True).to(device)
    return model, time.perf_counter() - t0


def torch_dims(model) -> dict:
    c = model.config
    E = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(L=c.num_hidden_layers, D=c.hidden_size, F=c.intermediate_size, V=c.vocab_size,
                HE=c.num_attention_heads * E, KE=c.num_key_value_heads * E)


def torch_trainable(model, method: str, osf_ratio: float):
    """The model with only ``method``'s parameters trainable (PEFT LoRA / PEFT OSF / 7 linear weights)."""
    import peft

    if method == "lora":
        cfg = peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"],
                              lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        return peft.get_peft_model(model, cfg)
    if method in ("osf", "osf-factorised"):
        cfg = peft.OSFConfig(effective_rank=osf_ratio, target_modules=LINEAR, task_type="CAUSAL_LM")
        return peft.get_peft_model(model, cfg)
    if method == "full":
        for name, p in model.named_parameters():
            p.requires_grad = name.endswith(".weight") and name.split(".")[-2] in LINEAR
        return model
    raise ValueError(f"unknown method {method!r}")


def torch_labels(torch, tokens, attention_mask, target_pos, target_mask):
    """HF labels (-100 except at the answer tokens) from jaxcl's batch: the target at t+1 of target_pos t."""
    labels = torch.full(tokens.shape, -100, dtype=torch.long)
    for i in range(tokens.shape[0]):
        for p, m in zip(target_pos[i], target_mask[i]):
            if m > 0:
                labels[i, int(p) + 1] = int(tokens[i, int(p) + 1])
    return labels


class TorchTrainer:
    """A plain PyTorch training step: forward with labels, backward, clip 1.0, AdamW, zero_grad."""

    def __init__(self, torch, model, method: str, lr: float, osf_ratio: float):
        self.torch = torch
        self.model = torch_trainable(model, method, osf_ratio)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step(self, ids, mask, labels) -> float:
        loss = self.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()  # blocks (and syncs a GPU)


def _torch_batch(torch, data, device):
    ids = torch.tensor(data["tokens"], dtype=torch.long)
    labels = torch_labels(torch, data["tokens"], data["attention_mask"], data["target_pos"], data["target_mask"])
    mask = torch.tensor(data["attention_mask"], dtype=torch.long)
    return ids.to(device), mask.to(device), labels.to(device)


def _torch_reset_peak(torch, device) -> bool:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return reset_peak_rss()


def torch_train(args, spec, data) -> dict:
    torch, device = torch_setup()
    model, load_s = torch_model(torch, device)
    dims = torch_dims(model)
    ids, mask, labels = _torch_batch(torch, data, device)
    lr = args.lr_lora if spec["method"] == "lora" else args.lr_full
    t0 = time.perf_counter()
    trainer = TorchTrainer(torch, model, spec["method"], lr, args.osf_ratio)
    setup_s = time.perf_counter() - t0
    losses = []
    first, times, reset = warm_then_time(lambda: losses.append(trainer.step(ids, mask, labels)), args.runs,
                                         lambda: _torch_reset_peak(torch, device))
    return dict(first_s=first, times=times, setup_s=setup_s, load_s=load_s, rss_reset=reset, losses=losses,
                dims=dims, **_torch_device_info(torch, device))


def torch_forward(args, spec, data) -> dict:
    torch, device = torch_setup()
    model, load_s = torch_model(torch, device)
    model.eval()
    ids, mask, _ = _torch_batch(torch, data, device)

    def fn():
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if device == "cuda":
                torch.cuda.synchronize()
        return logits

    first, times, reset = warm_then_time(fn, args.runs, lambda: _torch_reset_peak(torch, device))
    return dict(first_s=first, times=times, load_s=load_s, rss_reset=reset, dims=torch_dims(model),
                **_torch_device_info(torch, device))


def torch_generate(args, spec, data) -> dict:
    torch, device = torch_setup()
    model, load_s = torch_model(torch, device)
    model.eval()
    ids = torch.tensor(data["gen_tokens"], dtype=torch.long, device=device)
    mask = torch.tensor(data["gen_mask"], dtype=torch.long, device=device)
    T = ids.shape[1]
    out = []

    def fn():
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=spec["pad_id"])
        out.append(seq[:, T:].cpu().numpy())  # blocks

    first, times, reset = warm_then_time(fn, args.runs, lambda: _torch_reset_peak(torch, device))
    return dict(first_s=first, times=times, load_s=load_s, rss_reset=reset, dims=torch_dims(model),
                generated=out[-1].tolist(), **_torch_device_info(torch, device))


def torch_e2e(args, spec, data) -> dict:
    """One epoch with a plain PyTorch loop: shuffled batches of 8, right-padded to the longest row."""
    torch, device = torch_setup()
    model, load_s = torch_model(torch, device)
    reset = _torch_reset_peak(torch, device)
    lr = args.lr_lora if spec["method"] == "lora" else args.lr_full
    t_start = time.perf_counter()
    trainer = TorchTrainer(torch, model, spec["method"], lr, args.osf_ratio)
    setup_s = time.perf_counter() - t_start
    prompts, answers, pad_id = data["prompts"], data["answers"], data["pad_id"]
    order = np.random.default_rng(0).permutation(len(prompts))
    step_times, losses, real, padded = [], [], 0, 0
    for start in range(0, len(order), args.e2e_batch):
        t0 = time.perf_counter()
        rows = order[start:start + args.e2e_batch]
        seqs = [prompts[i] + answers[i] for i in rows]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        for r, (i, s) in enumerate(zip(rows, seqs)):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
            labels[r, len(prompts[i]):len(s)] = torch.tensor(answers[i])
        losses.append(trainer.step(ids.to(device), mask.to(device), labels.to(device)))
        step_times.append(time.perf_counter() - t0)
        real += int(mask.sum())
        padded += ids.numel()
    total = time.perf_counter() - t_start
    return dict(total_s=total, setup_s=setup_s, load_s=load_s, rss_reset=reset, steps=len(step_times),
                step_times=step_times, losses=losses, real_tokens=real, padded_tokens=padded,
                examples=len(prompts), **_torch_device_info(torch, device))


def _torch_device_info(torch, device) -> dict:
    if device != "cuda":
        return {"device": "cpu", "torch_threads": torch.get_num_threads()}
    return {"device": torch.cuda.get_device_name(0), "peak_dev_mib": torch.cuda.max_memory_allocated() / 2**20}


# ============================================================================= verification (worker)


def verify(args, spec, data) -> dict:
    """Same model on both sides: logits, answer loss and greedy tokens at this shape's batch."""
    import jax.numpy as jnp

    from jaxcl.fit import answer_loss
    from jaxcl.models import llama

    torch, device = torch_setup()
    jm, _ = jax_model()
    tm, _ = torch_model(torch, device)
    tm.eval()
    ids, mask, labels = _torch_batch(torch, data, device)
    with torch.inference_mode():
        out = tm(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        ref = out.logits.float().cpu().numpy()
        ref_loss = float(out.loss)
        gen_ids = torch.tensor(data["gen_tokens"], dtype=torch.long, device=device)
        ref_gen = tm.generate(input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), max_new_tokens=args.new_tokens,
                              do_sample=False, eos_token_id=None, pad_token_id=spec["pad_id"])[:, gen_ids.shape[1]:].cpu().numpy()
    batch = {k: jnp.asarray(v) for k, v in data.items() if not k.startswith("gen_")}
    got = np.asarray(llama.apply_jit(jm.config, jm.params, batch["tokens"], batch["attention_mask"]))
    got_loss = float(answer_loss(jm.config, jm.params, batch))
    got_gen = np.asarray(llama.generate_jit(jm.config, jm.params, jnp.asarray(data["gen_tokens"]),
                                            jnp.asarray(data["gen_mask"]), args.new_tokens))
    return dict(max_abs_logit_diff=float(np.abs(got - ref).max()), logit_scale=float(np.abs(ref).max()),
                argmax_agree=float(np.mean(got.argmax(-1) == ref.argmax(-1))),
                loss_jaxcl=got_loss, loss_torch=ref_loss, gen_agree=float(np.mean(got_gen == ref_gen)),
                attn_impl=str(getattr(tm.config, "_attn_implementation", "?")))


WORKERS = {
    ("jaxcl", "train"): jax_train, ("jaxcl", "forward"): jax_forward, ("jaxcl", "generate"): jax_generate,
    ("jaxcl", "e2e"): jax_e2e, ("torch", "train"): torch_train, ("torch", "forward"): torch_forward,
    ("torch", "generate"): torch_generate, ("torch", "e2e"): torch_e2e, ("both", "verify"): verify,
}


def worker_main(args) -> None:
    """Run one configuration and print its result as one ``RESULT {json}`` line."""
    spec = json.loads(args.worker)
    if spec["kind"] == "e2e":
        data = json.loads(Path(spec["data"]).read_text())
    else:
        data = dict(np.load(spec["data"]))
    result = WORKERS[(spec["side"], spec["kind"])](args, spec, data)
    if "device" not in result and spec["side"] == "jaxcl":
        import jax

        dev = jax.devices()[0]
        result["device"] = "cpu" if dev.platform == "cpu" else dev.device_kind
        if dev.platform != "cpu":
            result["peak_dev_mib"] = (dev.memory_stats() or {}).get("peak_bytes_in_use", float("nan")) / 2**20
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# ============================================================================= parent: plan, run, report


def plan(args, files: dict) -> list[dict]:
    """The configurations, one subprocess each; jaxcl and PyTorch of a measurement side by side."""
    jobs = []
    for B, T in args.shape_list:
        shape = f"{B}x{T}"
        common = dict(shape=shape, B=B, T=T, data=files["batches"][shape], pad_id=files["pad_id"])
        if "verify" in args.part_list:
            jobs.append(dict(common, side="both", kind="verify"))
        kinds = [("train", m) for m in args.method_list if "train" in args.part_list]
        kinds += [(k, None) for k in ("forward", "generate") if k in args.part_list]
        for kind, method in kinds:
            for side in ("jaxcl", "torch"):
                jobs.append(dict(common, side=side, kind=kind, method=method))
    if "e2e" in args.part_list:
        for method in args.e2e_method_list:
            for side in ("jaxcl", "torch"):
                jobs.append(dict(side=side, kind="e2e", method=method, data=files["e2e"], pad_id=files["pad_id"]))
    return jobs


def job_name(job: dict) -> str:
    return " ".join(str(x) for x in (job["side"], job["kind"], job.get("method") or "", job.get("shape", "")) if x)


def run_job(job: dict, argv: list[str], env: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = wall
    return result


def _worker_argv(args) -> list[str]:
    """The measurement flags a worker needs (everything but the parent-only ones)."""
    keep = ["--runs", str(args.runs), "--new-tokens", str(args.new_tokens), "--lr-lora", str(args.lr_lora),
            "--lr-full", str(args.lr_full), "--osf-ratio", str(args.osf_ratio), "--e2e-batch", str(args.e2e_batch),
            "--e2e-buckets", ",".join(map(str, args.e2e_buckets))]
    return keep + (["--e2e-no-shared-prefix"] if args.e2e_no_shared_prefix else [])


def device_line(platform_name: str, dev_name: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax
    import peft
    import torch
    import transformers

    where = "CPU" if platform_name == "cpu" else f"GPU {dev_name}"
    return (f"device: {where}; CPU {cpu}, {cores()} cores usable of {os.cpu_count()} "
            f"(torch threads = {cores()}); jax {jax.__version__}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, peft {peft.__version__}; python {platform.python_version()}; "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")


def _median(r: dict) -> float:
    return statistics.median(r["times"]) if r.get("times") else float("nan")


def _fmt(x, spec=".3f", none="–") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return none
    return format(x, spec)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _peak_tflops(dev_name: str) -> float | None:
    for key, table in PEAK_TFLOPS.items():
        if key.lower() in dev_name.lower():
            return table[MFU_PRECISION]
    return None


def _mem(r: dict, gpu: bool) -> float | None:
    return r.get("peak_dev_mib") if gpu else r.get("peak_rss_mib")


def table_a(args, results: dict, gpu: bool, dev_name: str) -> list[str]:
    peak = _peak_tflops(dev_name) if gpu else None
    mem = "peak device memory (MiB)" if gpu else "peak RSS (MiB)"
    head = ["measurement", "B x T", "jaxcl (s)", "PyTorch (s)", "speedup (torch/jaxcl)", "jaxcl tok/s",
            "PyTorch tok/s", "jaxcl compile (s)", "setup jaxcl / torch (s)", f"{mem} jaxcl / torch"]
    if gpu:
        head.append(f"MFU jaxcl / torch ({MFU_PRECISION})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for B, T in args.shape_list:
        shape = f"{B}x{T}"
        rows = [("train", m, f"train {m}: jaxcl {METHODS[m][0]} vs {METHODS[m][1]}") for m in args.method_list
                if "train" in args.part_list]
        rows += [(k, None, label) for k, label in (("forward", "forward (logits)"),
                                                  ("generate", f"generate {args.new_tokens} tokens (greedy)"))
                 if k in args.part_list]
        for kind, method, label in rows:
            j = results.get(("jaxcl", kind, method, shape), {})
            t = results.get(("torch", kind, method, shape), {})
            if "error" in j or "error" in t or not j or not t:
                lines.append(f"| {label} | {B} x {T} | " + ("failed | " * (len(head) - 2)).rstrip())
                continue
            mj, mt = _median(j), _median(t)
            ntok = B * T if kind != "generate" else B * args.new_tokens
            cells = [label, f"{B} x {T}", _fmt(mj), _fmt(mt), f"{mt / mj:.2f}x", _rate(ntok / mj), _rate(ntok / mt),
                     _fmt(max(j["first_s"] - mj, 0.0), ".1f"),
                     f"{_fmt(j.get('setup_s'), '.2f')} / {_fmt(t.get('setup_s'), '.2f')}",
                     f"{_fmt(_mem(j, gpu), ',.0f')} / {_fmt(_mem(t, gpu), ',.0f')}"]
            if gpu:
                flops = model_flops(j["dims"], kind, B, T, args.new_tokens)
                mfu = lambda s: f"{100 * flops / s / (peak * 1e12):.1f}%" if peak else "–"  # noqa: E731
                cells.append(f"{mfu(mj)} / {mfu(mt)}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def table_b(args, results: dict, gpu: bool) -> list[str]:
    mem = "peak device memory (MiB)" if gpu else "peak RSS (MiB)"
    head = ["method", "side", "examples", "steps", "tokens run / real tokens", "total (s)", "of which compile (s)",
            "setup (s)", "examples/s", "real tok/s", mem, "mean loss (last 5 steps)", "speedup (torch/jaxcl)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in args.e2e_method_list:
        j = results.get(("jaxcl", "e2e", m, None), {})
        t = results.get(("torch", "e2e", m, None), {})
        prefix = f", shared prefix {j['shared_prefix']} tokens" if j.get("shared_prefix") else ""
        for side, r, name in (("jaxcl", j, f"jaxcl {METHODS[m][0]} (engine loop, buckets {args.e2e_buckets}{prefix})"),
                              ("torch", t, f"{METHODS[m][1]} (plain loop, dynamic padding)")):
            if not r or "error" in r:
                lines.append(f"| {m} | {name} | " + ("failed | " * (len(head) - 2)).rstrip())
                continue
            speed = f"{t['total_s'] / j['total_s']:.2f}x" if side == "jaxcl" and t and "error" not in t else ""
            cells = [m, name, str(r["examples"]), str(r["steps"]), f"{r['padded_tokens']:,} / {r['real_tokens']:,}",
                     _fmt(r["total_s"], ".1f"), _fmt(r.get("compile_s"), ".1f") if side == "jaxcl" else "–",
                     _fmt(r["setup_s"], ".2f"), _fmt(r["examples"] / r["total_s"], ".2f"),
                     _rate(r["real_tokens"] / r["total_s"]), _fmt(_mem(r, gpu), ",.0f"),
                     _fmt(float(np.mean(r["losses"][-5:])), ".3f"), speed]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def verify_lines(args, results: dict) -> list[str]:
    out = []
    for B, T in args.shape_list:
        v = results.get(("both", "verify", None, f"{B}x{T}"))
        if not v:
            continue
        if "error" in v:
            out.append(f"- {B} x {T}: verification failed: {v['error'].splitlines()[-1]}")
            continue
        out.append(f"- {B} x {T}: max |logits jaxcl - transformers| = {v['max_abs_logit_diff']:.2e} "
                   f"(logits up to {v['logit_scale']:.1f}; argmax agree {100 * v['argmax_agree']:.2f}%), "
                   f"answer loss {v['loss_jaxcl']:.5f} vs {v['loss_torch']:.5f}, greedy tokens agree "
                   f"{100 * v['gen_agree']:.1f}%; transformers attention: {v['attn_impl']}")
    return out


def report(args, results: dict, wall: float) -> str:
    any_r = next((r for r in results.values() if "device" in r), {})
    gpu = any_r.get("device", "cpu") != "cpu"
    dev_name = any_r.get("device", "cpu")
    rss_ok = all(r.get("rss_reset", True) for r in results.values() if "error" not in r)
    lines = [
        "# jaxcl vs PyTorch + PEFT: SmolLM2-135M (embedded Q4_1 GGUF, dequantised to float32)",
        "",
        device_line("gpu" if gpu else "cpu", dev_name),
        "",
        f"command: `python experiments/{Path(__file__).name} {' '.join(sys.argv[1:])}` ({wall / 60:.1f} min in all)",
        "",
        *(["Same weights on both sides (checked at each batch shape before timing):", *verify_lines(args, results)]
          if "verify" in args.part_list else
          ["Same weights on both sides: not checked in this run (--parts without verify; see the full run)."]),
        "",
    ]
    if {"train", "forward", "generate"} & set(args.part_list):
        lines += [f"## (a) Identical step at an identical batch (median of {args.runs} "
                  f"call{'s' if args.runs > 1 else ''} after one warm-up call)",
                  "", *table_a(args, results, gpu, dev_name), ""]
    if "e2e" in args.part_list:
        lines += [f"## (b) End to end: one epoch of {args.task} ({args.e2e_examples} examples, max_length "
                  f"{args.e2e_max_length}, batch {args.e2e_batch})", "", *table_b(args, results, gpu), ""]
    lines += [
        "Notes:",
        "- speedup = PyTorch time / jaxcl time (above 1: jaxcl is faster).",
        "- Batches (a): every row is exactly T real tokens of dbpedia text ending in an O-LoRA prompt's `Answer:` "
        "and the label + EOS (the answer tokens are the loss targets); tok/s counts B·T tokens (generation: B·new tokens).",
        "- Loss: mean cross-entropy over the answer tokens on both sides. jaxcl (`jaxcl.fit.answer_loss`) projects "
        "only the answer positions onto the 49k vocabulary; transformers computes the full LM head [B, T, V] "
        "and ignores the other positions (labels -100). Each side's natural way, same batch, same loss value.",
        f"- Optimizer: global-norm clip 1.0, AdamW β (0.9, 0.999), ε 1e-8, no weight decay; lr {args.lr_lora:g} "
        f"(LoRA), {args.lr_full:g} (OSF, full FT). No dropout, no gradient checkpointing, float32 everywhere.",
        f"- LoRA: r {LORA['r']}, α {LORA['alpha']:g} on q_proj, v_proj (jaxcl `seqlora`; PEFT `LoraConfig`). "
        f"OSF: preserved fraction {args.osf_ratio:g} of min(d_in, d_out) of all 7 linear weights per layer, from "
        "the pretrained weights (jaxcl `osft` with rank_rule='fixed', preserve_pretrained=True: dense weights, "
        "AdamW update projected off the preserved subspaces; PEFT `OSFConfig(effective_rank=...)`: trains the "
        "factorised low part U_low S_low V_low with projected gradients; jaxcl `osft factorised` "
        "(factorised=True) trains the same factors through a thin low-rank forward, one-sided projected). "
        "Full FT: the 7 linear weights (jaxcl "
        "`seqft`; PyTorch: requires_grad on those weights only). 'setup' is the method's start (PEFT wrapping, "
        "SVDs, adapter and optimizer init).",
        "- jaxcl compile = first call - median call (the warm-up call includes compilation; it is excluded "
        "from the median). PyTorch runs eagerly (no torch.compile).",
        "- Memory: " + ("the device allocator's peak (jax `peak_bytes_in_use` over the worker; torch "
                        "`max_memory_allocated` after warm-up)" if gpu else
                        "peak resident set size (VmHWM) of the configuration's own subprocess during the timed "
                        "calls, reset after model loading and warm-up via /proc/self/clear_refs"
                        + ("" if rss_ok else " (reset NOT allowed here: whole-process ru_maxrss, loading included)")
                        + "; it includes the model weights and, for jax, its compiled programs") + ".",
        "- (b): both sides start from the same token ids (`jaxcl.data.encode_task`, max_length "
        f"{args.e2e_max_length}). Total time = method setup + batching + every step, jax compilation included "
        "('of which compile' estimates it: first step of each bucket shape - median step of that shape). "
        "Model loading is excluded on both sides. jaxcl pads each batch to its length bucket (fixed shapes, "
        "a bucket's last partial batch filled with empty rows) and, as its engine does, runs the prompt head "
        "that every example of the task shares (instruction and options) once per batch, its keys/values "
        "broadcast to the rows (`jaxcl.batch.split_prefix`, same loss and gradients; 'tokens run' counts the "
        "head once per batch); PyTorch pads each batch to its longest row and runs every row in full.",
    ]
    if gpu:
        lines.append(f"- MFU = model FLOPs (`model_flops`: 2·N_linear per token, 4·L·T²·H·E attention, full LM head; "
                     f"train = 3 x forward for every method) / time / peak; peak = dense {MFU_PRECISION.upper()} of "
                     f"{dev_name} from `PEAK_TFLOPS` (NVIDIA data sheet), both sides using TF32 matmuls.")
    failed = [f"{' '.join(str(x) for x in k if x)}: {r['error']}" for k, r in results.items() if "error" in r]
    if failed:
        lines += ["", "Failed configurations:", *[f"- {f.splitlines()[0]}" for f in failed]]
    return "\n".join(lines) + "\n"


def parent_main(args) -> None:
    t_all = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_torch_") as tmp:
        files = prepare_data(args, Path(tmp))
        # no jax GPU preallocation: the verify worker shares the GPU with torch, and the allocator's
        # peak then reflects what a configuration uses
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", BENCH_JAX_PLATFORM=_jax_platform(),
                   TOKENIZERS_PARALLELISM="false", XLA_PYTHON_CLIENT_PREALLOCATE="false")
        jobs = plan(args, files)
        for n, job in enumerate(jobs, 1):
            print(f"[{n}/{len(jobs)}] {job_name(job)} ...", end=" ", flush=True)
            r = run_job(job, _worker_argv(args), env)
            key = (job["side"], job["kind"], job.get("method"), job.get("shape"))
            results[key] = r
            if "error" in r:
                print(f"FAILED ({r['wall_s']:.0f}s)\n{r['error']}", flush=True)
            elif job["kind"] == "verify":
                print(f"max|Δlogits| {r['max_abs_logit_diff']:.2e}, loss {r['loss_jaxcl']:.5f} vs {r['loss_torch']:.5f}, "
                      f"greedy agree {100 * r['gen_agree']:.0f}% ({r['wall_s']:.0f}s)", flush=True)
                if r["max_abs_logit_diff"] > args.logits_tol and not args.no_assert:
                    raise SystemExit(f"jaxcl and transformers logits differ by {r['max_abs_logit_diff']:.2e} > "
                                     f"--logits-tol {args.logits_tol:g} at {job['shape']}: not the same model")
            elif job["kind"] == "e2e":
                print(f"{r['total_s']:.1f}s for {r['steps']} steps ({r['wall_s']:.0f}s)", flush=True)
            else:
                print(f"median {_median(r):.3f}s, first {r['first_s']:.2f}s ({r['wall_s']:.0f}s)", flush=True)
    text = report(args, results, time.perf_counter() - t_all)
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: shape 2x32, 2 runs, 16 e2e examples, no .md (explicit flags still win)")
    ap.add_argument("--shapes", default=None, help="comma-separated BxT (default 8x128,4x512)")
    ap.add_argument("--runs", type=int, default=None, help="timed calls after the warm-up (default 5)")
    ap.add_argument("--methods", default="lora,osf,full",
                    help="train-step methods: lora,osf,osf-factorised,full (osf-factorised: jaxcl's factorised OSFT)")
    ap.add_argument("--parts", default="verify,train,forward,generate,e2e")
    ap.add_argument("--e2e-methods", default="lora", help="end-to-end methods (lora,osf,full)")
    ap.add_argument("--e2e-examples", type=int, default=None, help="examples of the e2e epoch (default 200)")
    ap.add_argument("--e2e-max-length", type=int, default=128, help="the engine's 'quick' preset max_length")
    ap.add_argument("--e2e-batch", type=int, default=8)
    ap.add_argument("--e2e-buckets", default="96,128", help="jaxcl length buckets (the 'quick' preset's)")
    ap.add_argument("--e2e-no-shared-prefix", action="store_true",
                    help="jaxcl e2e: run every row in full (the engine's share_prefix=False)")
    ap.add_argument("--task", default="dbpedia")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-full", type=float, default=1e-5)
    ap.add_argument("--osf-ratio", type=float, default=0.8, help="preserved fraction (jaxcl osft preset's mean trr)")
    ap.add_argument("--logits-tol", type=float, default=1e-3, help="max |Δlogits| accepted as the same model")
    ap.add_argument("--no-assert", action="store_true", help="report a logits mismatch instead of stopping")
    ap.add_argument("--out", default=None, help=f"Markdown output (default {DEFAULT_OUT}; --quick: none; '' none)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.shapes = args.shapes or ("2x32" if quick else "8x128,4x512")
    args.runs = args.runs or (2 if quick else 5)
    args.e2e_examples = args.e2e_examples or (16 if quick else 200)
    if args.out is None:
        args.out = "" if quick else str(DEFAULT_OUT)
    args.shape_list = parse_shapes(args.shapes)
    args.method_list = [m for m in args.methods.split(",") if m]
    args.part_list = [p for p in args.parts.split(",") if p]
    args.e2e_method_list = [m for m in args.e2e_methods.split(",") if m]
    args.e2e_buckets = tuple(int(x) for x in str(args.e2e_buckets).split(","))
    for m in args.method_list + args.e2e_method_list:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    if args.runs < 1:
        raise SystemExit("--runs must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
