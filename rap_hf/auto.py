"""In-process auto-class registration: `AutoModel` gives the head that `config.task` names, as the Hub auto_map does.

Called by `rap_hf` itself once its RAP classes are loaded (see rap_hf/__init__.py); calling it again is harmless.
"""

import importlib

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from .configuration_rap import RAPConfig
from .modeling_rap import RAPForMultimodalExtraction, RAPForMultimodalNER, RAPForMultimodalRE
from .processing_rap import RAPProcessor


def register_auto_classes() -> None:
    """`AutoConfig`, `AutoModel` (task head by `config.task`), the task auto classes and `AutoProcessor`, in-process,
    and transformers' `"rap-extraction"` pipeline task."""
    AutoConfig.register("rap", RAPConfig, exist_ok=True)
    AutoModel.register(RAPConfig, RAPForMultimodalExtraction, exist_ok=True)
    AutoModelForTokenClassification.register(RAPConfig, RAPForMultimodalNER, exist_ok=True)
    AutoModelForSequenceClassification.register(RAPConfig, RAPForMultimodalRE, exist_ok=True)
    AutoProcessor.register(RAPConfig, RAPProcessor, exist_ok=True)
    importlib.import_module(f"{__package__}.pipelines")  # registers the task; by name: it may be importing right now
