"""OSFT: the subspace-projection optax transform, the adaptive ranks, and the method through fit_task."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.batch import collate_train
from jaxcl.core import TaskInfo, deployed_params, get_path
from jaxcl.fit import fit_task
from jaxcl.methods import get_method
from jaxcl.models import llama
from jaxcl.optim import (Free, Preserve, SubspaceBasis, layer_plan, project_matrix, project_optimizer, project_out_subspaces,
                         svd_bases)
from jaxcl.parts.osft import adaptive_ratios, low_factors, osft_projection, preserved_ranks
from kernels.projection import thin_svd

CFG = llama.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                        num_kv_heads=1, head_dim=8)


def _orthonormal(key, *shape):
    return jnp.linalg.qr(jax.random.normal(key, shape))[0]


def _active(side):
    """The side's basis [..., d, k] with its inactive columns zeroed."""
    return side.basis * jnp.asarray(side.mask, jnp.float32)[..., None, :]


def _rel(x, ref):
    return float(jnp.linalg.norm(x) / jnp.linalg.norm(ref))


# ----------------------------------------------------------------------------- the optax transform


@pytest.fixture(scope="module")
def transform_case():
    ks = jax.random.split(jax.random.key(0), 8)
    L, d_in, d_out, k = 3, 12, 10, 5
    params = {"w": jax.random.normal(ks[0], (L, d_in, d_out)), "b": jax.random.normal(ks[1], (7,)),
              "m": jax.random.normal(ks[2], (6, 4))}
    ranks = jnp.array([0, 2, 5])
    mask = jnp.arange(k) < ranks[:, None]
    bases = {
        "w": SubspaceBasis(Preserve(_orthonormal(ks[3], L, d_in, k), mask),
                           Preserve(_orthonormal(ks[4], L, d_out, k), mask)),
        "m": SubspaceBasis(u=Preserve(_orthonormal(ks[5], 6, 3))),  # one-sided: input side only
    }
    grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.fold_in(ks[6], i), p.shape), params)
             for i in range(3)]
    return params, bases, grads


def _run(tx, params, grads):
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state, params)
        out.append(u)
    return out


