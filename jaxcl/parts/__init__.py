"""Composable parts of CL methods (see ``jaxcl.core`` for the slots a part can fill)."""

from jaxcl.parts.adapters import full_finetune, lora, new_adapter_per_task

__all__ = ["full_finetune", "lora", "new_adapter_per_task"]
