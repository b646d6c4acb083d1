"""The sharded train step (8 simulated CPU devices) equals the single-device step."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 8, jax.devices()
from jaxcl.models import llama
from jaxcl.methods import get_method
import optax
from jaxcl.fit import make_train_step
from jaxcl.batch import collate_train, split_prefix
from jaxcl.engine.sharding import data_mesh, shard_batch, shard_params

cfg = llama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
params = llama.init_params(cfg, jax.random.PRNGKey(0))
rng = np.random.default_rng(0)
batch = collate_train([list(rng.integers(3, 64, rng.integers(4, 12))) for _ in range(16)], [[5, 2]] * 16, 0, 16, 2)
batch = jax.tree.map(jnp.asarray, batch)
# rows that share a 9-token head, run once per batch: the prefix is replicated, the rest split
head = list(rng.integers(3, 64, 9))
prefixed = collate_train([head + list(rng.integers(3, 64, rng.integers(2, 8))) for _ in range(16)], [[5, 2]] * 16, 0, 24, 2)
prefixed = jax.tree.map(jnp.asarray, split_prefix(prefixed, 9))
mesh = data_mesh()
from jaxcl.core import TaskInfo
factorised = dict(factorised=True, rank_rule="fixed", ratio=0.5, preserve_pretrained=True)
for name, kwargs, fsdp, batch in (("olora", {}, False, batch), ("seqft", {}, True, batch), ("osft", factorised, True, batch),
                                  ("olora", {}, True, prefixed)):
    method = get_method(name, **kwargs)
    # osft factorised: W_high in params, U_low/s_low/V_low trained through the LowRank path
    base, memory = method.begin_task(params, method.init_memory(params), TaskInfo(index=0, config=cfg))
    results = []
    for sharded in (False, True):
        p, b = (shard_params(base, mesh, fsdp), shard_batch(batch, mesh)) if sharded else (base, batch)
        trainable = method.init(jax.random.PRNGKey(1), p, memory)
        assert name != "osft" or len(trainable["factors"]) == 7
        if sharded:
            trainable = shard_params(trainable, mesh, fsdp)
        tx = method.tx(optax.sgd(0.1), memory)  # linear in the gradient: compares grads, not Adam's noise amplification
        step = make_train_step(method, cfg, tx)
        opt = tx.init(trainable)
        for s in range(3):
            trainable, opt, m = step(trainable, opt, p, memory, b, s, 3)
        results.append((float(m["loss"]), jax.tree.map(np.asarray, trainable)))
        if sharded:
            assert len(b["tokens"].sharding.device_set) == 8
            assert "prefix" not in b or b["prefix"].sharding.is_fully_replicated
    (l0, t0), (l1, t1) = results
    assert abs(l0 - l1) < 1e-5 * max(1.0, abs(l0)), (name, l0, l1)
    for a, c in zip(jax.tree.leaves(t0), jax.tree.leaves(t1)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
    print(name, "fsdp" if fsdp else "replicated", "prefix" if "prefix" in batch else "", l0, l1)
print("SHARDING OK")
'''


def test_sharded_step_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0 and "SHARDING OK" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
