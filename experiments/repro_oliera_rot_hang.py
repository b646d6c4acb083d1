"""Reproduces a hang (0% CPU, waits in block_until_ready) of the oliera-rot train step on CPU with jax 0.10.2
at 30 layers x 576 hidden: the first step runs, the second never returns; 8 layers run fine.
Usage: python experiments/repro_oliera_rot_hang.py 30 576 oliera-rot   (hangs)  |  ... 8 576 oliera-rot (ok)
With XLA_FLAGS=--xla_cpu_multi_thread_eigen=false it does not hang (an XLA CPU thread-pool deadlock);
the kernel alone (kernels.apply_skew_lowrank_expm, vmapped over 30 layers, fwd+bwd) does not hang either.
"""
import jax; jax.config.update("jax_cpu_enable_async_dispatch", False)
import sys, time, jax, jax.numpy as jnp, numpy as np, dataclasses
from jaxcl.models import llama
from jaxcl.methods import get_method
from jaxcl.fit import make_train_step, default_optimizer
from jaxcl.batch import collate_train
L, D = int(sys.argv[1]), int(sys.argv[2])
cfg = llama.LlamaConfig(vocab_size=1000, hidden_size=D, intermediate_size=2*D, num_layers=L, num_heads=D//64, num_kv_heads=D//192 or 1, head_dim=64)
params = llama.init_params(cfg, jax.random.PRNGKey(0))
m = get_method(sys.argv[3]); mem = m.init_memory(params)
tr = m.init(jax.random.PRNGKey(1), params, mem); tx = m.tx(default_optimizer(), mem); st = tx.init(tr)
step = make_train_step(m, cfg, tx)
rng = np.random.default_rng(0)
b = jax.tree.map(jnp.asarray, collate_train([list(rng.integers(3, 1000, 28)) for _ in range(8)], [[5, 2]]*8, 0, 32, 2))
for i in range(2):
    t=time.time(); tr, st, met = step(tr, st, params, mem, b, i, 10); jax.block_until_ready(tr); print("step", i, time.time()-t, float(met["loss"]), flush=True)
