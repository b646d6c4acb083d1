"""JumpLoRA presets (Dragomir et al., arXiv 2604.16171): the JumpReLU gate on another preset's LoRA.

==============  =================================================================================
name            parts
==============  =================================================================================
jumplora        inclora's parts with ``jumprelu_gate`` after ``lora``: IncLoRA + JumpLoRA, i.e. the
                repo's train_ella.py with λ = 0 (``jumplora_family.md`` §1.5)
jumplora+ella   ella's parts with the gate: the repo's main mode (ELLA λ 3e4, scaled, mean)
jumplora+olora  olora's parts with the gate (O-LoRA λ1 0.5, code form)
==============  =================================================================================

**O-LoRA + JumpLoRA is not in the official code** (spec §1.5: only the ELLA objective, and IncLoRA
as its λ = 0 case, are implemented there; whether the paper reports it is unconfirmed). Here it is
the plain composition: O-LoRA's penalty acts on the ``a`` factors and does not see the gate.

All mechanics follow the released code (the paper's method section was not available, spec §6
item 1); see ``jaxcl.parts.gates``. Learning rate 1e-3 constant, 1 epoch, batch 32 (spec §1.8).
The gate's keyword arguments (``GATE_HYPERPARAMS``: threshold, bandwidth, interp, init_threshold,
penalty_threshold_grad) go to ``jumprelu_gate``, the others to the base preset (e.g. rank, lam).
"""

from __future__ import annotations

from jaxcl.core import Method, compose
from jaxcl.methods import get_method, register
from jaxcl.parts.gates import jumprelu_gate

GATE_HYPERPARAMS = ("threshold", "bandwidth", "interp", "init_threshold", "penalty_threshold_grad")


def with_gate(base: str, name: str, **hp) -> Method:
    """The preset ``base`` with ``jumprelu_gate`` inserted right after its part named "lora" (the gate
    rewrites the "current" delta that lora writes). ``hp`` keys in ``GATE_HYPERPARAMS`` go to the
    gate, the others to ``get_method(base, ...)``."""
    gate = jumprelu_gate(**{k: v for k, v in hp.items() if k in GATE_HYPERPARAMS})
    parts = get_method(base, **{k: v for k, v in hp.items() if k not in GATE_HYPERPARAMS}).parts
    names = [p.name for p in parts]
    if "lora" not in names:
        raise ValueError(f"preset {base!r} has no 'lora' part to gate (parts: {names})")
    i = names.index("lora") + 1
    return compose(*parts[:i], gate, *parts[i:], name=name)


@register("jumplora", "JumpLoRA on IncLoRA: JumpReLU-gated sparse LoRA per task (dense->sparse 20%-80%)")
def jumplora(**hp) -> Method:
    """IncLoRA + JumpLoRA; ``hp``: the gate's (``GATE_HYPERPARAMS``) and inclora's (rank, alpha, targets)."""
    return with_gate("inclora", "jumplora", **hp)


@register("jumplora+ella", "JumpLoRA + ELLA (the JumpLoRA repo's main mode, lambda 3e4)")
def jumplora_ella(**hp) -> Method:
    """ELLA + JumpLoRA; ``hp``: the gate's and ella's (rank, alpha, targets, lam, scaled, reduction)."""
    return with_gate("ella", "jumplora+ella", **hp)


@register("jumplora+olora", "JumpLoRA + O-LoRA (not in the official code: plain composition)")
def jumplora_olora(**hp) -> Method:
    """O-LoRA + JumpLoRA (not in the repo); ``hp``: the gate's and olora's (rank, alpha, targets, lam1, lam2, form)."""
    return with_gate("olora", "jumplora+olora", **hp)
