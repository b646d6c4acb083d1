"""OLieRA presets: ``oliera`` (Hadamard Lie group, Cao & Wu, arXiv 2509.06100) and ``oliera-rot``.

=============  ==================================================================================
name           parts
=============  ==================================================================================
oliera         inclora's parts (lora r 8 α 32 q/v + new_adapter_per_task) + hadamard_lie(order 2)
               + lie_orthogonality(λ 0.5, "centred", squared): W ⊙ T(Σ_i ΔW_i), task-id free
oliera-rot     lie_rotation(r 8, q/v, input side) + rotation_orthogonality(λ 0.5): W ← exp(S) W per
               task, S = U Vᵀ − V Uᵀ, folded into the params at each task end (rotations compose)
=============  ==================================================================================

OLieRA has no official code; every choice where the secondary sources are silent or disagree is
documented in ``jaxcl.parts.lie`` (Taylor order, composition of tasks, form of the orthogonality
loss). The paper's training setup (spec §5.3): 2 epochs per task, learning rate 1e-3 (Standard
CL) or 5e-4 (long); rank, α, targets and λ are not known — O-LoRA's r 8, α 32, q/v are used and
λ is a placeholder to sweep. ``oliera-rot`` is jaxcl's own variant (``design.md`` §0 item 7).
"""

from __future__ import annotations

from typing import Iterable

from jaxcl.core import LORA_TARGETS, Method, compose
from jaxcl.methods import get_method, register
from jaxcl.parts.lie import hadamard_lie, lie_orthogonality, lie_rotation, rotation_orthogonality


@register("oliera", "OLieRA (Cao & Wu 2025): IncLoRA with W*exp(sum dW_i) (order-2 Taylor) + task-update orthogonality")
def oliera(
    *, rank: int = 8, alpha: float = 32.0, targets: str | Iterable[str] = LORA_TARGETS,
    order: int | None = 2, lam: float = 0.5, form: str = "centred", squared: bool = True,
) -> Method:
    """OLieRA: a fresh LoRA per task, earlier ones frozen, weight ``W ⊙ T(Σ_i ΔW_i)`` (``hadamard_lie``,
    ``order`` None = exact exp) and ``λ·Σ_i ‖Δ_iᵀΔ_t‖_F²`` (``lie_orthogonality``; ``form`` "literal"
    or "olora" for the other readings of the paper's loss, ``squared=False`` for its unsquared norm)."""
    inclora = get_method("inclora", rank=rank, alpha=alpha, targets=targets).parts
    return compose(*inclora, hadamard_lie(order), lie_orthogonality(lam, form, squared), name="oliera")


@register("oliera-rot", "Rotation Lie updates: W <- exp(UV^T - VU^T) W per task (low-rank expm), folded at task end")
def oliera_rot(
    *, rank: int = 8, targets: str | Iterable[str] = LORA_TARGETS, side: str = "in", lam: float = 0.5,
    form: str = "squared",
) -> Method:
    """The rotation variant ("matrix-exponential Lie updates"): ``W_eff = exp(S) @ W`` (``side="out"``:
    ``W @ exp(S)ᵀ``) with ``S = U Vᵀ − V Uᵀ`` trained per task, exactly orthogonal, folded into the
    base params at the task end; ``λ·Σ_i ‖Z_iᵀ Z_t‖_F²`` keeps the generators' spans (Z = [U V])
    apart (``form="abs"``: entrywise L1). See ``jaxcl.parts.lie.lie_rotation``."""
    return compose(lie_rotation(rank, targets, side), rotation_orthogonality(lam, form), name="oliera-rot")
