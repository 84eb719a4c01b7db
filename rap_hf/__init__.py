"""rap-hf: Relevance-Aware Prompt-tuning (RAP) for multimodal entity and relation extraction."""

from .auto import register_auto_classes
from .configuration_rap import RAPConfig
from .data import load_dataset
from .metrics import compute_ner_metrics, compute_re_metrics
from .modeling_rap import (
    RAPForMultimodalExtraction,
    RAPForMultimodalNER,
    RAPForMultimodalRE,
    RAPModel,
    RAPModelOutput,
    RAPNEROutput,
    RAPPreTrainedModel,
    RAPREOutput,
)
from .pipelines import RAPPipeline, pipeline
from .processing_rap import RAPDataCollator, RAPProcessor

__version__ = "0.1.0"

# In-process use without trust_remote_code; saved models carry auto_map + remote code for the Hub.
register_auto_classes()

__all__ = [
    "load_dataset",
    "compute_ner_metrics",
    "compute_re_metrics",
    "pipeline",
    "RAPPipeline",
    "RAPProcessor",
    "RAPDataCollator",
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