def test_transform_keeps_adamw_updates_out_of_the_active_subspaces(transform_case):
    params, bases, grads = transform_case
    adamw = optax.adamw(1e-2, weight_decay=0.01)
    projected = _run(project_optimizer(adamw, bases), params, grads)
    plain = _run(adamw, params, grads)
    b = bases["w"]
    u_act, v_act = _active(b.u), _active(b.v)
    for upd, ref in zip(projected, plain):
        assert jax.tree.map(lambda x: (x.shape, x.dtype), upd) == jax.tree.map(lambda x: (x.shape, x.dtype), ref)
        d = upd["w"]
        assert _rel(jnp.einsum("lik,lij->lkj", u_act, d), d) < 1e-6
        assert _rel(jnp.einsum("lij,ljk->lik", d, v_act), d) < 1e-6
        # inactive columns are not projected out: layer 1 keeps rank 2 of 5
        assert _rel(b.u.basis[1, :, 2:].T @ d[1], d[1]) > 1e-2
        # a rank-0 layer and a leaf without basis get exactly the plain optimizer's update
        np.testing.assert_allclose(d[0], ref["w"][0], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(upd["b"], ref["b"])
        # one-sided basis: input side removed, output side free
        assert _rel(bases["m"].u.basis.T @ upd["m"], upd["m"]) < 1e-6
    # without the final projection AdamW's element-wise scaling and weight decay leak back in
    leaky = _run(optax.chain(project_out_subspaces(bases), adamw), params, grads)[-1]["w"]
    assert _rel(jnp.einsum("lik,lij->lkj", u_act, leaky), leaky) > 1e-2


def test_transform_reads_bases_from_its_state_not_its_closure(transform_case):
    params, bases, grads = transform_case
    tx = project_out_subspaces(bases)
    b = bases["w"]
    other = {"w": SubspaceBasis(b.u._replace(basis=b.u.basis[::-1]), b.v._replace(basis=b.v.basis[::-1]))}
    other_state = project_out_subspaces(other).init(params)
    d = jax.jit(tx.update)(grads[0], other_state)[0]["w"]
    assert _rel(jnp.einsum("lik,lij->lkj", _active(other["w"].u), d), d) < 1e-6
    assert any(leaf.shape == b.u.basis.shape for leaf in jax.tree.leaves(other_state))


@pytest.mark.parametrize("form", ["two_sided", "high_high"])
def test_projection_matches_the_float64_formula(transform_case, form):
    params, bases, grads = transform_case
    g = np.asarray(grads[0]["w"][2], np.float64)
    u, v = np.asarray(bases["w"].u.basis[2], np.float64), np.asarray(bases["w"].v.basis[2], np.float64)
    pu, pv = u @ u.T, v @ v.T
    expect = (np.eye(12) - pu) @ g @ (np.eye(10) - pv) if form == "two_sided" else g - pu @ g @ pv
    got = project_out_subspaces(bases, form=form).update(grads[0], project_out_subspaces(bases).init(params))[0]
    np.testing.assert_allclose(got["w"][2], expect, atol=1e-5)
    if form == "high_high":  # the paper's form only removes the doubly projected block
        assert np.linalg.norm(u.T @ expect @ v) < 1e-5 * np.linalg.norm(expect)
        assert np.linalg.norm(u.T @ expect) > 0.1 * np.linalg.norm(expect)


def test_transform_rejects_unknown_paths_and_bad_shapes(transform_case):
    params, bases, _ = transform_case
    with pytest.raises(ValueError, match="match no leaf"):
        project_out_subspaces({"nope": bases["m"]}).init(params)
    with pytest.raises(ValueError, match="'m'"):
        project_out_subspaces({"m": SubspaceBasis(u=Preserve(bases["w"].u.basis[0]))}).init(params)
    with pytest.raises(ValueError, match="form"):
        project_out_subspaces(bases, form="one_sided")


def test_svd_bases_are_the_top_singular_vectors():
    w = jax.random.normal(jax.random.key(1), (2, 9, 6))
    basis = svd_bases(w, jnp.array([2, 4]), complement=False)
    assert basis.u.basis.shape == (2, 9, 4) and basis.v.basis.shape == (2, 6, 4)
    np.testing.assert_array_equal(basis.u.mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
    for layer, k in ((0, 2), (1, 4)):
        u_ref, _, vt_ref = np.linalg.svd(np.asarray(w[layer], np.float64))
        u, v = np.asarray(basis.u.basis[layer, :, :k]), np.asarray(basis.v.basis[layer, :, :k])
        np.testing.assert_allclose(u @ u.T, u_ref[:, :k] @ u_ref[:, :k].T, atol=1e-5)
        np.testing.assert_allclose(v @ v.T, vt_ref[:k].T @ vt_ref[:k], atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 10, 16), (3, 16, 10)])
def test_complement_bases_give_the_same_projection(shape):
    """``Free`` sides (the trailing singular vectors) and ``Preserve`` sides are one projector."""
    w, g = jax.random.normal(jax.random.key(3), (2, *shape))
    ranks = jnp.array([0, 6, 9])
    free, kept = svd_bases(w, ranks, complement=True), svd_bases(w, ranks, complement=False)
    auto = svd_bases(w, ranks)  # Σ(r − k) = 15 is not < Σk = 15: Preserve everywhere
    assert isinstance(auto.u, Preserve) and isinstance(auto.v, Preserve)
    assert isinstance(free.u, Free) == (shape[1] == 10) and isinstance(free.v, Free) == (shape[2] == 10)
    project = jax.jit(project_matrix, static_argnums=2)
    for form in ("two_sided", "high_high"):
        np.testing.assert_allclose(project(g, free, form), project(g, kept, form), atol=2e-5)
        for basis in (free, kept):  # layer by layer through the active columns only: the same projector
            plan = layer_plan(basis)
            assert plan is not None and len(plan) == 3
            np.testing.assert_allclose(project_matrix(g, basis, form, plan), project(g, kept, form), atol=2e-5)
    assert isinstance(svd_bases(w, jnp.array([7, 8, 9])).u, Free) == (shape[1] == 10)  # Σ(r − k) = 6 < 24


