#!/usr/bin/env python
"""Relevance diagnostic: beta's distribution over real inputs, and the gradient that reaches each module.

    python scripts/benchmarks/relevance.py                          # fresh RAP: MiniLM-L6 + EfficientNet-Lite0
    python scripts/benchmarks/relevance.py --model OUT   # any saved RAP model
    python scripts/benchmarks/relevance.py --train_steps 200 --data_dir CORPUS   # plus a short training curve
    python scripts/benchmarks/relevance.py --smoke                  # CI-sized

Tables (Markdown):
  * beta with the samples' own images (matched), with another sample's images (shuffled, a seeded derangement; across
    topics where the corpus manifest has them), and one text with every image (how much beta depends on the image
    alone); ROC AUC of matched above shuffled, overall and per sample kind where the corpus has a manifest.json (the
    generated corpora of make_sample_data.py do);
  * after one backward on a training batch: gradient norm (and per-element RMS) of every module group, and for each
    relevance-path group how many times smaller it is than the fusion units' (FSRU, CFU);
  * with --train_steps: loss, beta (matched / shuffled) and the AUC every --eval_every steps of AdamW at the paper's
    learning rate.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rap_hf.data import SAMPLE_DIR, load_dataset  # noqa: E402
from rap_hf.data.features import VisualFeatureCache  # noqa: E402
from rap_hf.encoders import TINY_VISION_CONFIG, save_tiny_text_model  # noqa: E402
from rap_hf.pipelines import load_model_and_processor  # noqa: E402
from rap_hf.trainer import PAPER_DEFAULTS, parameter_groups  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.relevance import (  # noqa: E402
    distribution,
    fusion_to_relevance_ratios,
    gradient_norms,
    image_holders,
    ranking_auc,
    shuffled_images,
)
from rap_experiment.run import (  # noqa: E402
    TASK_OF_DATASET,
    DataArguments,
    ModelArguments,
    RunArguments,
    TrainingCollator,
    make_loader,
    model_and_processor,
    prepare_splits,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved RAP model folder; default: fresh RAP layers")
    parser.add_argument("--text_model", default="minilm", help="text encoder of a fresh RAP")
    parser.add_argument(
        "--vision_model",
        default="efficientnet-lite0",
        help="vision encoder of a fresh RAP ('': randomly initialised ResNet-101)",
    )
    parser.add_argument("--config_overrides", default=None, help="JSON of RAPConfig fields for a fresh RAP")
    parser.add_argument("--dataset", default="twitter2017", choices=sorted(TASK_OF_DATASET))
    parser.add_argument("--data_dir", default=None, help="corpus folder (default: the bundled sample)")
    parser.add_argument("--split", default="test", help="split beta is measured on")
    parser.add_argument("--num_examples", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8, help="training batch (gradient, curve)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle_seed", type=int, default=1234)
    parser.add_argument("--train_steps", type=int, default=0, help="AdamW steps of the training curve (0: none)")
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the paper's for the task")
    parser.add_argument("--new_params_learning_rate", type=float, default=None, help="RAP layers' lr (default: same)")
    parser.add_argument("--feature_cache_dir", default=None, help="visual feature cache (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--smoke", action="store_true", help="bundled sample, tiny random encoders (seconds)")
    return parser.parse_args(argv)


SMOKE_OVERRIDES = {"fusion_num_heads": 4, "relevance_dim": 16, "routing_layers": 2}


# ======================================================================================================================
# Model and data
# ======================================================================================================================
def build(args: argparse.Namespace, raw: datasets.DatasetDict):
    """(model, processor, description): a saved model, or fresh RAP layers around pretrained encoders."""
    if args.model:
        model, processor = load_model_and_processor(args.model)
        return model, processor, f"saved model {Path(args.model).name}"
    torch.manual_seed(args.seed)
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if args.smoke:  # tiny random encoders: the code path in seconds
        overrides = {**SMOKE_OVERRIDES, "vision_config": TINY_VISION_CONFIG, **overrides}
        folder = tempfile.mkdtemp(prefix="rap-relevance-smoke-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        args.text_model, args.vision_model = save_tiny_text_model(folder), None
    model_args = ModelArguments(
        text_model=args.text_model,
        vision_model=args.vision_model or None,
        config_overrides=json.dumps(overrides) if overrides else None,
    )
    model, processor = model_and_processor(TASK_OF_DATASET[args.dataset], raw, model_args, 128)
    encoders = "tiny random encoders" if args.smoke else f"{args.text_model} + {args.vision_model}"
    return model, processor, f"fresh RAP (seed {args.seed}) on {encoders}"


def prepared_splits(args, raw, model, processor, cache_dir: Path) -> datasets.DatasetDict:
    """Tokenised train and evaluation splits with cached visual features."""
    task = TASK_OF_DATASET[args.dataset]
    wanted = datasets.DatasetDict({"train": raw["train"], "eval": raw[args.split]})
    data_args = DataArguments(dataset=args.dataset, max_eval_samples=args.num_examples)
    prepared = prepare_splits(wanted, processor, task, data_args)
    prepared["eval"] = prepared["eval"].select(range(min(args.num_examples, len(prepared["eval"]))))
    cache = VisualFeatureCache(cache_dir, model=model.base_model, processor=processor)
    return cache.attach(prepared)


def manifest_fields(args, dataset: datasets.Dataset) -> tuple[list[str] | None, list[str] | None]:
    """Kind and topic of every evaluated sample from the corpus manifest (generated corpora), else None."""
    manifest = Path(args.data_dir or SAMPLE_DIR) / "manifest.json"
    if not manifest.exists():
        return None, None
    split = {"validation": "valid"}.get(args.split, args.split)  # the manifest uses the corpus file names
    entries = json.loads(manifest.read_text()).get(args.dataset, {}).get(split)
    if not entries:
        return None, None
    rows = [entries[i] for i in dataset["example_index"]]
    topics = [row.get("topic") for row in rows]
    return [row["kind"] for row in rows], topics if all(topics) else None


def loader(model, processor, dataset, batch_size: int, shuffle: bool = False):
    collator = TrainingCollator(processor=processor, num_crops=model.config.num_crops)
    return make_loader(dataset, collator, batch_size, shuffle, seed=0)


# ======================================================================================================================
# Measurements
# ======================================================================================================================
@torch.no_grad()
def relevance_of(model, processor, dataset: datasets.Dataset) -> list[float]:
    """beta of every sample (eval mode)."""
    model.eval()
    values: list[float] = []
    for batch in loader(model, processor, dataset, 32):
        batch.pop("example_index")
        batch.pop("labels", None)
        values += model(**batch).relevance.tolist()
    return values


def one_text_every_image(dataset: datasets.Dataset, holders: list[int]) -> datasets.Dataset:
    """The first image holder's text paired with every holder's image."""
    text = dataset.remove_columns(["visual_features", "image_mask"]).select([holders[0]] * len(holders))
    visual = dataset.select_columns(["visual_features", "image_mask"]).select(holders).flatten_indices()
    return datasets.concatenate_datasets([text.flatten_indices(), visual], axis=1)


def beta_report(
    model, processor, dataset: datasets.Dataset, args, kinds: list[str] | None, topics: list[str] | None = None
) -> dict[str, Any]:
    """beta with own, shuffled (from tweets of other topics where the manifest has topics) and one text's images."""
    holders = image_holders(dataset)
    if len(holders) < 2:
        raise SystemExit("the evaluated split needs at least two samples with an image")
    matched = relevance_of(model, processor, dataset)
    shuffled = relevance_of(model, processor, shuffled_images(dataset, args.shuffle_seed, topics))
    same_text = relevance_of(model, processor, one_text_every_image(dataset, holders))
    report = {
        "matched": distribution([matched[i] for i in holders]),
        "shuffled": distribution([shuffled[i] for i in holders]),
        "one text, every image": distribution(same_text),
        "auc": ranking_auc([matched[i] for i in holders], [shuffled[i] for i in holders]),
        "per_kind": {},
    }
    for kind in sorted(set(kinds or [])):
        members = [i for i in holders if kinds[i] == kind]
        if members:
            report["per_kind"][kind] = {
                "n": len(members),
                "matched": distribution([matched[i] for i in members])["mean"],
                "shuffled": distribution([shuffled[i] for i in members])["mean"],
                "auc": ranking_auc([matched[i] for i in members], [shuffled[i] for i in members]),
            }
    return report


