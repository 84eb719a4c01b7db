# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Speed benchmark: RAP against its text-only floor (the same encoder + CRF / [C_s; C_o]), same batch and length.

Variants, for NER and RE, for a training step (forward + backward + AdamW) and for inference (eval, no grad):
  * floor          `RAPConfig(multimodal=False)`: the text encoder and the task head alone;
  * RAP            the default configuration, fed cached visual features (what training and the pipeline use);
  * RAP, paper size  `RAPConfig.paper_architecture()`: E_t from a second encoder pass, d = hidden size, L = 4/3, m =
                   256 (the defaults before the speed levers: the "before" of docs/benchmarks.md);
  * RAP, from pixels  the default configuration running the vision encoder at every step (--pixels).

Times are `torch.utils.benchmark` medians (blocked autorange; a step longer than a turn's share of --min_run_time is
timed once per turn), the variants taking turns in ABBA order (--rounds) so that a load that changes during the run
hits the floor and RAP alike; ratios are medians of the per-turn ratios. On CPU, glibc is first told to keep freed
memory (`keep_freed_memory`, off with --system_allocator): with its defaults, the memory a bert-base step frees goes
back to the kernel and is faulted in again by the next step, and that kernel time varied by seconds per step.

Weights are random (sizes matter, not values): MiniLM-L6 (the offline default) and bert-base (the paper's) text
encoders, EfficientNet-Lite0-sized features. On a GPU the table also gives tokens/s and peak memory. `--profile` adds
the time per stage of RAP (the `record_function` labels of modeling_rap.py) from `torch.profiler`.

    python scripts/benchmarks/speed.py                          # MiniLM and bert-base sizes, CPU, 1 thread
    python scripts/benchmarks/speed.py --device cuda --json speed.json
    python scripts/benchmarks/speed.py --smoke                  # tiny configs (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without relying on the editable install
    sys.path.insert(0, str(REPO_ROOT))

from rap_hf.encoders import TINY_VISION_CONFIG  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

TARGETS = {"train": 1.3, "infer": 1.2}  # RAP (defaults, cached features) as a ratio to the floor
NUM_LABELS = {"ner": 9, "re": 23}
VARIANTS = {  # name -> (label, RAPConfig fields, paper architecture, from pixels)
    "floor": ("floor (text-only)", {"multimodal": False}, False, False),
    "rap": ("RAP (defaults)", {}, False, False),
    "rap-paper-size": ("RAP, paper size (before)", {}, True, False),
    "rap-pixels": ("RAP (defaults), from pixels", {}, False, True),
}
STAGES = ("rap.text_features", "rap.relevance", "rap.fusion", "rap.prompts", "rap.prefixed_encoder")
EFFICIENTNET = {"model_type": "timm_wrapper", "architecture": "tf_efficientnet_lite0", "num_features": 1280}
SMOKE_TEXT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "vocab_size": 1000,
}
SMOKE_VISION = TINY_VISION_CONFIG


def text_config(name: str) -> dict[str, Any]:
    from transformers import AutoConfig, BertConfig

    from rap_hf.encoders import resolve_text_model

    if name == "smoke":
        return dict(SMOKE_TEXT)
    if name == "bert-base":
        return BertConfig().to_dict()  # bert-base-uncased sizes
    return AutoConfig.from_pretrained(resolve_text_model(name)).to_dict()


