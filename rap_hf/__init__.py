"""rap-hf: Relevance-Aware Prompt-tuning (RAP) for multimodal entity and relation extraction."""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

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

__version__ = "0.1.0"

# In-process use without trust_remote_code; saved models carry auto_map + remote code for the Hub.
AutoConfig.register("rap", RAPConfig, exist_ok=True)
AutoModel.register(RAPConfig, RAPModel, exist_ok=True)
AutoModelForTokenClassification.register(RAPConfig, RAPForMultimodalNER, exist_ok=True)
AutoModelForSequenceClassification.register(RAPConfig, RAPForMultimodalRE, exist_ok=True)

__all__ = [
    "RAPConfig",
    "RAPPreTrainedModel",
    "RAPModel",
    "RAPForMultimodalNER",
    "RAPForMultimodalRE",
    "RAPModelOutput",
    "RAPNEROutput",
    "RAPREOutput",
]