def gradient_report(model, processor, train: datasets.Dataset, batch_size: int) -> dict[str, Any]:
    """Gradient norms per module group after one backward on the first training batch (dropout on, as in training)."""
    model.train()
    model.zero_grad()
    batch = next(iter(loader(model, processor, train, batch_size)))
    batch.pop("example_index")
    output = model(**batch)
    output.loss.backward()
    norms = gradient_norms(model)
    model.zero_grad()
    losses = {
        name: float(getattr(output, name).detach())
        for name in ("loss", "task_loss", "router_loss", "relevance_matching_loss")
        if getattr(output, name, None) is not None
    }
    return {"norms": norms, "fusion_over_group": fusion_to_relevance_ratios(norms), "losses": losses}


def training_curve(model, processor, splits, args) -> list[dict[str, Any]]:
    """AdamW at the paper's learning rate for --train_steps steps; beta and AUC on the eval split along the way."""
    learning_rate = args.learning_rate or PAPER_DEFAULTS[model.config.task][2]
    training_args = RunArguments(
        learning_rate=learning_rate,
        weight_decay=0.0,
        new_params_learning_rate=args.new_params_learning_rate or learning_rate,
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, training_args))
    curve, step, losses = [], 0, []
    while step < args.train_steps:
        for batch in loader(model, processor, splits["train"], args.batch_size, shuffle=True):
            model.train()
            batch.pop("example_index")
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
            step += 1
            if step % args.eval_every == 0 or step == args.train_steps:
                beta = beta_report(model, processor, splits["eval"], args, None, args.topics)
                curve.append(
                    {
                        "step": step,
                        "loss": sum(losses) / len(losses),
                        "matched": beta["matched"]["mean"],
                        "shuffled": beta["shuffled"]["mean"],
                        "sd": beta["matched"]["sd"],
                        "auc": beta["auc"],
                    }
                )
                losses = []
            if step >= args.train_steps:
                break
    return curve


