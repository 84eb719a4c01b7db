"""In-process auto-class registration: `AutoModel` gives the head that `config.task` names, as the Hub auto_map does."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from .configuration_rap import RAPConfig
from .modeling_rap import RAPForMultimodalNER, RAPForMultimodalRE, RAPPreTrainedModel
from .processing_rap import RAPProcessor

TASK_HEADS = {"ner": RAPForMultimodalNER, "re": RAPForMultimodalRE}


class RAPForMultimodalExtraction(RAPPreTrainedModel):
    """Never instantiated: `AutoModel` dispatches to `RAPForMultimodalNER` or `RAPForMultimodalRE` by `config.task`.

    A saved RAP model's auto_map names its head; registering a single headless class for `AutoModel` in-process
    would shadow that (transformers prefers registered local code), so this dispatcher keeps both paths the same.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("adapter_kwargs", None)
        if config is None:
            config = RAPConfig.from_pretrained(pretrained_model_name_or_path)
        head = TASK_HEADS[config.task]
        return head.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return TASK_HEADS[config.task]._from_config(config, **kwargs)


def register_auto_classes() -> None:
    """`AutoConfig`, `AutoModel` (task head by `config.task`), the task auto classes and `AutoProcessor`, in-process."""
    AutoConfig.register("rap", RAPConfig, exist_ok=True)
    AutoModel.register(RAPConfig, RAPForMultimodalExtraction, exist_ok=True)
    AutoModelForTokenClassification.register(RAPConfig, RAPForMultimodalNER, exist_ok=True)
    AutoModelForSequenceClassification.register(RAPConfig, RAPForMultimodalRE, exist_ok=True)
    AutoProcessor.register(RAPConfig, RAPProcessor, exist_ok=True)
