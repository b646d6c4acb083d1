"""Composable parts of CL methods (see ``jaxcl.core`` for the slots a part can fill)."""

from jaxcl.parts.adapters import full_finetune, lora, new_adapter_per_task
from jaxcl.parts.penalties import ella_penalty, l1_sparsity, olora_orthogonality, orthogonal_to_past

__all__ = ["full_finetune", "lora", "new_adapter_per_task"]
__all__ += ["ella_penalty", "l1_sparsity", "olora_orthogonality", "orthogonal_to_past"]

from jaxcl.parts.gates import jumprelu_gate
from jaxcl.parts.lie import hadamard_lie, lie_orthogonality, lie_rotation, rotation_orthogonality

__all__ += ["hadamard_lie", "jumprelu_gate", "lie_orthogonality", "lie_rotation", "rotation_orthogonality"]

from jaxcl.parts.osft import osft_projection

__all__ += ["osft_projection"]