# ----------------------------------------------------------------------------- ranks


def _rank_params():
    cfg = llama.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=4, num_heads=2,
                            num_kv_heads=1, head_dim=8)
    return cfg, llama.init_params(cfg, jax.random.key(2))


QK = r"layers/(q_proj|k_proj)$"  # q: 16×16 (r = 16), k: 16×8 (r = 8)


def _ranks_after_begin(part, cfg, params, memory, task):
    _, memory = part.begin_task(params, memory, task)
    return {p: np.asarray(b["ranks"]).tolist() for p, b in memory["osft"]["bases"].items()}


def test_adaptive_ranks_follow_the_rule():
    # I = [1.2, .4, .8, .8], mean .8 → I/mean = [1.5, .5, 1, 1] → ρ = .1 + .7·I/mean = [1.15, .45, .8, .8]
    importance = np.array([1.2, 0.4, 0.8, 0.8], np.float32)
    np.testing.assert_allclose(adaptive_ratios(importance, 0.1, 0.8), [1.15, 0.45, 0.8, 0.8], rtol=1e-6)
    # k = clip(floor(ρ·r), 0, r − 1): r = 16 → [18.4→15, 7.2, 12.8, 12.8]; r = 8 → [9.2→7, 3.6, 6.4, 6.4]
    assert preserved_ranks([1.15, 0.45, 0.8, 0.8], 16, 16).tolist() == [15, 7, 12, 12]
    cfg, params = _rank_params()
    part = osft_projection(targets=QK)
    memory = part.init_memory(params)
    memory["osft"]["importance"] = jnp.asarray(importance)
    task = TaskInfo(index=1, num_tasks=3, config=cfg, batches=lambda: [])
    assert _ranks_after_begin(part, cfg, params, memory, task) == {
        "layers/q_proj": [15, 7, 12, 12], "layers/k_proj": [7, 3, 6, 6]}
    # task 0 preserves nothing by default (the research code's plain full FT of the first task)
    _, mem0 = part.begin_task(params, memory, TaskInfo(index=0, config=cfg, batches=lambda: []))
    assert mem0["osft"]["bases"] == {}


def test_fixed_and_progressive_ranks():
    cfg, params = _rank_params()
    fixed = osft_projection(targets=QK, rank_rule="fixed", ratio=0.3, preserve_pretrained=True)
    task0 = TaskInfo(index=0, num_tasks=4, config=cfg)
    assert _ranks_after_begin(fixed, cfg, params, fixed.init_memory(params), task0) == {
        "layers/q_proj": [4] * 4, "layers/k_proj": [2] * 4}  # floor(.3·16), floor(.3·8)
    prog = osft_projection(targets=QK, rank_rule="progressive")
    task2 = TaskInfo(index=2, num_tasks=4, config=cfg)  # ρ = 2/4
    assert _ranks_after_begin(prog, cfg, params, prog.init_memory(params), task2) == {
        "layers/q_proj": [8] * 4, "layers/k_proj": [4] * 4}
    with pytest.raises(ValueError, match="ratio"):
        osft_projection(rank_rule="fixed")
    with pytest.raises(ValueError, match="task.config"):
        osft_projection(targets=QK).begin_task(params, prog.init_memory(params), TaskInfo(index=1))


# ----------------------------------------------------------------------------- end to end