# ======================================================================================================================
# Tables
# ======================================================================================================================
def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(results: dict[str, Any]) -> None:
    beta = results["beta"]
    print(f"\n### beta on {results['data']} ({results['model']})\n")
    print("| images | n | mean | sd | min | median | max |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("matched", "shuffled", "one text, every image"):
        d = beta[name]
        print(
            f"| {name} | {d['n']} | {fmt(d['mean'])} | {fmt(d['sd'])} | {fmt(d['min'])} | {fmt(d['median'])} | "
            f"{fmt(d['max'])} |"
        )
    print(f"\nROC AUC, matched above shuffled: {fmt(beta['auc'], 3)}")
    if beta["per_kind"]:
        print("\n| sample kind | n | beta matched | beta shuffled | AUC |\n| --- | --- | --- | --- | --- |")
        for kind, row in beta["per_kind"].items():
            print(f"| {kind} | {row['n']} | {fmt(row['matched'])} | {fmt(row['shuffled'])} | {fmt(row['auc'], 3)} |")
    gradients = results["gradients"]
    print("\n### Gradient after one backward (training batch, dropout on)\n")
    print("losses: " + ", ".join(f"{k} {v:.4f}" for k, v in gradients["losses"].items()) + "\n")
    print("| module group | parameters | gradient norm | RMS per element | fusion units / group |")
    print("| --- | --- | --- | --- | --- |")
    for group, row in gradients["norms"].items():
        ratio = gradients["fusion_over_group"].get(group)
        print(
            f"| {group} | {row['parameters']:,} | {row['norm']:.3e} | {row['rms']:.3e} | "
            f"{'' if ratio is None else f'{ratio:.1f}x'} |"
        )
    if results.get("curve"):
        print("\n### Training curve\n\n| step | mean loss | beta matched | beta shuffled | sd matched | AUC |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in results["curve"]:
            print(
                f"| {row['step']} | {row['loss']:.3f} | {fmt(row['matched'])} | {fmt(row['shuffled'])} | "
                f"{fmt(row['sd'])} | {fmt(row['auc'], 3)} |"
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.num_examples, args.train_steps, args.eval_every = 16, min(args.train_steps, 4), 2
    raw = load_dataset(args.dataset, args.data_dir)
    model, processor, description = build(args, raw)
    if not model.config.multimodal or not model.config.use_relevance_reasoning:
        raise SystemExit("this model has no relevance reasoning (text-only baseline or MRR ablation): no beta")
    with tempfile.TemporaryDirectory(prefix="rap-relevance-") as temporary:
        splits = prepared_splits(args, raw, model, processor, Path(args.feature_cache_dir or temporary))
        kinds, args.topics = manifest_fields(args, splits["eval"])
        results = {
            "model": description,
            "data": f"{args.dataset} {args.split} ({args.data_dir or 'bundled sample'})",
            "beta": beta_report(model, processor, splits["eval"], args, kinds, args.topics),
            "gradients": gradient_report(model, processor, splits["train"], args.batch_size),
        }
        if args.train_steps:
            results["curve"] = training_curve(model, processor, splits, args)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
