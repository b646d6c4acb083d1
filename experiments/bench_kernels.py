"""Benchmark the `kernels/` ops against their references (not a test).

For each op and shape: jit-compiled forward+backward (``value_and_grad`` of
``<op(...), C>`` for a fixed random cotangent ``C``) of the op and of its
reference, timed in the same run (calls interleaved); median of ``--runs``
calls after ``--warmup`` calls. Prints a Markdown table; ``speedup = reference / op``.

    python3 -m experiments.bench_kernels [--runs 11] [--warmup 2] [--shapes 576x576x8 576x1536x8]

Projection uses ``k = r`` and ``k = min(d_in, d_out) // 2`` preserved directions
(an OSFT-like budget) on both sides; the rotations act on the input side (``n = d_in``).
The JumpReLU gate's reference is the float64 numpy oracle (forward + backward).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import kernels as K


def _paired_median_ms(op: Callable[[], Any], ref: Callable[[], Any], runs: int, warmup: int) -> tuple[float, float]:
    """Median wall time (ms) of ``op()`` and ``ref()``, interleaved so both see the same machine load."""
    for _ in range(warmup):
        jax.block_until_ready(op())
        jax.block_until_ready(ref())
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(runs):
        for i, fn in enumerate((op, ref)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[i].append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def _fwd_bwd(op: Callable[..., jax.Array], argnums: tuple[int, ...]) -> Callable[..., Any]:
    """jit(value_and_grad(<op(*args), cot>)) w.r.t. ``argnums``; call as ``f(*args, cot)``.

    Every array is an argument (no closed-over constants for XLA to fold).
    """
    return jax.jit(jax.value_and_grad(lambda *args: jnp.vdot(op(*args[:-1]), args[-1]), argnums=argnums))


Case = tuple[str, Callable[[], Any], Callable[[], Any]]


def _jax_case(name: str, op, ref, args: tuple, argnums: tuple[int, ...], cot: jax.Array) -> Case:
    op_fn, ref_fn = _fwd_bwd(op, argnums), _fwd_bwd(ref, argnums)
    return name, lambda: op_fn(*args, cot), lambda: ref_fn(*args, cot)


def _dense_two_sided(g: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """Reference: dense projector matrices ``(I − U Uᵀ) G (I − V Vᵀ)``."""
    left = jnp.eye(u.shape[0]) - u @ u.T
    right = jnp.eye(v.shape[0]) - v @ v.T
    return left @ g @ right


def _cases(d_in: int, d_out: int, r: int) -> list[Case]:
    keys = jax.random.split(jax.random.key(0), 6)
    w = jax.random.normal(keys[0], (d_in, d_out))
    a = jax.random.normal(keys[1], (d_in, r)) / np.sqrt(d_in)
    b = jax.random.normal(keys[2], (r, d_out)) * 0.01
    cot = jax.random.normal(keys[3], (d_in, d_out))
    u = jax.random.normal(keys[4], (d_in, r)) * 0.05
    v = jax.random.normal(keys[5], (d_in, r)) * 0.05
    delta = (a @ b) * 10.0
    log_th = jnp.log(jnp.quantile(jnp.abs(delta), 0.97))
    cases = [
        _jax_case(
            f"hadamard_exp_lowrank (order={order})",
            lambda w, a, b, o=order: K.hadamard_exp_lowrank(w, a, b, 4.0, o),
            lambda w, a, b, o=order: K.hadamard_exp_reference(w, a, b, 4.0, o),
            (w, a, b),
            (1, 2),
            cot,
        )
        for order in (None, 2)
    ]
    rotations = [
        ("apply_skew_lowrank_expm", K.apply_skew_lowrank_expm, K.skew_lowrank_expm_reference),
        ("apply_cayley_lowrank", K.apply_cayley_lowrank, K.cayley_reference),
    ]
    for name, apply, dense in rotations:
        reference = lambda u, v, w, dense=dense: dense(u, v) @ w  # noqa: E731
        cases.append(_jax_case(name, apply, reference, (u, v, w), (0, 1), cot))
    for k in (r, min(d_in, d_out) // 2):
        u_basis = K.orthonormal_basis(jax.random.normal(keys[1], (d_in, k)))
        v_basis = K.orthonormal_basis(jax.random.normal(keys[2], (d_out, k)))
        args = (w, u_basis, v_basis)
        cases.append(
            _jax_case(f"project_out_two_sided (k={k})", K.project_out_two_sided, _dense_two_sided, args, (0,), cot)
        )
    gate = _fwd_bwd(K.gate, (0, 1))
    delta_np, log_th_np, cot_np = np.asarray(delta), float(log_th), np.asarray(cot)
    cases.append(
        (
            "gate (ref: numpy oracle)",
            lambda: gate(delta, log_th, cot),
            lambda: K.gate_reference_numpy(delta_np, log_th_np, K.DEFAULT_BANDWIDTH, cot_np),
        )
    )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["576x576x8", "576x1536x8"], help="d_in x d_out x r")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); "
          f"jit fwd+bwd, median of {args.runs} runs after {args.warmup} warm-up\n")
    print("| op | d_in × d_out, r | op (ms) | reference (ms) | speedup (ref / op) |")
    print("|---|---|---:|---:|---:|")
    for shape in args.shapes:
        d_in, d_out, r = (int(x) for x in shape.split("x"))
        for name, op, ref in _cases(d_in, d_out, r):
            t_op, t_ref = _paired_median_ms(op, ref, args.runs, args.warmup)
            print(f"| {name} | {d_in} × {d_out}, {r} | {t_op:.3f} | {t_ref:.3f} | {t_ref / t_op:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
