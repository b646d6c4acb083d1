"""jaxcl: continual learning of large language models in JAX."""

from jaxcl.models import LlamaConfig, Model, load_pretrained  # sets HF_HUB_OFFLINE (models/pretrained.py)

__version__ = "0.1.0"
__all__ = ["LlamaConfig", "Model", "load_pretrained"]
