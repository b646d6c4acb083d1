"""Sculpting Subspaces / OSFT as a preset: ``osft`` = ``full_finetune`` + ``osft_projection``.

=====  ===========================================================================  ==================
name   parts                                                                        spec
=====  ===========================================================================  ==================
osft   full_finetune(q,k,v,o,gate,up,down) + osft_projection(adaptive, mrr 0.1,     sculpting_osf §1–2
       trr 0.8, two-sided): full FT with every update orthogonal to the top
       singular subspaces of the weights at task start
=====  ===========================================================================  ==================

Dense weights with a projected update (spec §2.2 variant W), not the factorised
``U_low Σ_low V_lowᵀ`` reparametrisation of the released codes (variant F): variant W is the
one the ``full_finetune`` engine path trains and keeps the constraint exact for any optax
optimizer (AdamW and its weight decay included). ``experiments/bench_osft.py`` measures both on
the 7 target matrices alone (``experiments/results/bench_osft.md``; CPU, 512 tokens per layer,
ρ = 0.8; step / full-FT step):

==================================  ==================  ==========================
form                                SmolLM2-135M, L=30  TinyLlama-1.1B, one layer
==================================  ==================  ==========================
two-sided projection (this)         1.63×               2.67×
  final update only                 1.37×               1.85×
factorised, dense W rebuilt (PEFT)  1.54×               2.71×
factorised, thin low-rank forward   1.43×               1.77×
==================================  ==================  ==========================

Variant F is cheaper (and holds half the optimizer state) only with a thin low-rank forward
``x W_high + ((x U_low) ⊙ s) V_lowᵀ``, which ``jaxcl.models.llama`` (dense weights) does not
have; through a rebuilt dense weight, the only way a ``delta`` part can run it, it is not
cheaper. So variant F is not shipped yet. In the whole model step the projection weighs less
(adaptive ranks, 8 × 128 tokens: ``osft`` 1.19× ``seqft`` in ``bench_methods.md``).

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
