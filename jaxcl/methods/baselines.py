"""The baselines as presets: SeqFT, SeqLoRA, IncLoRA, O-LoRA, N-LoRA, ELLA and MTL.

Every preset is a ``compose`` of parts (``jaxcl.parts``); the factories take hyper-parameter keyword
overrides with the papers' defaults: LoRA rank 8, α 32 (scale 4) on q_proj and v_proj
(``olora_family.md`` §0.2, ``jumplora_family.md`` §1.8), λ as below.

=========  ===================================================================  ===========
name       parts                                                                spec
=========  ===================================================================  ===========
seqft      full_finetune(ALL_LINEAR_TARGETS), weights carried across tasks      olora §3
seqlora    lora(carry_over=True): one LoRA trained through every task           olora §3
inclora    lora() + new_adapter_per_task(): a fresh LoRA per task, old frozen   olora §3
olora      inclora + orthogonal_to_past(λ1=0.5, λ2=0, form="abs")               olora §1
nlora      inclora + l1_sparsity(λ=0.4, form="code")                            olora §2
ella       inclora + ella_penalty(λ=3e4, scaled, mean over modules)             jumplora §2
mtl        lora(carry_over=True), regime="joint": one LoRA on all data mixed    olora §3
=========  ===================================================================  ===========

Learning rates. ``jaxcl.methods.RECOMMENDED_LR[name] = (first task, later tasks)`` (read through
``jaxcl.methods.recommended_learning_rate(name, task_index)``) gives the rate the papers' scripts use; an engine may read them when the user gives
none. SeqFT: 1e-3 on task 1 and 1e-4 after (the released O-LoRA SeqFT run, ``olora_family.md`` §3).
The LoRA methods: 1e-3 constant (O-LoRA/N-LoRA T5 scripts, the JumpLoRA/ELLA code); note that the
O-LoRA and N-LoRA LLaMA scripts also drop to 1e-4 after task 1 (§1.3, §2.4).
"""

from __future__ import annotations

from typing import Iterable

from jaxcl.core import ALL_LINEAR_TARGETS, LORA_TARGETS, Method, compose
from jaxcl.methods import RECOMMENDED_LR, register
from jaxcl.parts.adapters import full_finetune, lora, new_adapter_per_task
from jaxcl.parts.penalties import ella_penalty, l1_sparsity, orthogonal_to_past

Targets = str | Iterable[str]

RECOMMENDED_LR.update({
    "seqft": (1e-3, 1e-4),
    "seqlora": (1e-3, 1e-3),
    "inclora": (1e-3, 1e-3),
    "olora": (1e-3, 1e-3),
    "nlora": (1e-3, 1e-3),
    "ella": (1e-3, 1e-3),
    "mtl": (1e-3, 1e-3),
})


def _inclora(rank: int, alpha: float, targets: Targets):
    return lora(rank=rank, alpha=alpha, targets=targets), new_adapter_per_task()


@register("seqft", "SeqFT: full fine-tuning of all linear layers, task after task (lr 1e-3 then 1e-4)")
def seqft(*, targets: Targets = ALL_LINEAR_TARGETS) -> Method:
    """SeqFT: full fine-tuning of every linear weight in sequence; each task starts from the last.

    The papers' SeqFT run uses learning rate 1e-3 for task 1 and 1e-4 afterwards
    (``RECOMMENDED_LR["seqft"]``); the other methods use 1e-3.
    """
    return compose(full_finetune(targets), name="seqft")


@register("seqlora", "SeqLoRA: one LoRA (r 8, q/v) trained through all tasks, no regulariser")
def seqlora(*, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS) -> Method:
    """SeqLoRA: one fixed-size LoRA updated by every task in turn (no freezing, no regulariser)."""
    return compose(lora(rank=rank, alpha=alpha, targets=targets, carry_over=True), name="seqlora")


@register("inclora", "IncLoRA: a new LoRA per task, old LoRAs frozen and summed")
def inclora(*, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS) -> Method:
    """IncLoRA: a fresh LoRA per task (B = 0), earlier ones frozen and summed; no task id, no
    regulariser. Equals O-LoRA with λ1 = λ2 = 0 and merge-and-continue (``olora_family.md`` §3)."""
    return compose(*_inclora(rank, alpha, targets), name="inclora")


@register("olora", "O-LoRA (Wang et al. 2023): IncLoRA + orthogonality of new and old LoRA A factors")
def olora(
    *, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS,
    lam1: float = 0.5, lam2: float = 0.0, form: str = "abs",
) -> Method:
    """O-LoRA of Wang et al. (EMNLP Findings 2023, arXiv 2310.14152), not PEFT's "OLoRA"
    (an orthonormal initialisation): IncLoRA + ``orthogonal_to_past`` — λ1·Σ|a_oldᵀ a_t| (code form;
    ``form="squared"`` for the paper's) + λ2·Σ(‖a_t‖_F + ‖b_t‖_F). See ``jaxcl.parts.penalties``."""
    return compose(*_inclora(rank, alpha, targets), orthogonal_to_past(lam1, lam2, form), name="olora")


@register("nlora", "N-LoRA (Yang et al. 2025): IncLoRA + l1 sparsity of the new update (code form)")
def nlora(
    *, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS, lam: float = 0.4, form: str = "code",
) -> Method:
    """N-LoRA (COLING 2025, arXiv 2410.10179): IncLoRA + ``l1_sparsity``. The code (default) takes
    the ℓ1 of the r×r product of the new factors, the paper (``form="paper"``) that of ΔW_t; see
    ``jaxcl.parts.penalties.l1_sparsity`` for the difference and for non-square modules."""
    return compose(*_inclora(rank, alpha, targets), l1_sparsity(lam, form), name="nlora")


@register("ella", "ELLA (Das Biswas et al. 2026): IncLoRA + lambda*||dW_t * W_past||_F^2 (lambda 3e4)")
def ella(
    *, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS,
    lam: float = 3e4, scaled: bool = True, reduction: str = "mean",
) -> Method:
    """ELLA (EACL 2026, arXiv 2601.02232): IncLoRA + ``ella_penalty``, in the JumpLoRA authors'
    convention by default (α/r-scaled ΔW_t and W_past, mean over modules, λ 3e4); ``scaled=False,
    reduction="sum"`` is their O-LoRA-fork convention. See ``jaxcl.parts.penalties.ella_penalty``."""
    return compose(*_inclora(rank, alpha, targets), ella_penalty(lam, scaled, reduction), name="ella")


@register("mtl", "MTL: one LoRA trained on all tasks' data mixed (joint regime, upper reference)")
def mtl(*, rank: int = 8, alpha: float = 32.0, targets: Targets = LORA_TARGETS) -> Method:
    """Multi-task learning, the reference upper bound: one LoRA trained once on every task's training
    data mixed. ``regime="joint"`` tells the engine to merge the stream into one task. The adapter is
    ``carry_over`` (kept in memory at ``end_task``, as SeqLoRA's), so the trained model survives the
    task end: ``apply(params, init(key, params, memory), memory)`` is the trained model."""
    return compose(lora(rank=rank, alpha=alpha, targets=targets, carry_over=True), name="mtl", regime="joint")
