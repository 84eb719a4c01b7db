#!/usr/bin/env python
"""How much attention RAP's prefix prompts take in every layer of the text encoder, fresh or trained.

    python scripts/benchmarks/prefix_attention.py                                  # fresh RAP on MiniLM-L6
    python scripts/benchmarks/prefix_attention.py --model OUT --dataset mnre --data_dir ../shared/data
    python scripts/benchmarks/prefix_attention.py --smoke                          # CI-sized

Why it matters: P-tuning v2 prepends m_p key/value slots to every layer (Eq. 24). A prefix near zero is not a no-op:
each slot still gets softmax weight exp(q . 0) = 1 and contributes a near-zero value, so a fresh RAP scales every
layer's attention output down by the mass its prefix takes. This script measures that mass (mean over heads and real
query tokens, then over examples) and how large the prefix values are next to the token values (RMS ratio), on
text-only input, the setting of `quality.py`. Results and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import datasets
import torch

from rap_hf.data import load_dataset
from rap_hf.pipelines import load_model_and_processor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.run import (  # noqa: E402
    DataArguments,
    ModelArguments,
    TrainingCollator,
    make_loader,
    model_and_processor,
    prepare_splits,
)

TASK_OF_DATASET = {"twitter2017": "ner", "twitter2015": "ner", "mnre": "re"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="minilm", help="a saved RAP folder (trained), or a text encoder for a fresh RAP"
    )
    parser.add_argument("--dataset", default="twitter2017", choices=sorted(TASK_OF_DATASET))
    parser.add_argument("--data_dir", default=None, help="corpus folder (default: the bundled sample)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_examples", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of a fresh RAP")
    parser.add_argument("--smoke", action="store_true", help="bundled sample, 16 examples")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, dataset_dict):
    """(model, processor, where from): a trained checkpoint, or fresh RAP layers on a pretrained text encoder."""
    config_file = Path(args.model) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "rap":
        model, processor = load_model_and_processor(args.model)
        return model, processor, f"trained checkpoint {args.model}"
    torch.manual_seed(args.seed)
    model_args = ModelArguments(text_model=args.model)
    task = TASK_OF_DATASET[args.dataset]
    model, processor = model_and_processor(task, dataset_dict, model_args, args.max_length)
    return model, processor, f"fresh RAP layers (seed {args.seed}) on text encoder {args.model}"


class PrefixAttentionRecorder:
    """Forward hooks on every self-attention module and on the prompt projection. Per layer and example it keeps the
    attention mass on the prefix slots and the RMS of the prefix values relative to the RMS of the token values."""

    def __init__(self, encoder: torch.nn.Module, prompt_projection: torch.nn.Module, prompt_length: int):
        self.prompt_length = prompt_length
        self.query_mask: torch.Tensor | None = None
        self.mass: dict[int, list[float]] = {}
        self.value_ratio: dict[int, list[float]] = {}
        self.prefixes: tuple | None = None
        self.token_values: dict[int, torch.Tensor] = {}
        layers = [m for m in encoder.modules() if type(m).__name__.endswith("SelfAttention")]
        if not layers:
            raise RuntimeError(f"no *SelfAttention modules found in {type(encoder).__name__}")
        prompt_projection.register_forward_hook(lambda module, inputs, outputs: setattr(self, "prefixes", outputs))
        for index, layer in enumerate(layers):
            layer.value.register_forward_hook(self.keep_token_values(index))
            layer.register_forward_hook(self.record(index))

    def keep_token_values(self, index: int):
        def keep(module, inputs, outputs) -> None:
            self.token_values[index] = outputs

        return keep

    def per_example_mean(self, per_token: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) -> (batch,): mean over the real (non-padding) tokens."""
        mask = self.query_mask.to(per_token.dtype)
        return (per_token * mask).sum(-1) / mask.sum(-1)

    def record(self, index: int):
        def record(module, inputs, outputs) -> None:
            weights = outputs[1]  # (batch, heads, queries, prefix + keys); eager attention returns them
            if weights is None or weights.shape[-1] == weights.shape[-2]:
                return  # the un-prompted pass that feeds E_t has no prefix
            mass = self.per_example_mean(weights[..., : self.prompt_length].sum(-1).mean(1))
            self.mass.setdefault(index, []).extend(mass.tolist())
            token_rms = self.per_example_mean(self.token_values[index].pow(2).mean(-1)).sqrt()
            prefix_rms = self.prefixes[index][1].pow(2).mean(dim=(1, 2, 3)).sqrt()  # values: (batch, heads, m_p, d)
            self.value_ratio.setdefault(index, []).extend((prefix_rms / token_rms).tolist())

        return record


def measure(model, processor, args: argparse.Namespace, dataset_dict) -> PrefixAttentionRecorder:
    task = TASK_OF_DATASET[args.dataset]
    data_args = DataArguments(dataset=args.dataset, max_eval_samples=args.num_examples, max_length=args.max_length)
    only_split = datasets.DatasetDict({args.split: dataset_dict[args.split]})
    prepared = prepare_splits(only_split, processor, task, data_args)
    collator = TrainingCollator(processor=processor, num_crops=model.config.num_crops)
    loader = make_loader(prepared[args.split], collator, args.batch_size, shuffle=False, seed=0)
    encoder = model.base_model.text_encoder
    encoder.set_attn_implementation("eager")  # sdpa does not return attention weights
    model.eval()
    recorder = PrefixAttentionRecorder(encoder, model.base_model.prompt_projection, model.config.prompt_length)
    with torch.inference_mode():
        for batch in loader:
            batch.pop("example_index")
            recorder.query_mask = batch["attention_mask"]
            model(**batch)
    if not recorder.mass:
        raise RuntimeError("no prefixed attention weights were recorded: the encoder did not run eager attention")
    return recorder


def print_table(recorder: PrefixAttentionRecorder, source: str, args: argparse.Namespace) -> None:
    count = len(next(iter(recorder.mass.values())))
    print(
        f"\n### Attention mass on the {recorder.prompt_length} prefix slots ({source}; {args.dataset} {args.split}, "
        f"{count} examples, text only)\n"
    )
    print("| layer | prefix attention mass (mean ± sd over examples) | min | max | prefix / token value RMS |")
    print("| --- | --- | --- | --- | --- |")
    for layer, values in sorted(recorder.mass.items()):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ratio = statistics.mean(recorder.value_ratio[layer])
        print(
            f"| {layer} | {statistics.mean(values):.3f} ± {spread:.3f} | {min(values):.3f} | {max(values):.3f} | "
            f"{ratio:.3f} |"
        )
    overall = statistics.mean(v for values in recorder.mass.values() for v in values)
    print(f"\nmean over layers: {overall:.3f} (each layer's token attention is scaled by about {1 - overall:.2f})")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        args.data_dir, args.num_examples = None, 16
    dataset_dict = load_dataset(args.dataset, args.data_dir, text_only=True)
    if args.split not in dataset_dict:
        sys.exit(f"split {args.split!r} not in {sorted(dataset_dict)}")
    model, processor, source = build(args, dataset_dict)
    if not model.config.multimodal:
        sys.exit(f"{args.model} is a text-only baseline (config.multimodal=False): it has no prefix")
    if model.config.task != TASK_OF_DATASET[args.dataset]:
        sys.exit(
            f"{args.model} is a {model.config.task} model but --dataset {args.dataset} is a "
            f"{TASK_OF_DATASET[args.dataset]} corpus"
        )
    print_table(measure(model, processor, args, dataset_dict), source, args)


if __name__ == "__main__":
    main()
