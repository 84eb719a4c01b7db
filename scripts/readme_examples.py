#!/usr/bin/env python
"""Print what the main job's model says about a few bundled test tweets: the example outputs of README.md.

    accelerate launch scripts/run_rap.py          # the main job: outputs/rap
    python scripts/readme_examples.py             # the README's "Predict" outputs, regenerated from that model

Each example is a test tweet of the bundled sample with its picture (the picture alone, as a user has it: the
model's grounding gives it its objects), then the same tweet with another topic's picture, so that beta can be read
for both.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def describe(prediction: dict) -> dict:
    """The parts of a prediction the README shows: entities (text, type, score to 2 digits) and beta."""
    entities = [{"text": e["text"], "type": e["type"], "score": round(e["score"], 2)} for e in prediction["entities"]]
    return {"entities": entities, "relevance": round(prediction["relevance"], 3)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/rap", help="the main job's model folder (default outputs/rap)")
    parser.add_argument("--count", type=int, default=3, help="how many test tweets")
    args = parser.parse_args(argv)

    from rap_hf.demo import sample_examples
    from rap_hf.pipelines import pipeline

    ner = pipeline(args.model, device="cpu")
    examples = sample_examples("ner", limit=2 * args.count)[: args.count]
    others = sample_examples("ner", limit=4 * args.count)[::-1]  # pictures of other tweets (from the split's end)
    for example, other in zip(examples, others):
        picture = Path(example["image"]).name
        print(f'ner("{example["text"]}", image="{picture}")')
        print(f"# {json.dumps(describe(ner(example['text'], image=example['image'])), ensure_ascii=False)}")
        print(f'ner("{example["text"]}", image="{Path(other["image"]).name}")  # another tweet\'s picture')
        print(f"# {json.dumps(describe(ner(example['text'], image=other['image'])), ensure_ascii=False)}")


if __name__ == "__main__":
    main()
