"""Penalty parts of the LoRA continual-learning baselines: O-LoRA, N-LoRA and ELLA.

Each part fills the ``penalty`` slot (see ``jaxcl.core``) and returns its terms already multiplied
by their λ, so the loss is ``CE + Σ terms``. They read the agreed keys:

    trainable["lora"][path] = {"a": [..., d_in, r], "b": [..., r, d_out]}     (the current task's LoRA)
    memory["past"][path]    = {"delta": [..., d_in, d_out], "a": [..., d_in, R], "b": [..., R, d_out]}
    deltas[path]["current"] = Delta(raw, scale)                               (ΔW_t, after any gate)

so they need ``lora()`` and ``new_adapter_per_task()`` composed before them (IncLoRA). jaxcl stores
weights ``[d_in, d_out]`` (``x @ W``); the specs write PyTorch's ``[d_out, d_in]``, i.e. our ``a`` is
PEFT's ``lora_A.weight`` transposed and our ``b`` is ``lora_B.weight`` transposed.

**A module is one layer's matrix.** Target leaves are stacked over layers (``[L, d_in, d_out]``), and
the official codes loop over ``nn.Module``s, one per layer and projection; every "Σ over modules"
below therefore sums over the stacked axis too, and "number of modules" counts each layer.

The plain functions ``olora_orthogonality``, ``nlora_l1`` and ``ella_energy`` hold the formulas
(for reuse outside a ``Part``, e.g. by OLieRA's option (c), and for tests).
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp

from jaxcl.core import Part

_ORTH_FORMS = ("abs", "squared")
_L1_FORMS = ("code", "paper")
_REDUCTIONS = ("mean", "sum")


def _check_choice(what: str, value: str, allowed: Iterable[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


def _check_lam(part: str, **lams: float) -> None:
    for k, v in lams.items():
        if not v >= 0:
            raise ValueError(f"{part}: {k} must be >= 0, got {v!r}")


def _current_lora(trainable, part: str) -> dict:
    if "lora" not in trainable:
        raise ValueError(f"{part} needs a lora() part (trainable['lora']); trainable has {sorted(trainable)}")
    return trainable["lora"]


def _past(memory, part: str) -> dict:
    if "past" not in memory:
        raise ValueError(f"{part} needs new_adapter_per_task() (memory['past']); memory has {sorted(memory)}")
    return memory["past"]


def _f32(x: jax.Array) -> jax.Array:
    """``x`` in float32 at least (bfloat16 factors are summed in float32; float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _num_modules(x: jax.Array) -> int:
    """Matrices in a ``[..., m, n]`` leaf (the product of its leading, stacked-layer axes)."""
    return math.prod(x.shape[:-2])


def _frobenius(x: jax.Array) -> jax.Array:
    """‖x_m‖_F per module of a ``[..., m, n]`` leaf, with gradient 0 at 0 (torch.norm's; B starts at 0)."""
    sq = jnp.sum(jnp.square(_f32(x)), axis=(-2, -1))
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


# ----------------------------------------------------------------------------- O-LoRA


def olora_orthogonality(a_old: jax.Array, a_new: jax.Array, form: str = "abs") -> jax.Array:
    """O-LoRA's orthogonality loss between past and current input-side LoRA factors.

    With ``a_old: [..., d_in, R]`` (the R = r·(t−1) concatenated columns of the finished tasks) and
    ``a_new: [..., d_in, r]``, the overlap per module is ``O = a_oldᵀ @ a_new : [..., R, r]`` and

        form="abs"     (official code):  Σ_{..., j, k} |O_jk|
        form="squared" (paper):          Σ_{..., j, k}  O_jk²

    summed over every leading (stacked-layer) axis, i.e. over modules. In PyTorch layout this is the
    code's ``torch.abs(torch.mm(lora_A, loranew_A.T)).sum()`` ([R, d_in]·[d_in, r]), computed in float32 at least.
    """
    _check_choice("olora_orthogonality form", form, _ORTH_FORMS)
    o = jnp.swapaxes(_f32(a_old), -1, -2) @ _f32(a_new)  # [..., R, r]
    return jnp.sum(jnp.abs(o)) if form == "abs" else jnp.sum(o * o)


def orthogonal_to_past(lam1: float = 0.5, lam2: float = 0.0, form: str = "abs", name: str = "orthogonal") -> Part:
    """O-LoRA (Wang et al., EMNLP Findings 2023, arXiv 2310.14152; code cmnfriend/O-LoRA).

    Not PEFT's unrelated "OLoRA" (an orthonormal QR initialisation of LoRA): this is O-LoRA, the
    orthogonal-subspace continual-learning method. Penalty terms (``olora_family.md`` §1.1)::

        orth = λ1 · Σ_modules Σ_{j,k} |(a_oldᵀ a_t)_jk|          a_old: [d_in, R], a_t: [d_in, r]
        l2   = λ2 · Σ_modules (‖a_t‖_F + ‖b_t‖_F)                 a_t: [d_in, r], b_t: [r, d_out]

    ``a_old = memory["past"][path]["a"]`` (every finished task's ``a``, concatenated by
    ``new_adapter_per_task``), ``a_t, b_t = trainable["lora"][path]``. ``orth`` is 0 on the first
    task (no past); ``l2`` applies on every task, as the code's "bias_loss" over all ``loranew_``
    parameters does, and is omitted when ``lam2 == 0`` (the default).

    Paper vs code (spec §1.1, §7.2 items 1–2):
      - ``form="abs"`` (default) is the code: the entrywise L1 of the overlap. The paper writes its
        squared Frobenius norm: ``form="squared"``. The code's λ1 (0.5, 5 on long runs) is tuned for
        "abs".
      - The paper calls the columns of its output-side factor the task subspace; the code
        constrains the input-side ``lora_A`` (our ``a``), and so do we.
      - ``l2`` uses the non-squared Frobenius norm per module (``torch.norm(p=2)``), as coded; the
        paper writes ``λ2‖θ_new‖²``.

    Args:
      lam1: λ1 (O-LoRA scripts: 0.5; 5 for the late tasks of the long benchmark).
      lam2: λ2 (0 except on some tasks of the long benchmark).
      form: "abs" (code) or "squared" (paper).
    """
    _check_choice("orthogonal_to_past form", form, _ORTH_FORMS)
    _check_lam("orthogonal_to_past", lam1=lam1, lam2=lam2)

    def penalty(params, trainable, memory, deltas, progress):
        lora, past = _current_lora(trainable, name), _past(memory, name)
        orth = jnp.zeros((), jnp.float32)
        for path, ab in lora.items():
            if path in past:
                orth = orth + olora_orthogonality(past[path]["a"], ab["a"], form)
        terms = {"orth": lam1 * orth}
        if lam2:
            terms["l2"] = lam2 * sum(jnp.sum(_frobenius(x)) for ab in lora.values() for x in (ab["a"], ab["b"]))
        return terms

    return Part(name=name, penalty=penalty)


# ----------------------------------------------------------------------------- N-LoRA


def nlora_l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """N-LoRA's code-form ℓ1: Σ_{..., i, j} |(b[..., :, :m] @ a[..., :m, :])_ij|, an [r, r] matrix per module.

    ``a: [..., d_in, r]``, ``b: [..., r, d_out]``, ``m = min(d_in, d_out)``. The code computes
    ``‖loranew_A.weight @ loranew_B.weight‖_1`` = ‖aᵀ bᵀ‖_1 = ‖b a‖_1, which only type-checks for
    square modules (d_in = d_out; T5-large and LLaMA-7B q/v). For a rectangular module (grouped-query
    v_proj, e.g. SmolLM2's 576→192) the code would crash; jaxcl zero-pads the shorter side of the
    factors to a square, i.e. keeps the first m coordinates. This extension is ours [UNCONFIRMED];
    it equals the code on square modules.
    """
    m = min(a.shape[-2], b.shape[-1])
    return jnp.sum(jnp.abs(_f32(b[..., :, :m]) @ _f32(a[..., :m, :])))


def l1_sparsity(lam: float = 0.4, form: str = "code", name: str = "sparsity") -> Part:
    """N-LoRA (Yang et al., COLING 2025, arXiv 2410.10179; code PKU-YuanGroup/N-LoRA): ℓ1 sparsity of
    the current task's update ("non-collision"), with old LoRAs frozen (IncLoRA) and no orthogonality
    term. Penalty term (``olora_family.md`` §2), on every task::

        form="code"  (default):  l1 = λ · Σ_modules ‖ b_t a_t ‖_1        b_t a_t : [r, r]
        form="paper":            l1 = λ · Σ_modules ‖ ΔW_t ‖_1            ΔW_t : [d_in, d_out]

    Paper vs code (spec §2.1, §7.2 item 3): the paper penalises the entries of the update ΔW_t = B_t A_t
    (d_out×d_in); the official code penalises the entries of the r×r product ``A_t B_t`` of the
    factors the other way round (PyTorch ``loranew_A.weight @ loranew_B.weight``), which only
    type-checks for square modules. "code" is the default (the scripts' λ are calibrated for it);
    on rectangular modules see ``nlora_l1`` (zero-padding, our extension). "paper" takes ΔW_t from
    ``deltas[path]["current"].value``: the effective update, scaled by α/r and after any gate
    composed before this part (the paper writes it unscaled; its λ is not known).

    Args:
      lam: λ (N-LoRA scripts: 0.4 on Standard CL orders 1–3, 0.46 for LLaMA order 1, 0.55–1.8 on
        the long orders).
      form: "code" or "paper".
    """
    _check_choice("l1_sparsity form", form, _L1_FORMS)
    _check_lam("l1_sparsity", lam=lam)

    def penalty(params, trainable, memory, deltas, progress):
        lora = _current_lora(trainable, name)
        if form == "code":
            l1 = sum(nlora_l1(ab["a"], ab["b"]) for ab in lora.values())
        else:
            l1 = sum(jnp.sum(jnp.abs(_f32(deltas[path]["current"].value))) for path in lora)
        return {"l1": lam * l1}

    return Part(name=name, penalty=penalty)


# ----------------------------------------------------------------------------- ELLA


def ella_energy(delta: jax.Array, past: jax.Array) -> jax.Array:
    """Σ_{..., i, j} (delta ⊙ past)²: ELLA's ``Σ_m ‖ΔW_t ⊙ W_past‖_F²`` over a stacked ``[..., d_in, d_out]`` leaf."""
    return jnp.sum(jnp.square(_f32(delta) * _f32(past)))


def ella_penalty(lam: float = 3e4, scaled: bool = True, reduction: str = "mean", name: str = "ella") -> Part:
    """ELLA (Das Biswas et al., EACL 2026, arXiv 2601.02232): penalise the current update where past
    updates were large (coordinate-wise "anisotropic shrinkage"). Penalty term
    (``jumplora_family.md`` §2.1, §1.5)::

        ella = λ · (1/M) · Σ_m ‖ ΔW_t^m ⊙ W_past^m ‖_F²           ΔW_t^m, W_past^m : [d_in, d_out]

    ``ΔW_t = deltas[path]["current"].value`` (s·a@b with s = α/r, or what a gate composed before
    this part wrote there), ``W_past = memory["past"][path]["delta"]`` (the sum of the finished tasks'
    effective updates, stored by ``new_adapter_per_task``), ``M`` = the number of modules (layers ×
    target leaves) that have a past. Zero on the first task.

    Conventions (spec §2.3, §6 item 7). No official ELLA code exists; the two re-implementations of
    the JumpLoRA authors differ:
      - default ``scaled=True, reduction="mean"``: [CODE-JL] ``ella/core.py`` — scaled ΔW and W_past
        (×(α/r)⁴ = 256 on the squared product), mean over modules; λ = 3e4 (every task) is for it.
      - ``scaled=False, reduction="sum"``: [CODE-CLP] — unscaled ``B A`` and ``B_old A_old``, summed
        over modules (its long-sequence λ: 5e5–5e7). Here unscaled means ``Delta.raw`` and
        ``W_past / scale``, which equals ``B_old A_old`` when every task used the same α/r and no gate.

    With a JumpReLU gate (JumpLoRA + ELLA): the gate rewrites ``deltas[path]["current"]``, so the
    penalty sees the gated, interpolated ΔW_eff = s·[f·J_θ(ΔW) + (1−f)·ΔW] as [CODE-JL] "interpolated"
    mode does, and ``W_past`` accumulates the sparse effective updates (§1.5–1.6, §6 item 6). The
    one subtlety is θ: the code computes the penalty's mask ``1{|ΔW| > θ}`` hard, with θ under
    stop-gradient, so the penalty never trains θ. This part differentiates whatever "current"
    holds: with ``jaxcl.parts.gates.jumprelu_gate`` at its default (``penalty_threshold_grad=False``)
    "current" is computed with θ under stop-gradient, which is the code; a gate that puts its
    straight-through θ-gradient into "current" makes this penalty push θ too (through entries within
    ε/2 of θ). The gradient to a, b is the masked one either way.

    Args:
      lam: λ (3e4 for the default convention).
      scaled: use the α/r-scaled ΔW_t and W_past (True) or the unscaled ones.
      reduction: "mean" or "sum" over modules.
    """
    _check_choice("ella_penalty reduction", reduction, _REDUCTIONS)
    _check_lam("ella_penalty", lam=lam)

    def penalty(params, trainable, memory, deltas, progress):
        lora, past = _current_lora(trainable, name), _past(memory, name)
        total, modules = jnp.zeros((), jnp.float32), 0
        for path in lora:
            if path not in past:
                continue
            cur = deltas[path]["current"]
            w_past = past[path]["delta"]
            dw, wp = (cur.value, w_past) if scaled else (cur.raw, w_past / cur.scale)
            total = total + ella_energy(dw, wp)
            modules += _num_modules(w_past)
        if reduction == "mean" and modules:
            total = total / modules
        return {"ella": lam * total}

    return Part(name=name, penalty=penalty)
