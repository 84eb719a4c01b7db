"""rap-hf: Relevance-Aware Prompt-tuning (RAP) for multimodal entity and relation extraction.

`import rap_hf` is cheap (no torch, datasets or model code): every public name is imported from its submodule on
first access (`rap_hf.RAPConfig`, `from rap_hf import pipeline`), as transformers' own packages do.
"""

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Submodule -> the public names it defines.
_IMPORT_STRUCTURE = {
    "auto": ["register_auto_classes"],
    "configuration_rap": ["RAPConfig"],
    "data": ["load_dataset"],
    "encoders": ["build_model_and_processor"],
    "metrics": ["compute_ner_metrics", "compute_re_metrics"],
    "model_card": ["RAPModelCardCallback", "RAPModelCardData"],
    "modeling_rap": [
        "RAPForMultimodalExtraction",
        "RAPForMultimodalNER",
        "RAPForMultimodalRE",
        "RAPModel",
        "RAPModelOutput",
        "RAPNEROutput",
        "RAPPreTrainedModel",
        "RAPREOutput",
    ],
    "pipelines": ["RAPPipeline", "pipeline"],
    "processing_rap": ["RAPDataCollator", "RAPProcessor"],
    "trainer": ["RAPTrainer", "RAPTrainingArguments"],
}
_NAME_TO_MODULE = {name: module for module, names in _IMPORT_STRUCTURE.items() for name in names}

__all__ = [
    "load_dataset",
    "build_model_and_processor",
    "RAPTrainer",
    "RAPTrainingArguments",
    "RAPModelCardData",
    "RAPModelCardCallback",
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

if TYPE_CHECKING:
    from .auto import register_auto_classes as register_auto_classes  # public, not in __all__ (as before)
    from .configuration_rap import RAPConfig
    from .data import load_dataset
    from .encoders import build_model_and_processor
    from .metrics import compute_ner_metrics, compute_re_metrics
    from .model_card import RAPModelCardCallback, RAPModelCardData
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
    from .trainer import RAPTrainer, RAPTrainingArguments


def __getattr__(name: str) -> Any:
    """A public name (or a submodule) of the package, imported on first access and kept."""
    module_name = _NAME_TO_MODULE.get(name)
    if module_name is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAME_TO_MODULE))


# Auto classes need torch (transformers' PreTrainedConfig imports it): registered once the RAP classes load (any route).
_REGISTRATION_MODULES = ("auto", "configuration_rap", "modeling_rap", "processing_rap")  # rap_hf.auto + its imports
_TRIGGERS = frozenset((*_REGISTRATION_MODULES, "pipelines"))
_registration = {"done": False, "running": False}


def _register_auto_classes_once() -> None:
    if _registration["done"] or _registration["running"]:
        return
    for name in _REGISTRATION_MODULES:
        # In sys.modules but not yet bound on the package: still executing; its binding calls this again.
        if f"{__name__}.{name}" in sys.modules and name not in globals():
            return
    _registration["running"] = True
    try:
        from .auto import register_auto_classes

        register_auto_classes()
        _registration["done"] = True
    finally:
        _registration["running"] = False


class _Package(types.ModuleType):
    """rap_hf's module type: Python binds every imported submodule on its package, so this sees each import."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _TRIGGERS and isinstance(value, types.ModuleType):
            _register_auto_classes_once()


sys.modules[__name__].__class__ = _Package

# transformers' auto classes already loaded (torch paid): register now, so AutoModel works right after `import rap_hf`.
if getattr(sys.modules.get("transformers.models.auto.modeling_auto"), "AutoModel", None) is not None:
    _register_auto_classes_once()
