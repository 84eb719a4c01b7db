# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""`rap-hf demo`: a Gradio page that shows what a RAP model does with one tweet and its picture.

```
rap-hf demo --model outputs/rap                  # http://127.0.0.1:7860
rap-hf demo --model org/rap-twitter2017 --export space/   # the same page as a Hugging Face Space
```

A person types a tweet (or picks one of the bundled sample's examples), uploads a picture and sees the entities
highlighted in the text (NER) or the relation between a subject and an object chosen from the text (RE), the image
relevance beta, the R-Gate it opens (Eq. 14) and the routing paths (`rap_hf.visualization`). Everything shown comes
from `rap_hf.pipelines.pipeline`. Gradio is the optional extra `rap-hf[demo]`; it is imported only when an app is
built, so `import rap_hf` and `rap-hf --help` stay light.

`export_space` writes the app as a Space folder (`app.py`, `requirements.txt`, `README.md` with the Space card, and a
copy of `rap_hf`), `push_demo_space` uploads it next to a model on the Hub.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("rap_hf.demo")

# The Gradio releases the demo is tested with (pyproject's `demo` extra says the same).
GRADIO_REQUIREMENT = "gradio>=6.31,<7"
ENTITY_COLOURS = {
    "PER": "#f87171",
    "LOC": "#4ade80",
    "ORG": "#60a5fa",
    "MISC": "#facc15",
    "subject": "#f472b6",
    "object": "#38bdf8",
}
# Fonts the browser already has: Gradio's default theme loads Google Fonts, which an offline machine cannot reach.
_SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")
_CSS = "#rap-entities .textfield { font-size: 1.1rem; line-height: 2.1; }"
_EXPLANATION = (
    "**beta** is the model's modality relevance: how much the picture relates to this tweet (near 1: relevant, near "
    "0: unrelated; 0 without a picture). The **gate** is R-Gate(beta) of Eq. 14, how far the picture is let into the "
    "fusion. The routing picture shows the weights of the paths through the fusion units (Fig. 7 of the paper)."
)


# ----------------------------------------------------------------------------------------------------------------------
# What the page shows, without Gradio
# ----------------------------------------------------------------------------------------------------------------------
def relevance_gate(config: Any, relevance: float | None, image_used: bool) -> float | None:
    """R-Gate(beta) of Eq. 14 as the model applies it (`config.relevance_gate`), from the pipeline's beta; None for a
    text-only model, 1 without relevance reasoning (Table 5, "MRR"), 0 without a picture."""
    if not config.multimodal:
        return None
    if not config.use_relevance_reasoning or relevance is None:
        return 1.0
    if not image_used:
        return 0.0
    if config.relevance_activation == "sigmoid":
        clipped = min(max(relevance, 1e-7), 1 - 1e-7)
        score = math.log(clipped / (1 - clipped))  # beta = sigmoid(score)
    else:
        score = relevance
    kind = config.relevance_gate
    if kind == "tanh":
        return math.tanh(relevance)
    if kind == "rectified":
        return math.tanh(max(0.0, score))
    if kind == "veto":
        return 1 - math.tanh(max(0.0, -score))
    return relevance


def highlighted_segments(text: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[str, str | None]]:
    """`text` cut into `(piece, label)` pieces for `gr.HighlightedText`: labelled character spans, None between them.
    Overlapping spans (an RE subject inside its object) keep the first one."""
    segments: list[tuple[str, str | None]] = []
    position = 0
    for start, end, label in sorted(spans):
        if start < position:
            continue
        if start > position:
            segments.append((text[position:start], None))
        segments.append((text[start:end], label))
        position = end
    if position < len(text):
        segments.append((text[position:], None))
    return segments


def candidate_spans(text: str, style: str = "tweet") -> list[str]:
    """Subject/object choices offered for an RE tweet: runs of capitalised words, @mentions and #hashtags, in order
    of appearance (any other span of the text may be typed in)."""
    from .pipelines import split_words

    words = split_words(text or "", style)
    found: list[str] = []
    run: list[Any] = []

    def close() -> None:
        if run:
            found.append(text[run[0].start : run[-1].end])
            run.clear()

    for word in words:
        if word.text[:1] in "@#" and len(word.text) > 1:
            close()
            found.append(word.text)
        elif word.text[:1].isupper() or (run and word.text.lower() in ("of", "the", "de")):
            run.append(word)
        else:
            close()
    close()
    while found and not found[-1]:
        found.pop()
    return list(dict.fromkeys(span.strip() for span in found if span.strip()))


def sample_examples(task: str, limit: int = 6, corpus: str = "twitter2017") -> list[dict[str, Any]]:
    """Test tweets of the bundled sample (`rap_hf/data/sample`) that have a picture: `{"text", "image"}` (NER) or
    with `"subject"`, `"object"` as well (RE)."""
    from .data import SAMPLE_DIR
    from .data.parsing import read_mnre_file, read_relation_names, read_twitter_file

    examples: list[dict[str, Any]] = []
    try:
        if task == "ner":
            from .data.twitter import image_file_name, resolve_twitter_layout

            layout = resolve_twitter_layout(SAMPLE_DIR, corpus)
            for sentence in read_twitter_file(layout.split_file("test")):
                image = layout.images_dir / image_file_name(sentence.image_id)
                if image.is_file():
                    examples.append({"text": " ".join(sentence.tokens), "image": str(image)})
        else:
            from .data.mnre import resolve_mnre_layout

            layout = resolve_mnre_layout(SAMPLE_DIR)
            names = read_relation_names(layout.rel2id_file())
            for record in read_mnre_file(layout.split_file("test"), names):
                image = layout.images_dir("test") / record.image_id
                if image.is_file():
                    examples.append(
                        {
                            "text": " ".join(record.tokens),
                            "image": str(image),
                            "subject": " ".join(record.tokens[record.subject.start : record.subject.end]),
                            "object": " ".join(record.tokens[record.object.start : record.object.end]),
                        }
                    )
    except (OSError, ValueError) as error:  # a damaged or missing sample: the page works without examples
        logger.warning(f"no examples from the bundled sample ({error})")
    return examples[:limit]


class DemoModel:
    """A loaded pipeline and what the page shows for one input (`analyse`), usable without Gradio."""

    def __init__(
        self, model: Any, device: str | None = "cpu", word_splitting: str | None = None, name: str | None = None
    ):
        """`model`: a folder, a Hub id or a loaded RAP pipeline; `name`: how the page names it."""
        if hasattr(model, "predict_parsed"):
            self.pipe = model
        else:
            from .pipelines import pipeline

            self.pipe = pipeline(model, device=device, word_splitting=word_splitting)
        self.config = self.pipe.model.config
        self.task = self.pipe.rap_task
        self.name = name or (model if isinstance(model, str) else "") or self.config.name_or_path or "RAP model"
        self._lock = threading.Lock()  # one prediction and one matplotlib figure at a time
        self._figures = Path(tempfile.mkdtemp(prefix="rap-demo-"))
        weakref.finalize(self, shutil.rmtree, self._figures, ignore_errors=True)

    def predict(self, text: str, image: Any = None, subject: str | None = None, obj: str | None = None) -> dict:
        """The pipeline's result for one tweet (RE: for the subject/object pair)."""
        kwargs: dict[str, Any] = {"image": image or None}
        if self.task == "re":
            kwargs.update(subject=subject, object=obj)
        with self._lock:
            return self.pipe(text, **kwargs)

    def routing_figure(self, result: dict, text: str) -> str | None:
        """PNG of the routing paths of `result` (None for a text-only model)."""
        if not result.get("routing_weights"):
            return None
        from . import visualization

        path = self._figures / f"routing-{uuid.uuid4().hex[:12]}.png"
        relevance = result["relevance"] if result["relevance"] is not None else float("nan")
        with self._lock:
            visualization.plot_routing_paths(
                result["routing_weights"],
                unit_names=[name.upper() for name in self.config.fusion_units],
                num_layers=self.config.routing_layers,
                relevance=relevance,
                path=path,
            )
        return str(path)

    def analyse(
        self, text: str, image: Any = None, subject: str | None = None, obj: str | None = None
    ) -> dict[str, Any]:
        """Everything the page shows: `highlighted` pieces, `relation` (RE: label -> probability), `beta`, `gate`,
        `routing` (PNG path) and the pipeline's `result`. Raises `ValueError` for an input the pipeline refuses."""
        text = (text or "").strip()
        if not text:
            raise ValueError("type a tweet first")
        if self.task == "re" and not (subject and obj):
            raise ValueError("choose a subject and an object from the text")
        result = self.predict(text, image, subject, obj)
        if self.task == "ner":
            spans = [(e["start_char"], e["end_char"], e["type"]) for e in result["entities"]]
            relation = None
        else:
            spans = [(result[role]["start_char"], result[role]["end_char"], role) for role in ("subject", "object")]
            relation = dict(sorted(result["distribution"].items(), key=lambda item: -item[1])[:5])
        beta = result["relevance"]
        return {
            "highlighted": highlighted_segments(text, spans),
            "relation": relation,
            "beta": None if beta is None else round(beta, 4),
            "gate": _rounded(relevance_gate(self.config, beta, result["image_used"])),
            "image_used": result["image_used"],
            "routing": self.routing_figure(result, text),
            "result": result,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ----------------------------------------------------------------------------------------------------------------------
# The Gradio app
# ----------------------------------------------------------------------------------------------------------------------
def _import_gradio():
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError('the demo needs Gradio: pip install "rap-hf[demo]"') from error
    return gr


def theme():
    """Gradio's default theme with the browser's own fonts (no request to Google Fonts)."""
    gr = _import_gradio()
    return gr.themes.Default(font=list(_SYSTEM_FONTS), font_mono=list(_MONO_FONTS))


def build_demo(
    model: Any,
    *,
    device: str | None = "cpu",
    word_splitting: str | None = None,
    examples: Sequence[dict[str, Any]] | None = None,
):
    """The Gradio `Blocks` of the demo for `model` (a folder, a Hub id, or a loaded RAP pipeline / `DemoModel`).
    `examples`: `{"text", "image"[, "subject", "object"]}` dicts; default: the bundled sample's test tweets."""
    gr = _import_gradio()
    demo_model = model if isinstance(model, DemoModel) else DemoModel(model, device, word_splitting)
    task, config = demo_model.task, demo_model.config
    if examples is None:
        examples = sample_examples(task)
    kind = "named entities" if task == "ner" else "the relation between two entities"
    with gr.Blocks(title="RAP demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# RAP: relevance-aware multimodal {'NER' if task == 'ner' else 'relation extraction'}\n"
            f"Model `{demo_model.name}` finds {kind} in a tweet, reading its picture as far as the picture is "
            "relevant to the text."
        )
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Tweet", lines=3, elem_id="rap-text", placeholder="Kevin Durant visits ...")
                image = gr.Image(label="Picture (optional)", type="filepath", elem_id="rap-image", height=240)
                inputs = [text, image]
                if task == "re":
                    subject = gr.Dropdown(label="Subject", allow_custom_value=True, elem_id="rap-subject")
                    obj = gr.Dropdown(label="Object", allow_custom_value=True, elem_id="rap-object")
                    inputs += [subject, obj]
                submit = gr.Button("Analyse", variant="primary", elem_id="rap-submit")
                if examples:
                    keys = ["text", "image"] + (["subject", "object"] if task == "re" else [])
                    gr.Examples(
                        examples=[[example.get(key) for key in keys] for example in examples],
                        inputs=inputs,
                        label="Examples from the bundled sample",
                    )
            with gr.Column():
                highlighted = gr.HighlightedText(
                    label="Entities" if task == "ner" else "Subject and object",
                    color_map=ENTITY_COLOURS,
                    show_legend=False,
                    combine_adjacent=False,
                    elem_id="rap-entities",
                )
                relation = gr.Label(label="Relation", num_top_classes=5, visible=task == "re", elem_id="rap-relation")
                with gr.Row():
                    beta = gr.Number(label="beta (image relevance)", elem_id="rap-beta", interactive=False)
                    gate = gr.Number(label="R-Gate(beta)", elem_id="rap-gate", interactive=False)
                routing = gr.Image(label="Routing paths", type="filepath", elem_id="rap-routing", interactive=False)
                gr.Markdown(_EXPLANATION)
                with gr.Accordion("Pipeline output (JSON)", open=False):
                    raw = gr.JSON(elem_id="rap-json")
        if not config.multimodal:
            gr.Markdown("This is a text-only baseline (`multimodal=False`): it has no beta, gate or routing.")

        def run(*values):
            try:
                shown = demo_model.analyse(*values)
            except ValueError as error:
                raise gr.Error(str(error)) from None
            return (
                shown["highlighted"],
                shown["relation"],
                shown["beta"],
                shown["gate"],
                shown["routing"],
                shown["result"],
            )

        outputs = [highlighted, relation, beta, gate, routing, raw]
        submit.click(run, inputs=inputs, outputs=outputs, api_name="analyse")
        text.submit(run, inputs=inputs, outputs=outputs, api_name=False)
        if task == "re":

            def choices(value: str):
                spans = candidate_spans(value, demo_model.pipe.word_splitting)
                return gr.Dropdown(choices=spans), gr.Dropdown(choices=spans)

            text.change(choices, inputs=text, outputs=[subject, obj], api_name=False, show_progress="hidden")
    return demo


def launch(
    model: Any,
    *,
    port: int | None = None,
    share: bool = False,
    host: str | None = None,
    device: str | None = "cpu",
    word_splitting: str | None = None,
    **launch_kwargs: Any,
):
    """Builds and serves the demo. `host=None`: Gradio's `GRADIO_SERVER_NAME` (a Space sets 0.0.0.0), else
    127.0.0.1. Blocks until stopped unless `prevent_thread_lock=True`; returns the `Blocks`."""
    demo = build_demo(model, device=device, word_splitting=word_splitting)
    demo.launch(
        server_name=host, server_port=port, share=share, theme=theme(), css=_CSS, footer_links=["api"], **launch_kwargs
    )
    return demo


# ----------------------------------------------------------------------------------------------------------------------
# The app as a Hugging Face Space
# ----------------------------------------------------------------------------------------------------------------------
_APP = '''"""Gradio Space of the RAP model {model_id} (written by `rap-hf demo --export`)."""

from rap_hf.demo import launch

MODEL = {model_id!r}

if __name__ == "__main__":
    launch(MODEL)
'''

_README = """---
title: {title}
emoji: 🖼️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {sdk_version}
python_version: "3.11"
app_file: app.py
pinned: false
license: apache-2.0
models:
  - {model_id}
short_description: {short_description}
---

# {title}

Try the RAP model [{model_id}](https://huggingface.co/{model_id}):
type a tweet, upload its picture (or pick an example) and see {what},
the image relevance beta, the R-Gate it opens and the routing paths through the fusion units.

RAP (Relevance-Aware Prompt-tuning, Chen et al., *Neurocomputing* 2025) reasons about how relevant a tweet's picture
is before it fuses the two. This Space runs `rap_hf.demo` ({source}); locally:

```bash
pip install "rap-hf[demo]"
rap-hf demo --model {model_id}
```
"""


def _space_requirements(package: str | None) -> list[str]:
    """requirements.txt of a Space: rap_hf's own dependencies (the package is copied into the Space) or `package`,
    and Gradio."""
    if package is not None:
        return [package, GRADIO_REQUIREMENT]
    from importlib import metadata

    try:
        requires = metadata.requires("rap-hf") or []
    except metadata.PackageNotFoundError:
        requires = []
    base = [requirement for requirement in requires if "extra ==" not in requirement]
    if not base:  # run from a source tree without installed metadata: the dependencies of its pyproject.toml
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if not pyproject.is_file():
            raise RuntimeError("rap-hf is neither installed nor in a source tree: pass package= (a pip requirement)")
        base = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    return [*base, GRADIO_REQUIREMENT]


def _gradio_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return "6.31.0"


def export_space(
    model_id: str,
    folder: str | Path,
    *,
    title: str | None = None,
    task: str | None = None,
    package: str | None = None,
) -> list[Path]:
    """Writes the demo of `model_id` (a Hub model id) as a Gradio Space into `folder`: `app.py`, `requirements.txt`,
    `README.md` (Space card) and, unless `package` names a pip requirement for rap_hf (e.g. a git URL), a copy of the
    `rap_hf` package. Returns the files written at the top of `folder`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        message = f"{model_id!r} is not a Hub model id (org/name): a Space loads its model from the Hub"
        raise ValueError(message) from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = title or f"RAP demo: {model_id.split('/')[-1]}"
    what = {"ner": "the entities it finds", "re": "the relation it reads"}.get(task or "", "what it extracts")
    source = "pip requirement in requirements.txt" if package else "a copy of the package in `rap_hf/`"
    files = {
        "app.py": _APP.format(model_id=model_id),
        "requirements.txt": "\n".join(_space_requirements(package)) + "\n",
        "README.md": _README.format(
            title=title.replace(":", " -"),
            model_id=model_id,
            sdk_version=_gradio_version(),
            short_description="Multimodal NER/RE on tweets with relevance-aware prompts",
            what=what,
            source=source,
        ),
    }
    written = []
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
        written.append(folder / name)
    if package is None:
        target = folder / "rap_hf"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(__file__).resolve().parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        written.append(target)
    return written


def push_demo_space(
    model_id: str,
    space_id: str | None = None,
    *,
    token: str | None = None,
    private: bool | None = None,
    task: str | None = None,
    package: str | None = None,
) -> str:
    """Exports the demo of `model_id` and uploads it as the Gradio Space `space_id` (default `<model_id>-demo`),
    creating the Space when needed. Returns the Space's URL."""
    from huggingface_hub import HfApi

    space_id = space_id or f"{model_id}-demo"
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="rap-space-") as folder:
        export_space(model_id, folder, task=task, package=package)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=folder, commit_message=f"RAP demo of {model_id}"
        )
    url = f"https://huggingface.co/spaces/{space_id}"
    logger.info(f"demo Space of {model_id}: {url}")
    return url


__all__ = [
    "DemoModel",
    "build_demo",
    "candidate_spans",
    "export_space",
    "launch",
    "push_demo_space",
    "relevance_gate",
    "sample_examples",
]
