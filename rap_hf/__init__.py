"""rap-hf: Relevance-Aware Prompt-tuning (RAP) for multimodal entity and relation extraction."""

from .configuration_rap import RAPConfig
from .modeling_rap import (
    RAPForMultimodalNER,
    RAPForMultimodalRE,
    RAPModel,
    RAPModelOutput,
    RAPNEROutput,
    RAPPreTrainedModel,
    RAPREOutput,
)

from .auto import RAPForMultimodalExtraction, register_auto_classes

__version__ = "0.1.0"

# In-process use without trust_remote_code; saved models carry auto_map + remote code for the Hub.
register_auto_classes()

__all__ = [
    "RAPConfig",
    "RAPPreTrainedModel",
    "RAPModel",
    "RAPForMultimodalNER",
    "RAPForMultimodalRE",
    "RAPForMultimodalExtraction",
    "RAPModelOutput",
    "RAPNEROutput",
    "RAPREOutput",
]