def build(task: str, variant: str, text: dict[str, Any], smoke: bool):
    """A randomly initialised model of the variant (train mode), its optimizer, and a batch of its inputs."""
    import torch

    from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE

    _, fields, paper, _ = VARIANTS[variant]
    kwargs = dict(
        text_config=text,
        vision_config=SMOKE_VISION if smoke else EFFICIENTNET,
        task=task,
        num_labels=NUM_LABELS[task],
        **fields,
    )
    if smoke:
        kwargs.update(fusion_num_heads=4, fusion_hidden_size=16, relevance_dim=16, prompt_source_length=64)
    torch.manual_seed(0)
    config = RAPConfig.paper_architecture(**kwargs) if paper else RAPConfig(**kwargs)
    model = (RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE)(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, optimizer


def make_batch(model, variant: str, batch_size: int, length: int) -> dict[str, Any]:
    import torch

    config = model.config
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    batch = {
        "input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
    }
    if config.task == "ner":
        batch["word_start_mask"] = torch.ones(batch_size, length, dtype=torch.long)
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size, length), generator=generator)
    else:
        batch["entity_positions"] = torch.tensor([[1, length // 2]] * batch_size)
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    if config.multimodal:
        slots = config.num_visual_slots
        batch["image_mask"] = torch.ones(batch_size, slots, dtype=torch.long)
        if VARIANTS[variant][3]:
            size = 32 if config.vision_config.model_type == "resnet" else 224
            batch["pixel_values"] = torch.rand(batch_size, slots, 3, size, size, generator=generator)
        else:
            batch["visual_features"] = torch.rand(batch_size, slots, config.vision_feature_size, generator=generator)
    return batch


def steps(model, optimizer, batch: dict[str, Any], device: str) -> dict[str, Any]:
    """The training step and the inference step of one variant, on `device`."""
    import torch

    model.to(device)
    batch = {key: value.to(device) for key, value in batch.items()}
    inputs = {key: value for key, value in batch.items() if key != "labels"}

    def train() -> None:
        model.train()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        model(**inputs)

    return {"train": train, "infer": infer}


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory in the process (mallopt), so a step reuses what the last one freed instead of
    faulting it back in from the kernel: at bert-base sizes that page-fault (sys) time was 12-17% of the CPU time
    with glibc's defaults, varied by seconds per step and swamped the floor/RAP difference. False where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    # 32 MiB is glibc's ceiling for the mmap threshold; larger blocks (the word-embedding gradient) stay mmap'ed
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def cpu_seconds() -> tuple[float, float]:
    """User and kernel (sys) CPU seconds of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def time_once(step, device: str) -> float:
    """Seconds of one call of `step` (synchronised on a GPU)."""
    import time

    import torch

    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    synchronize()
    start = time.perf_counter()
    step()
    synchronize()
    return time.perf_counter() - start


def measure(runners: dict[str, Any], device: str, min_run_time: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Per variant: the median seconds of its step (torch.utils.benchmark), its per-round medians, the kernel's share
    of its CPU time, and peak GPU memory. Variants take turns, `rounds` times, so a load that changes during the run
    hits floor and RAP alike; a step longer than a round's budget is timed once per round (no autorange probe)."""
    import torch
    from torch.utils import benchmark

    budget = min_run_time / rounds
    single = {name: time_once(step, device) > budget for name, step in runners.items()}  # also the warm-up
    results = {name: {"round_s": [], "runs": 0, "peak_mib": None, "cpu_s": [0.0, 0.0]} for name in runners}
    for turn in range(rounds):
        order = list(runners.items())
        for name, step in order if turn % 2 == 0 else order[::-1]:  # ABBA: neither always runs after the other
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            before = cpu_seconds()
            if single[name]:
                times = [time_once(step, device)]
            else:  # the Timer would otherwise pin torch to 1 thread
                timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
                times = timer.blocked_autorange(min_run_time=budget).times
            results[name]["cpu_s"] = [
                total + now - then for total, now, then in zip(results[name]["cpu_s"], cpu_seconds(), before)
            ]
            results[name]["round_s"].append(statistics.median(times))
            results[name]["runs"] += len(times)
            if device.startswith("cuda"):
                results[name]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for result in results.values():
        result["median_s"] = statistics.median(result["round_s"])
        user, kernel = result.pop("cpu_s")
        result["kernel_share"] = kernel / (user + kernel) if user + kernel else None
    return results


def profile_stages(step) -> dict[str, float]:
    """Milliseconds per RAP stage (the record_function labels of modeling_rap.py) in one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    totals = {event.key: event.cpu_time_total / 1000 for event in profiler.key_averages() if event.key in STAGES}
    return {stage: totals.get(stage, 0.0) for stage in STAGES}


def run(args: argparse.Namespace, allocator: str) -> dict[str, Any]:
    import torch

    rows, profiles = [], []
    for text_name in args.text_models:
        text = text_config(text_name)
        for task in args.tasks:
            runners = {}
            for variant in args.variants:
                model, optimizer = build(task, variant, text, args.smoke)
                runners[variant] = steps(
                    model, optimizer, make_batch(model, variant, args.batch_size, args.length), args.device
                )
            for mode in ("train", "infer"):
                results = measure({v: r[mode] for v, r in runners.items()}, args.device, args.min_run_time, args.rounds)
                for variant, result in results.items():
                    rows.append({"text": text_name, "task": task, "variant": variant, "mode": mode, **result})
                    print(f"{text_name} {task} {mode} {variant}: {1000 * result['median_s']:.1f} ms", file=sys.stderr)
                if args.profile and "rap" in runners:
                    profiles.append(
                        {
                            "text": text_name,
                            "task": task,
                            "mode": mode,
                            "stages_ms": profile_stages(runners["rap"][mode]),
                        }
                    )
            del runners
    environment = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "length": args.length,
        "allocator": allocator,
    }
    return {"rows": rows, "profiles": profiles, "environment": environment}


# ======================================================================================================================
# Tables
# ======================================================================================================================
def ratio_to_floor(rows: list[dict[str, Any]], row: dict[str, Any]) -> float | None:
    """Median over rounds of (variant / floor) in the same round, so load drift between rounds cancels."""
    floor = next(
        (r for r in rows if r["variant"] == "floor" and all(r[k] == row[k] for k in ("text", "task", "mode"))), None
    )
    if floor is None:
        return None
    return statistics.median(mine / theirs for mine, theirs in zip(row["round_s"], floor["round_s"]))


def main_table(report: dict[str, Any]) -> str:
    rows, environment = report["rows"], report["environment"]
    gpu = environment["gpu"] is not None
    kernel = not gpu and all(row.get("kernel_share") is not None for row in rows)  # absent in older --json files
    tokens = environment["batch_size"] * environment["length"]
    table = []
    for row in rows:
        ratio = ratio_to_floor(rows, row)
        target = TARGETS[row["mode"]]
        verdict = ("PASS" if ratio <= target else "MISS") if row["variant"] == "rap" and ratio else ""
        cells = [
            row["text"],
            row["task"].upper(),
            row["mode"],
            VARIANTS[row["variant"]][0],
            f"{1000 * row['median_s']:,.1f}",
            f"{ratio:.2f}x" if ratio else "-",
            f"{verdict} (<= {target}x)" if verdict else "",
        ]
        if gpu:
            cells += [f"{tokens / row['median_s']:,.0f}", f"{row['peak_mib']:,.0f}"]
        elif kernel:
            cells.append(f"{100 * row['kernel_share']:.0f}%")
        table.append(cells)
    header = ["text encoder", "task", "mode", "variant", "ms / batch", "vs floor", "target"]
    extra = ["tokens/s", "peak MiB"] if gpu else ["kernel (sys) share of CPU time"] if kernel else []
    return markdown_table(header + extra, table)


def profile_table(report: dict[str, Any]) -> str:
    table = [
        [p["text"], p["task"].upper(), p["mode"], *(f"{p['stages_ms'][s]:,.1f}" for s in STAGES)]
        for p in report["profiles"]
    ]
    return markdown_table(["text encoder", "task", "mode", *(s.removeprefix("rap.") for s in STAGES)], table)


def render(report: dict[str, Any]) -> str:
    environment = report["environment"]
    sections = [
        f"### Time per batch (batch {environment['batch_size']}, {environment['length']} sub-tokens)",
        main_table(report),
    ]
    if report["profiles"]:
        sections += [
            "### RAP per stage (ms, one profiled step; backward counted in the train total only)",
            profile_table(report),
        ]
    where = environment["gpu"] or f"CPU ({environment['machine']}, {environment['torch_threads']} intra-op threads)"
    allocator = f"; malloc: {environment['allocator']}" if environment.get("allocator") else ""
    sections.append(
        f"Measured on {where}, torch {environment['torch']}{allocator}; medians of torch.utils.benchmark, "
        "the variants taking turns; ratios are medians over the turns of (variant / floor)."
    )
    return "\n\n".join(sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--text_models",
        nargs="+",
        default=["minilm", "bert-base"],
        help="minilm (offline MiniLM-L6 sizes), bert-base, or a model name/path (its config)",
    )
    parser.add_argument("--tasks", nargs="+", default=["ner", "re"], choices=["ner", "re"])
    parser.add_argument("--variants", nargs="+", default=["floor", "rap", "rap-paper-size"], choices=list(VARIANTS))
    parser.add_argument("--pixels", action="store_true", help="also time RAP from pixels (slow on CPU)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64, help="sub-tokens per text")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--min_run_time", type=float, default=15.0, help="seconds of timing per measurement")
    parser.add_argument("--rounds", type=int, default=15, help="turns the variants take (load drift cancels)")
    parser.add_argument("--profile", action="store_true", help="time per stage of RAP with torch.profiler")
    parser.add_argument(
        "--system_allocator",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory in the process, see "
        "keep_freed_memory; the defaults make bert-base CPU steps vary by seconds)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json")
    parser.add_argument("--smoke", action="store_true", help="tiny configs, short timing (CI)")
    args = parser.parse_args(argv)
    if args.pixels and "rap-pixels" not in args.variants:
        args.variants.append("rap-pixels")
    if args.smoke:
        args.text_models, args.batch_size, args.length, args.min_run_time, args.rounds = ["smoke"], 4, 16, 0.05, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return
    allocator = "system default"
    if args.device == "cpu" and not args.system_allocator and keep_freed_memory():
        allocator = "glibc keeping freed memory (mallopt: mmap threshold 32 MiB, trim threshold 1 GiB)"
    import torch

    torch.set_num_threads(args.threads)
    report = run(args, allocator)
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