def _task_batches(task_index, n=32, seed=0):
    """A learnable task: every answer is the token 10 + task_index, then EOS."""
    rng = np.random.default_rng(seed + task_index)
    return [collate_train([list(rng.integers(3, 64, 6)) for _ in range(4)], [[10 + task_index, 2]] * 4,
                          pad_id=0, length=8, answer_len=2) for _ in range(n)]


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "factorised"])
def two_tasks(request):
    method = get_method("osft", factorised=request.param)
    params = llama.init_params(CFG, jax.random.key(0))
    params["embed_tokens"] = 50.0 * params["embed_tokens"]  # O(1) logits: the frozen tied head can express the task
    memory = method.init_memory(params)
    runs = []
    for t in range(2):
        batches = _task_batches(t)
        task = TaskInfo(index=t, name=f"t{t}", num_tasks=2, config=CFG, batches=lambda b=batches: b,
                        num_steps=len(batches))
        start = params
        res = fit_task(method, CFG, params, memory, batches, optax.adamw(1e-2, weight_decay=0.01),
                       jax.random.key(t), task=task)
        runs.append((start, memory, res))
        params, memory = res.params, res.memory
    return request.param, runs


def test_osft_keeps_the_preserved_subspaces_fixed_over_a_task(two_tasks):
    factorised, (_, (start, memory_before, res)) = two_tasks[0], two_tasks[1]
    bases = res.memory["osft"]["bases"]
    assert set(bases) == {f"layers/{m}_proj" for m in ("q", "k", "v", "o", "gate", "up", "down")}
    losses = [h["ce"] for h in res.history]
    # the factorised form learns slower at one lr: Adam's per-entry steps on U_low, V_low move W by ~s_low·step
    assert len(losses) >= 30 and np.mean(losses[-5:]) < (0.7 if factorised else 0.5) * np.mean(losses[:5])
    for path, b in bases.items():
        w0 = get_path(start, path)
        delta = get_path(res.params, path) - w0
        u, _, vt = jax.vmap(thin_svd)(w0)  # the preserved directions: top k_l singular pairs of W_start
        on = jnp.arange(u.shape[-1]) < jnp.asarray(b["ranks"])[:, None]
        u, v = _active(Preserve(u, on)), _active(Preserve(jnp.swapaxes(vt, -1, -2), on))
        assert _rel(delta, get_path(start, path)) > 1e-2  # the weights did move
        assert _rel(jnp.einsum("lik,lij->lkj", u, delta), delta) < 1e-5, path
        assert _rel(jnp.einsum("lij,ljk->lik", delta, v), delta) < 1e-5, path
    # the ranks of task 1 come from task 0's importance by the adaptive rule
    imp = np.asarray(memory_before["osft"]["importance"])
    assert imp.shape == (CFG.num_layers,) and np.all((imp > 0) & (imp <= 1)) and not np.allclose(imp, 1.0)
    q = bases["layers/q_proj"]["ranks"]
    np.testing.assert_array_equal(q, preserved_ranks(adaptive_ratios(imp), 16, 16))


def test_osft_runs_two_tasks_and_memory_holds_only_arrays(two_tasks):
    (_, _, first), (_, _, second) = two_tasks[1]
    assert first.memory["osft"]["bases"] == {}  # task 0: plain full fine-tuning
    assert all(np.isfinite(h["loss"]) for r in (first, second) for h in r.history)
    assert np.mean([h["ce"] for h in first.history[-5:]]) < np.mean([h["ce"] for h in first.history[:5]])
    leaves, treedef = jax.tree_util.tree_flatten(second.memory)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    assert "PyTreeDef({'osft': {'bases': {" in str(treedef)  # nested dicts only
    assert all(b["ranks"].dtype == jnp.int32 for b in second.memory["osft"]["bases"].values())


# ----------------------------------------------------------------------------- the factorised form


