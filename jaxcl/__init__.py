"""jaxcl: continual learning of large language models in JAX."""

import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from jaxcl.models import LlamaConfig, Model, load_pretrained  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LlamaConfig", "Model", "load_pretrained"]
