"""Standalone repro: XLA:CPU deadlock with concurrent batched LAPACK custom calls (jax/jaxlib 0.10.2).

What hangs: one jitted function computing independent batched matrix exponentials
(``jax.vmap(jax.scipy.linalg.expm)`` of 4 arrays ``[30, 32, 32]``; 2 suffice on an idle machine),
called in a loop, stops after a few calls on a 2-core x86_64 Linux VM (Python 3.11.7, jax and
jaxlib 0.10.2, CPU): 0% CPU, the Python thread waits in ``block_until_ready`` forever.

    timeout 60 python experiments/repro_oliera_rot_hang.py [batch=30] [count=4]

Native stacks of the hung process (gdb ``thread apply all bt``): *both* workers of XLA's intra-op
pool ("tf_XLAEigen", 2 threads on 2 cores) sit in ``lapack_sgetrf_ffi`` or ``lapack_strsm_ffi``
-> ``jax::LuDecomposition`` / ``TriMatrixEquationSolver::Kernel`` -> ``jax::ParallelBatchMap``
-> ``absl::BlockingCounter::Wait``, each started on that worker as the continuation of a parallel
XLA kernel (``xla::cpu::Worker::Parallelize<Kernel::Task>`` -> ``ThunkExecutor::Execute``); all
other pool threads idle in ``WaitForWork``. ``ParallelBatchMap`` schedules the batch's chunks on
the same pool and blocks its thread until they finish: with as many such calls in flight as the
pool has workers, no worker is left to run the chunks (nested blocking parallelism).

Observed (runs of 2000 calls, 30-40 s limit): with a second process busy on one core, count 2 hung
within 5 calls in 7/7 runs (before the OpenBLAS line below was added; gdb: the stacks above); with
a second process using ~1.2 cores, count 4 hung in 3/5 runs and count 2 in 0/5. Never hung
(with the OpenBLAS line): one expm (count 1), batch 8, or the process pinned to one core
(``taskset -c 0``: pool of 1; also with ``NPROC=4``). ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``
does NOT prevent it (hung 4 of 6 runs, same stacks). A different hang, 100% CPU, of the same
``ParallelBatchMap`` chunks: two chunks calling the threaded OpenBLAS ``strsm`` at once spin in
``exec_blas_async_wait`` (seen with ``jnp.linalg.inv``/``solve`` of such batches, and under load
with one expm or batch 8); ``OPENBLAS_NUM_THREADS=1``, set below, removes that one, not the
deadlock above.

Where jaxcl met it: the ``oliera-rot`` train step (``jaxcl.parts.lie.lie_rotation``) rotates
q_proj and v_proj with ``kernels.apply_skew_lowrank_expm``, vmapped over SmolLM2's 30 layers; its
small 4r x 4r ``expm`` (Padé: LU + triangular solves) gave two independent ``[30, 32, 32]`` LAPACK
calls per pass, and the step hung on CPU (reported fine at 8 layers). What the library does
now: ``kernels/lowrank_expm.py`` computes φ1 by scaling and squaring with a Taylor polynomial
(matmuls only) and the Cayley inverse by Gauss-Jordan elimination in jnp ops, so the compiled step
has no LAPACK custom call (``tests/test_rotation_no_lapack.py``); same math to float32 round-off,
the update exactly orthogonal as before.
"""

import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # rule out the OpenBLAS spin (see above): the XLA pool alone
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.scipy.linalg import expm  # noqa: E402

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 30
count = int(sys.argv[2]) if len(sys.argv) > 2 else 4  # independent expm batches in one jit
xs = [0.3 * jax.random.normal(jax.random.PRNGKey(k), (batch, 32, 32)) for k in range(count)]
f = jax.jit(lambda xs: [jax.vmap(expm)(x) for x in xs])
print(jax.__version__, jax.devices(), f"{count} x expm of [{batch}, 32, 32]", flush=True)
t0 = time.time()
for i in range(2000):
    jax.block_until_ready(f(xs))
    if i < 5 or i % 500 == 0:
        print("call", i, f"{time.time() - t0:.2f}s", flush=True)
print("done: no hang", flush=True)
