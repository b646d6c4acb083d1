"""Sculpting Subspaces / OSFT as a preset: ``osft`` = ``full_finetune`` + ``osft_projection``.

=====  ===========================================================================  ==================
name   parts                                                                        spec
=====  ===========================================================================  ==================
osft   full_finetune(q,k,v,o,gate,up,down) + osft_projection(adaptive, mrr 0.1,     sculpting_osf §1–2
       trr 0.8, two-sided): full FT with every update orthogonal to the top
       singular subspaces of the weights at task start
=====  ===========================================================================  ==================

Two forms, the same ranks and the same property (``U_kᵀ ΔW = 0``, ``ΔW V_k = 0`` to float
precision). Default: dense weights with a projected update (spec §2.2 variant W), exact for any
optax optimizer (AdamW and its weight decay included). ``factorised=True``: the released codes'
``U_low diag(s_low) V_lowᵀ`` reparametrisation (variant F, ``jaxcl.parts.osft.osft_factorised``),
run through the thin path ``x W_high + ((x U_low) ⊙ s) V_lowᵀ`` of ``jaxcl.models.llama.LowRank``.
Measured (CPU; step / full-FT step; ``experiments/results/bench_osft.md`` on the 7 target
matrices alone, ρ = 0.8, and ``bench_methods_osft_forms.md`` for the whole SmolLM2 step at 8 × 128):

=========================================  ===============  ===============  =========================
form                                       matrices, L=30   TinyLlama layer  whole SmolLM2 step
=========================================  ===============  ===============  =========================
dense, two-sided projection (default)      1.63×            2.67×            1.25× fixed, 1.42× adaptive
  final update only                        1.37×            1.85×            1.19× adaptive
factorised, thin low-rank forward          1.43×            1.77×            1.10× fixed, 2.09× adaptive
factorised, dense W rebuilt (PEFT's way)   1.54×            2.71×            –
=========================================  ===============  ===============  =========================

The factorised form holds half the optimizer state with uniform ranks (147 M vs 296 M floats on
SmolLM2 at ρ = 0.8) but all layers of a stacked leaf share one factor width ``r − min_l k_l``:
with the adaptive rule's low-rank first layer every layer's factors are that wide (136 M trained
floats, more than W), so it is slower there. Use it with ``rank_rule="fixed"``/``"progressive"``.

Learning rate: ``RECOMMENDED_LR["osft"] = (1e-5, 1e-5)``, the released scripts' AdamW rate (T5
``finetune_svd.py`` and LLaMA-2 ``test2.py``, wd 0.01 for LLaMA; spec §6; a secondary summary
gives 5e-5 for T5-Large). jaxcl's tests use larger rates on tiny random models.

References: arXiv 2504.07097 (ICLR 2026, OSFT); ``jaxcl.parts.osft`` for the maths and options.
"""

from __future__ import annotations

from typing import Iterable

from jaxcl.core import ALL_LINEAR_TARGETS, Method, compose
from jaxcl.methods import RECOMMENDED_LR, register
from jaxcl.parts.adapters import full_finetune
from jaxcl.parts.osft import osft_factorised, osft_projection

RECOMMENDED_LR["osft"] = (1e-5, 1e-5)


@register("osft", "Sculpting Subspaces / OSFT: full FT of all linear weights, updates orthogonal to their top "
                  "singular subspaces (adaptive ranks, mrr 0.1, trr 0.8)")
def osft(*, targets: str | Iterable[str] = ALL_LINEAR_TARGETS, factorised: bool = False, **options) -> Method:
    """OSFT: ``compose(full_finetune(targets), osft_projection(targets, **options))``.

    ``factorised=True`` (CLI ``--set factorised=True``): ``compose(osft_factorised(targets,
    **options))`` instead, the released codes' trainable ``U_low, s_low, V_low`` with a thin
    low-rank forward (no ``form`` option there).

    ``options`` are ``jaxcl.parts.osft.osft_projection``'s: ``rank_rule`` ("adaptive", "fixed",
    "progressive"), ``mrr`` (0.1), ``trr`` (0.8), ``ratio``, ``preserve_pretrained`` (False),
    ``form`` ("two_sided" | "high_high"), ``project_gradients`` (True), ``importance_batches`` (5).
    """
    if factorised:
        return compose(osft_factorised(targets=targets, **options), name="osft")
    return compose(full_finetune(targets), osft_projection(targets=targets, **options), name="osft")
