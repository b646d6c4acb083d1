"""Lie-group updates: OLieRA's Hadamard exponential and the rotation (matrix-exponential) variant.

**OLieRA** (Cao & Wu, arXiv 2509.06100; no official code; ``olora_family.md`` §4–5, §7), built on
LieRA (Si et al., ICCV 2025, arXiv 2504.00851). The weights live in the Abelian group of
entrywise-nonzero tensors under the Hadamard product ⊙, whose exponential map is the elementwise
``exp``; each task's LoRA ``ΔW_τ = (α/r)·a_τ @ b_τ`` (``a: [..., d_in, r]``, ``b: [..., r, d_out]``)
is a Lie-algebra element, so with IncLoRA's frozen past adapters the effective weight is

    W_eff = W ⊙ T(Σ_{τ<t} ΔW_τ + ΔW_t)             W, ΔW: [..., d_in, d_out]

with ``T`` the elementwise ``exp`` or its Taylor polynomial of order n (``kernels.taylor_exp``).
``hadamard_lie`` is the part whose ``merge`` does this; composed after ``lora()`` and
``new_adapter_per_task()`` the "past" source is the sum of the finished tasks' ΔW, so the deployed
(task-id free) weight is ``W ⊙ T(Σ_i ΔW_i)``. ``lie_orthogonality`` is OLieRA's penalty between
the current task's update and each earlier task's.

**Rotation variant** ("matrix-exponential Lie updates", ``design.md`` §0 item 7 and §5a): the
group is SO(n) acting on one side of the weight, ``W_eff = exp(S) @ W`` with the low-rank skew
generator ``S = U Vᵀ − V Uᵀ`` (``U, V: [..., n, r]``), so the update is exactly orthogonal.
``exp(S)`` is applied through the 2r×2r function of ``kernels.apply_skew_lowrank_expm``; no n×n
matrix (let alone an n×n expm) is formed. ``lie_rotation`` holds ``trainable["rotation"]`` and
uses the ``apply`` slot (the rotation is not additive); at the task end it **folds the rotation
into the base params** (``W ← exp(S) W``), so the next task rotates the rotated weight and rotations
compose: ``W_T = exp(S_T)···exp(S_1) W_0``. Folding was chosen over keeping the factors in memory
because it costs no memory and no compute per extra task, each fold is orthogonal to float32
round-off (the error of the product grows linearly in the number of tasks), and the deployed
model is simply the params. ``rotation_orthogonality`` is the O-LoRA-style penalty between the
generators' column spaces (kept in ``memory["rotation_past"]``, n·2r numbers per task).

Layouts: jaxcl weights are ``[d_in, d_out]`` (``x @ W``); the specs write PyTorch's
``[d_out, d_in]``, so their ``B A`` is our ``(a b)ᵀ`` and their ``Δ_i Δ_jᵀ`` (d_out×d_out,
contracting d_in) is our ``Δ_iᵀ Δ_j``.
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp

import kernels
from jaxcl.core import LORA_TARGETS, Part, get_path, select_targets, set_path
from jaxcl.parts.penalties import olora_orthogonality

_ORTH_FORMS = ("centred", "literal", "olora")
_SIDES = ("in", "out")


# ----------------------------------------------------------------------------- Hadamard exp


def hadamard_lie(order: int | None = 2, name: str = "lie") -> Part:
    """LieRA/OLieRA's multiplicative update: the ``merge`` ``w ⊙ T(Δ)`` (``kernels.hadamard_exp``).

    ``Δ`` is the summed update of the leaf (past tasks + current, each already scaled by α/r), so
    with ``new_adapter_per_task`` tasks compose in the Lie algebra: ``W ⊙ T(Σ_i ΔW_i)``. A zero
    update leaves the weight unchanged (``T(0) = 1``), so a fresh adapter (b = 0) is the identity.

    Args:
      order: Taylor order of ``T`` (1, 2, 3, …) or None for the exact elementwise ``exp``.
        Default 2: OLieRA's ablation (spec §5.1, Order 1: first 79.4, second 79.9, third 79.9)
        puts its headline number (79.9) at order ≥ 2; order 2 is always positive (1 + x + x²/2 > 0,
        so no weight is ever zeroed, §7.2 item 5) and is the cheapest of the best orders. LieRA's
        code uses order 1 (``W + W ⊙ ΔW``).

    Paper/spec choices: §7.2 item 6 — the truncated ``T`` is applied to the SUM of the task
    updates (the concatenation trick of O-LoRA, exact for the true exp since the group is
    Abelian), not as ``Π_i T(ΔW_i)``; the two differ at second order under truncation.
    LoRA dropout (LieRA: on the adapter branch) is not applied, as everywhere in jaxcl.
    """
    kernels.taylor_exp(jnp.zeros(()), order)  # validate the order now

    def merge(w, total_delta):
        return kernels.hadamard_exp(w, total_delta, order)

    return Part(name=name, merge=merge)


def _check_lam(part: str, lam: float) -> None:
    if not lam >= 0:
        raise ValueError(f"{part}: lam must be >= 0, got {lam!r}")


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """√x with gradient 0 (not NaN) at x = 0 (the centred loss is 0 at a fresh b = 0)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _split_tasks(x: jax.Array, r: int, axis: int) -> jax.Array:
    """``[..., R, ...]`` concatenated factors (R = P·r along ``axis``) → task axis P in front of the last two."""
    x = jnp.moveaxis(x, axis, -1)  # [..., other, R]
    *lead, other, big = x.shape
    if big % r:
        raise ValueError(f"past rank {big} is not a multiple of the current rank {r}")
    x = x.reshape(*lead, other, big // r, r)  # [..., other, P, r]
    return jnp.moveaxis(x, -2, len(lead))  # [..., P, other, r]


def lie_pair_orthogonality(
    a_old: jax.Array, b_old: jax.Array, a_new: jax.Array, b_new: jax.Array, form: str = "centred"
) -> jax.Array:
    """Per-pair squared overlap ``‖M_i‖_F²`` between each past task i and the current one, low-rank.

    Args:
      a_old: ``[..., d_in, P·r]``, b_old: ``[..., P·r, d_out]`` — the P finished tasks' factors,
        concatenated along the rank axis (``memory["past"]``), scale folded into ``b``.
      a_new: ``[..., d_in, r]``, b_new: ``[..., r, d_out]`` — the current task's (scale in ``b``).
      form: "centred": ``M_i = Δ_iᵀ Δ_t`` (spec's ``Δ_i Δ_tᵀ``, option (b));
        "literal": ``M_i = (𝟙 + Δ_i)ᵀ (𝟙 + Δ_t)`` (spec's first-order ``(𝟙+Δ_i)(𝟙+Δ_t)ᵀ``, (a)).

    Returns:
      ``[..., P]`` float32: ``‖M_i‖_F²`` per module and past task, computed without any
      d_out×d_out or d_in×d_out matrix (spec §5.1 "efficient computation"):

        centred: with ``C_i = a_iᵀ a_t`` (r×r), ``G_i = b_i b_iᵀ``, ``G_t = b_t b_tᵀ``:
                 ‖Δ_iᵀ Δ_t‖² = tr(G_i C_i G_t C_iᵀ)                                  O(r²(d_in+d_out))
        literal: with column sums ``u = bᵀ(aᵀ 1)`` ([d_out]), ``U = [d_in·1, 1, u_i, b_iᵀ C_i]`` and
                 ``V = [1, u_t, 1, b_tᵀ]`` (d_out×(3+r)), ``M_i = U Vᵀ`` so ‖M_i‖² = tr(UᵀU VᵀV).
    """
    if form not in ("centred", "literal"):
        raise ValueError(f"lie_pair_orthogonality form must be 'centred' or 'literal', got {form!r}")
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    r = a_new.shape[-1]
    ai, bi = _split_tasks(f32(a_old), r, -1), _split_tasks(f32(b_old), r, -2)  # [..., P, d_in, r], [..., P, d_out, r]
    at, bt = f32(a_new), f32(b_new)
    c = jnp.einsum("...pir,...is->...prs", ai, at)  # a_iᵀ a_t: [..., P, r, r]
    if form == "centred":
        g_i = jnp.einsum("...por,...pos->...prs", bi, bi)  # b_i b_iᵀ
        g_t = jnp.einsum("...ro,...so->...rs", bt, bt)  # b_t b_tᵀ
        left = jnp.einsum("...prs,...pst->...prt", g_i, c)  # G_i C_i
        right = jnp.einsum("...prs,...st->...prt", c, g_t)  # C_i G_t
        return jnp.sum(left * right, axis=(-2, -1))  # tr(G_i C_i G_t C_iᵀ), G's symmetric
    d_in, d_out = at.shape[-2], bt.shape[-1]
    u_i = jnp.einsum("...pir,...por->...po", ai, bi)  # Σ_{d_in} Δ_i: [..., P, d_out]
    u_t = jnp.einsum("...ir,...ro->...o", at, bt)  # [..., d_out]
    bic = jnp.einsum("...por,...prs->...pos", bi, c)  # b_iᵀ C_i: [..., P, d_out, r]
    ones_p = jnp.ones(u_i.shape, jnp.float32)
    big_u = jnp.concatenate([jnp.stack([d_in * ones_p, ones_p, u_i], -1), bic], -1)  # [..., P, d_out, 3+r]
    ones = jnp.ones(u_t.shape, jnp.float32)
    big_v = jnp.concatenate([jnp.stack([ones, u_t, ones], -1), jnp.swapaxes(bt, -1, -2)], -1)  # [..., d_out, 3+r]
    gram_u = jnp.einsum("...pok,...pol->...pkl", big_u, big_u)
    gram_v = jnp.einsum("...ok,...ol->...kl", big_v, big_v)
    return jnp.sum(gram_u * gram_v[..., None, :, :], axis=(-2, -1))


def lie_orthogonality(
    lam: float = 0.5, form: str = "centred", squared: bool = True, olora_form: str = "abs", name: str = "lie_orth"
) -> Part:
    """OLieRA's "full-subspace orthogonality" penalty between the current and each past task update.

    Paper (S1, spec §5.1): ``L_orth = Σ_{i≠j} ‖exp(ΔW_i) exp(ΔW_j)ᵀ‖_F``, approximated at first
    order by ``‖(𝟙 + ΔW_i)(𝟙 + ΔW_j)ᵀ‖_F``; minimise ``CE + λ·L_orth``. Here, per module (layer ×
    target leaf) and past task i (ΔW = (α/r)·a b, past factors from ``memory["past"]``)::

        form="centred" (default):  ‖Δ_iᵀ Δ_t‖_F²                   (spec option (b))
        form="literal":            ‖(𝟙 + Δ_i)ᵀ (𝟙 + Δ_t)‖_F²       (option (a), first order)
        form="olora":              O-LoRA's Σ|a_oldᵀ a_t| (``penalties.olora_orthogonality``, (c))

    summed over past tasks, modules and target leaves; ``squared=False`` takes the Frobenius norm
    of each pair instead (S1's unsquared form; gradient 0 at a zero overlap). Zero on task 1.

    Why "centred" is the default (spec §7.2 item 4): the literal loss can never reach 0 — every
    entry of ``exp(Δ_i) exp(Δ_j)ᵀ`` is positive (S2, proved in Lean) — and its gradient is
    dominated by the constant and row-sum terms (``d_in·𝟙𝟙ᵀ + 𝟙u_jᵀ + u_i𝟙ᵀ``), i.e. it mostly pushes
    the column sums of ΔW_t negative instead of separating subspaces; the centred form is the
    part of it that measures overlap between task updates, is 0 exactly when they are orthogonal
    (contracting d_in, the spec's ``Δ_i Δ_tᵀ``), is what S2 suggests, and keeps OLieRA's point of
    constraining whole updates (both factors) rather than only ``a`` as O-LoRA does. It is the
    first-order centred term ``(T(Δ_i) − 𝟙)ᵀ(T(Δ_t) − 𝟙) ≈ Δ_iᵀΔ_t`` (the low-rank evaluation needs
    the linear term; the exponentiated form would need dense d_in×d_out products per past task).
    Squared by default (S2; S1 writes it unsquared): smooth, and the form the low-rank trace gives.

    Other choices: only the pairs (i, t) with the current task are summed — the spec's Σ_{i≠j}
    also has old–old pairs, constants that carry no gradient; their omission changes the logged
    value only. The scale α/r is folded into both updates (the current ``Delta.scale`` is used
    for the past tasks too: one LoRA configuration per stream). λ is not known from the paper
    (spec §5.3): 0.5 (O-LoRA's λ1) is a placeholder to sweep; the literal form's values are
    ~d_in²·d_out² and need a far smaller λ.

    Needs ``lora()`` and ``new_adapter_per_task()`` composed before it.

    Args:
      lam: λ.
      form: "centred", "literal" or "olora".
      squared: squared Frobenius norm per pair (centred/literal only).
      olora_form: with form="olora": "abs" (O-LoRA code) or "squared" (O-LoRA paper).
    """
    if form not in _ORTH_FORMS:
        raise ValueError(f"lie_orthogonality form must be one of {list(_ORTH_FORMS)}, got {form!r}")
    _check_lam(name, lam)

    def penalty(params, trainable, memory, deltas, progress):
        past = memory.get("past", {})
        total = jnp.zeros((), jnp.float32)
        for path, ab in trainable["lora"].items():
            if path not in past:
                continue
            if form == "olora":
                total = total + olora_orthogonality(past[path]["a"], ab["a"], olora_form)
                continue
            scale = deltas[path]["current"].scale
            per_pair = lie_pair_orthogonality(
                past[path]["a"], scale * past[path]["b"].astype(jnp.float32),
                ab["a"], scale * ab["b"].astype(jnp.float32), form,
            )
            total = total + jnp.sum(per_pair if squared else _safe_sqrt(per_pair))
        return {"orth": lam * total}

    return Part(name=name, penalty=penalty)


# ----------------------------------------------------------------------------- rotations


def rotate(u: jax.Array, v: jax.Array, w: jax.Array, side: str = "in") -> jax.Array:
    """``exp(U Vᵀ − V Uᵀ)`` applied to ``w: [..., d_in, d_out]``, over any leading (layer) axes.

    side="in": ``exp(S) @ W`` (``u, v: [..., d_in, r]``; rotates the input features);
    side="out": ``W @ exp(S)ᵀ`` (``u, v: [..., d_out, r]``). Through ``kernels.apply_skew_lowrank_expm``
    (a 2r×2r φ1 by scaling and squaring, O(n·r·m)); float32 math, result in ``w.dtype``. Matmuls
    only, no LAPACK custom call: jaxlib 0.10.2's batched LAPACK kernels deadlocked the CPU train step
    when two targets' rotations ran at once (``experiments/repro_oliera_rot_hang.py``).
    """
    if side not in _SIDES:
        raise ValueError(f"rotation side must be 'in' or 'out', got {side!r}")
    fn = kernels.apply_skew_lowrank_expm
    for _ in range(w.ndim - 2):
        fn = jax.vmap(fn)
    if side == "in":
        return fn(u, v, w)
    return jnp.swapaxes(fn(u, v, jnp.swapaxes(w, -1, -2)), -1, -2)


def lie_rotation(
    rank: int = 8,
    targets: str | Iterable[str] = LORA_TARGETS,
    side: str = "in",
    name: str = "rotation",
) -> Part:
    """The rotation variant: ``W_eff = exp(S) @ W``, ``S = U Vᵀ − V Uᵀ`` of rank ≤ 2r, exactly orthogonal.

    trainable["rotation"][path] = {"u": [..., n, r] ~ U(±1/√n), "v": [..., n, r] = 0} (n = d_in for
    side="in", d_out for "out"), so a fresh rotation is the identity (like LoRA's b = 0) and ``v``
    gets the first gradient. ``apply`` rotates the target leaves of the params it receives (after
    the additive merge of other parts, if any). ``end_task`` folds the task's rotation into the
    base params and appends ``Z = [U V]`` to ``memory["rotation_past"][path]["z"]``
    (``[..., n, 2r·tasks]``) for ``rotation_orthogonality``.

    Parameter count per module: 2·n·r, i.e. LoRA's r·(d_in + d_out) at equal rank on a square
    module. With IncLoRA-style additive adapters composed too, folding is exact only for the
    rotation itself (the past additive deltas are not rotated): use it as the only update. The
    fold is stored in the params' dtype: with bfloat16 base weights each task end rounds the
    rotated weight to bfloat16 (the rotations themselves stay float32).

    Not from a paper: jaxcl's "matrix-exponential Lie updates" option (``design.md`` §0 item 7),
    the SO(n) counterpart of OLieRA's Hadamard group, registered as the preset ``oliera-rot``.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rotation rank must be a positive int, got {rank!r}")
    if side not in _SIDES:
        raise ValueError(f"rotation side must be 'in' or 'out', got {side!r}")

    def init_memory(params):
        return {"rotation_past": {}}

    def init(key, params, memory):
        paths = select_targets(params, targets)
        out = {}
        for k, path in zip(jax.random.split(key, len(paths)), paths):
            w = get_path(params, path)
            if w.ndim < 2:
                raise ValueError(f"rotation target '{path}' is not a matrix (shape {w.shape})")
            n = w.shape[-2] if side == "in" else w.shape[-1]
            shape = (*w.shape[:-2], n, rank)
            bound = 1.0 / math.sqrt(n)
            out[path] = {
                "u": jax.random.uniform(k, shape, jnp.float32, -bound, bound),
                "v": jnp.zeros(shape, jnp.float32),
            }
        return {"rotation": out}

    def _rotated(params, trainable):
        for path, uv in trainable["rotation"].items():
            params = set_path(params, path, rotate(uv["u"], uv["v"], get_path(params, path), side))
        return params

    def apply(params, trainable, memory, progress):
        return _rotated(params, trainable)

    def end_task(params, trainable, memory, task, deltas):
        past = dict(memory["rotation_past"])
        for path, uv in trainable["rotation"].items():
            z = jnp.concatenate([uv["u"], uv["v"]], axis=-1)
            past[path] = {"z": jnp.concatenate([past[path]["z"], z], axis=-1) if path in past else z}
        return _rotated(params, jax.lax.stop_gradient(trainable)), {**memory, "rotation_past": past}

    return Part(name=name, init_memory=init_memory, init=init, apply=apply, end_task=end_task)


def rotation_orthogonality(lam: float = 0.5, form: str = "squared", name: str = "rotation_orth") -> Part:
    """Penalty keeping the new generator's column space away from the past ones (rotation variant).

    ``λ · Σ_modules Σ_{j,k} (Z_pastᵀ Z_t)_jk²`` with ``Z = [U V]: [..., n, 2r]`` (``form="squared"``,
    = Σ_i ‖Z_iᵀ Z_t‖_F² over past tasks i), or the entrywise L1 (``form="abs"``): O-LoRA's
    ``olora_orthogonality`` applied to the generators. ``exp(S_t)`` is the identity on the
    orthogonal complement of span(Z_t), so orthogonal spans leave the planes rotated by earlier
    tasks untouched (the rotations then commute). Squared by default: our choice (the variant is
    not from a paper); λ = 0.5 is a placeholder to sweep. Zero on task 1.
    """
    _check_lam(name, lam)

    def penalty(params, trainable, memory, deltas, progress):
        past = memory.get("rotation_past", {})
        total = jnp.zeros((), jnp.float32)
        for path, uv in trainable["rotation"].items():
            if path in past:
                z_t = jnp.concatenate([uv["u"], uv["v"]], axis=-1)
                total = total + olora_orthogonality(past[path]["z"], z_t, form)
        return {"orth": lam * total}

    return Part(name=name, penalty=penalty)
