"""Benchmark OSFT's two step forms and its per-task SVD at SmolLM2-135M and larger LLaMA shapes (not a test).

The 7 target modules of ``--layers`` stacked layers of ``--shapes`` (SmolLM2-135M: q, o: 576×576;
k, v: 576×192; gate, up: 576×1536; down: 1536×576; TinyLlama-1.1B: d 2048, kv 256, ff 5632;
LLaMA-2-7B: d 4096, kv 4096, ff 11008; weights ``[L, d_in, d_out]``), ``k = floor(ratio · min(d_in, d_out))``
preserved directions per matrix (``--ratio 0.8`` = trr, the mean ρ of the adaptive rule). One
step = forward of ``y = x W`` on ``--tokens`` tokens per layer, the loss ``mean‖y − t‖²`` summed
over modules, gradients w.r.t. the weights AND ``x`` (a linear inside a network must return
``dL/dx``), AdamW (wd 0.01), apply; jit-compiled with trainable and optimizer state donated:

- ``full-FT``: plain AdamW on the dense weights (SeqFT; the reference of the ratios).
- ``two-sided``: dense weights, ``jaxcl.optim.project_optimizer(adamw, svd_bases(W, k))``:
  gradient and final update projected by ``(I − U Uᵀ) · (I − V Vᵀ)`` (what ``--method osft`` runs;
  a side with ``d = r`` is applied through its complement ``Free`` basis when narrower); also
  with the final projection only, and with ``Preserve`` sides only (no complement trick).
- ``factorised``: the released codes' form (mini_trainer, PEFT OSF): trainable
  ``U_low [L, d_in, r−k]``, ``s_low [L, r−k]``, ``V_low [L, d_out, r−k]``, frozen dense
  ``W_high = U_k diag(s_k) V_kᵀ``; forward ``x W_high + ((x U_low) ⊙ s_low) V_lowᵀ`` (thin
  low-rank path, mini_trainer); the factor gradients and final updates are projected one-sided
  (``(I − U_k U_kᵀ) dU_low``, ``(I − V_k V_kᵀ) dV_low``) by the same transform and bases.

- ``factorised, dense W rebuilt``: the same factors, forward through the dense
  ``W_high + U_low diag(s_low) V_lowᵀ`` (PEFT OSF; what a jaxcl ``delta`` part would do, since
  ``jaxcl.models.llama`` multiplies dense weights).

SVD: the thin fp32 SVD of all 7 stacked leaves that ``begin_task`` runs once per task
(``svd_bases``), median of ``--svd-runs`` after one warm-up run (which compiles); with
``--svd-layers n`` timed on the first n layers and scaled by ``L / n`` (per-layer SVDs are
independent).

    python3 -m experiments.bench_osft [--shapes smollm2-135m|tinyllama-1.1b|llama2-7b] [--layers 30]
        [--tokens 512] [--ratio 0.8] [--runs 5] [--warmup 1] [--out experiments/results/bench_osft.md]

Prints a Markdown table; ratios are against full-FT measured in the same run, the variants
taking turns step by step (median of ``--runs`` rounds after ``--warmup``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxcl.optim import SubspaceBasis, project_optimizer, svd_bases



def llama_modules(d_model: int, d_kv: int, d_ff: int) -> dict[str, tuple[int, int]]:
    """The 7 target weights ``[d_in, d_out]`` of one LLaMA layer."""
    return {"q": (d_model, d_model), "k": (d_model, d_kv), "v": (d_model, d_kv), "o": (d_model, d_model),
            "gate": (d_model, d_ff), "up": (d_model, d_ff), "down": (d_ff, d_model)}


SHAPES = {"smollm2-135m": llama_modules(576, 192, 1536),       # 30 layers
          "tinyllama-1.1b": llama_modules(2048, 256, 5632),    # 22 layers
          "llama2-7b": llama_modules(4096, 4096, 11008)}       # 32 layers


def _dense_loss(weights, xs, targets):
    return sum(jnp.mean((xs[m] @ w - targets[m]) ** 2) for m, w in weights.items())


def _factor_loss(factors, xs, targets, high):
    total = 0.0
    for m, f in factors.items():
        y = xs[m] @ high[m] + ((xs[m] @ f["u"]) * f["s"][:, None, :]) @ jnp.swapaxes(f["v"], -1, -2)
        total = total + jnp.mean((y - targets[m]) ** 2)
    return total


def _rebuilt_loss(factors, xs, targets, high):
    """PEFT's forward (and jaxcl's ``delta`` slot): the dense ``W_high + U_low diag(s) V_lowᵀ``."""
    weights = {m: high[m] + (f["u"] * f["s"][:, None, :]) @ jnp.swapaxes(f["v"], -1, -2) for m, f in factors.items()}
    return _dense_loss(weights, xs, targets)


def _make_step(loss_fn, tx):
    def step(trainable, opt_state, xs, targets, *frozen):
        loss, (grads, grad_x) = jax.value_and_grad(loss_fn, argnums=(0, 1))(trainable, xs, targets, *frozen)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss + 0.0 * optax.global_norm(grad_x)

    return jax.jit(step, donate_argnums=(0, 1))


def _interleaved_median_s(steps, runs, warmup):
    """Median wall time per step of each ``(step, carry, args)``; the variants take turns in every
    round, so a change in machine load hits them alike (the first ``warmup`` rounds compile)."""
    carries = [carry for _, carry, _ in steps]
    times = [[] for _ in steps]
    for i in range(warmup + runs):
        for j, (step, _, args) in enumerate(steps):
            start = time.perf_counter()
            *carry, loss = step(*carries[j], *args)
            jax.block_until_ready((carry, loss))
            carries[j] = carry
            if i >= warmup:
                times[j].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _floats(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="smollm2-135m", choices=sorted(SHAPES),
                        help="the layer shapes (larger models: use --layers 1 or 2 to fit in memory)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per layer per step")
    parser.add_argument("--ratio", type=float, default=0.8, help="preserved fraction of min(d_in, d_out)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--svd-runs", type=int, default=3)
    parser.add_argument("--svd-layers", type=int, default=None,
                        help="time the SVD on this many layers and scale linearly to L (default: all L)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    L, N = args.layers, args.tokens
    MODULES = SHAPES[args.shapes]
    keys = iter(jax.random.split(jax.random.key(0), 3 * len(MODULES)))
    weights = {m: 0.02 * jax.random.normal(next(keys), (L, d_in, d_out)) for m, (d_in, d_out) in MODULES.items()}
    xs = {m: jax.random.normal(next(keys), (L, N, d_in)) for m, (d_in, _) in MODULES.items()}
    targets = {m: jax.random.normal(next(keys), (L, N, d_out)) for m, (_, d_out) in MODULES.items()}
    ranks = {m: math.floor(args.ratio * min(shape)) for m, shape in MODULES.items()}
    adamw = optax.adamw(1e-4, weight_decay=0.01)
    device = jax.devices()[0]
    header = (f"jax {jax.__version__} on {device.device_kind} ({jax.default_backend()}); {args.shapes} shapes, "
              f"L={L}, {N} tokens/layer, "
          f"preserved k = floor({args.ratio}·min(d_in, d_out)); median of {args.runs} interleaved rounds after "
          f"{args.warmup} warm-up")
    print(header + "\n", flush=True)

    # ---- per-task SVD (what begin_task runs) on svd_layers layers, scaled to L; the first run compiles
    svd_layers = min(args.svd_layers or L, L)
    svd_times = []
    for i in range(args.svd_runs + 1):
        start = time.perf_counter()
        jax.block_until_ready({m: svd_bases(w[:svd_layers], ranks[m]) for m, w in weights.items()})
        if i:
            svd_times.append(time.perf_counter() - start)
    svd_s = statistics.median(svd_times) * L / svd_layers
    bases = {m: svd_bases(w, ranks[m]) for m, w in weights.items()}

    factors, high, factor_bases = {}, {}, {}
    for m, w in weights.items():
        u, sv, vt = jax.vmap(lambda a: jnp.linalg.svd(a, full_matrices=False))(w)
        k = ranks[m]
        factors[m] = {"u": u[..., k:], "s": sv[..., k:], "v": jnp.swapaxes(vt[..., k:, :], -1, -2)}
        high[m] = (u[..., :k] * sv[..., None, :k]) @ vt[..., :k, :]
        factor_bases[f"{m}/u"] = SubspaceBasis(u=bases[m].u)  # rows of U_low live on the d_in side
        factor_bases[f"{m}/v"] = SubspaceBasis(u=bases[m].v)  # rows of V_low on the d_out side
    factor_tx = project_optimizer(adamw, factor_bases)
    preserve_only = {m: svd_bases(w, ranks[m], complement=False) for m, w in weights.items()}
    variants = [
        ("full-FT (AdamW)", _dense_loss, weights, adamw, ()),
        ("two-sided projection (jaxcl osft)", _dense_loss, weights, project_optimizer(adamw, bases), ()),
        ("two-sided, update only (project_gradients=False)", _dense_loss, weights,
         project_optimizer(adamw, bases, project_gradients=False), ()),
        ("two-sided, Preserve sides only (no complement)", _dense_loss, weights,
         project_optimizer(adamw, preserve_only), ()),
        ("factorised, thin low-rank path (mini_trainer)", _factor_loss, factors, factor_tx, (high,)),
        ("factorised, dense W rebuilt per step (PEFT)", _rebuilt_loss, factors, factor_tx, (high,)),
    ]
    steps, sizes = [], []
    for name, loss_fn, trainable, tx, frozen in variants:
        sizes.append((name, _floats(trainable), _floats(tx.init(trainable))))
        trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)  # the step donates it
        steps.append((_make_step(loss_fn, tx), (trainable, tx.init(trainable)), (xs, targets, *frozen)))
    medians = _interleaved_median_s(steps, args.runs, args.warmup)
    rows = [(name, t, n_train, n_state) for (name, n_train, n_state), t in zip(sizes, medians)]
    t_ref = rows[0][1]

    lines = ["| variant | step (ms) | step / full-FT | trained floats | optimizer-state floats |",
             "|---|---:|---:|---:|---:|"]
    for name, t, n_train, n_state in rows:
        lines.append(f"| {name} | {1e3 * t:.1f} | {t / t_ref:.2f}× | {n_train / 1e6:.1f} M | {n_state / 1e6:.1f} M |")
    scaled = "" if svd_layers == L else f", timed on {svd_layers} layers × {L / svd_layers:g}"
    lines.append(f"| SVD per task (thin fp32, 7 leaves × L={L}{scaled}) | {1e3 * svd_s:.0f} | {svd_s / t_ref:.1f}× | | |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:  # several shape sets append to one file
            f.write(f"{header}\n\n" + "\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