def test_low_factors_split_w_into_its_preserved_and_trainable_parts():
    w = jax.random.normal(jax.random.key(5), (3, 12, 10))
    ranks = np.array([2, 4, 9])  # k_min = 2: stacked width c = 10 − 2 = 8
    f = low_factors(w, ranks)
    assert f["u"].shape == (3, 12, 8) and f["s"].shape == (3, 8) and f["v"].shape == (3, 10, 8)
    low = (f["u"] * f["s"][:, None, :]) @ jnp.swapaxes(f["v"], -1, -2)
    assert _rel(f["high"] + low - w, w) < 1e-6
    u, sv, vt = jax.vmap(thin_svd)(w)
    for l, k in enumerate(ranks):
        # layer l trains singular pairs k..r−1, in columns k − k_min.. ; the columns before are zeros
        on = np.arange(8) >= k - 2
        assert np.all(np.asarray(f["s"][l])[~on] == 0) and np.all(np.asarray(f["u"][l])[:, ~on] == 0)
        np.testing.assert_allclose(f["s"][l][on], sv[l, k:], rtol=1e-6)
        assert float(jnp.abs(u[l, :, :k].T @ f["u"][l]).max()) < 1e-5  # U_low ⟂ U_k
        # high is the top-k part: U_k diag(S_k) V_kᵀ
        np.testing.assert_allclose(f["high"][l], (u[l, :, :k] * sv[l, :k]) @ vt[l, :k], atol=1e-5)


def test_factorised_osft_starts_at_w_trains_factors_and_merges_back():
    cfg, params = _rank_params()
    method = get_method("osft", factorised=True, rank_rule="fixed", ratio=0.5, targets=QK)
    memory = method.init_memory(params)
    task = TaskInfo(index=1, num_tasks=2, config=cfg)
    p1, m1 = method.begin_task(params, memory, task)
    trainable = method.init(jax.random.key(0), p1, m1)
    assert set(trainable["factors"]) == {"layers/q_proj", "layers/k_proj"} and trainable["full"] == {}
    assert isinstance(method.apply(p1, trainable, m1)["layers"]["q_proj"], llama.LowRank)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 7)))
    ref = llama.apply(cfg, params, tokens)
    np.testing.assert_allclose(llama.apply(cfg, method.apply(p1, trainable, m1), tokens), ref, atol=2e-5)
    # one factor step: the deployed weights move, and after end_task no start factors are left in memory
    moved = jax.tree.map(lambda x: x * 1.1, trainable)
    p2, m2 = method.end_task(p1, moved, m1, task)
    assert set(m2["osft"]) == {"importance", "bases"}
    dq = get_path(p2, "layers/q_proj") - get_path(params, "layers/q_proj")
    assert _rel(dq, get_path(params, "layers/q_proj")) > 1e-3
    np.testing.assert_allclose(get_path(p2, "layers/q_proj"), method.apply(p1, moved, m1)["layers"]["q_proj"].dense(),
                               atol=1e-6)
    deployed = deployed_params(method, p2, m2)  # between tasks: the merged weights, nothing counted twice
    for path in ("layers/q_proj", "layers/k_proj", "layers/v_proj"):
        np.testing.assert_array_equal(get_path(deployed, path), get_path(p2, path))
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        get_method("osft", factorised=True, form="high_high")


def test_factorised_osft_resumes_inside_a_task_through_the_engine(tmp_path):
    """Killed mid-task and resumed, the run equals the uninterrupted one (begin_task rebuilds W_high)."""
    import json, os, subprocess, sys
    from pathlib import Path

    from jaxcl.engine import run_experiment
    from jaxcl.engine.checkpoint import RunCheckpoints
    from tests.engine_helpers import tiny_config, tiny_model

    overrides = {"method": "osft", "method_kwargs": {"factorised": True, "rank_rule": "fixed", "ratio": 0.5},
                 "learning_rate": 1e-3}
    config = tiny_config(**{**overrides, "method_kwargs": tuple(sorted(overrides["method_kwargs"].items()))})
    reference = run_experiment(config, tmp_path / "ref", progress=False, model=tiny_model())
    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "tests._crash_run", str(run_dir), "1", "3", json.dumps(overrides)],
                       cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    assert RunCheckpoints(run_dir).inflight()["step"] == 2
    resumed = run_experiment(config, run_dir, resume=True, progress=False, model=tiny_model())
    np.testing.assert_array_equal(resumed.R, reference.R)
    for path in ("layers/q_proj", "layers/down_proj"):
        np.testing.assert_array_equal(get_path(resumed.params, path), get_path(reference.params, path))
        assert _rel(get_path(reference.params, path) - get_path(tiny_model().params, path),
                    get_path(tiny_model().params, path)) > 1e-4  # it trained
