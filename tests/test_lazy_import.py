"""`import rap_hf` and `rap-hf --help` load no torch, datasets or model code; every public name still resolves, and the
in-process auto classes are registered once the RAP classes are loaded. Each check runs in a fresh interpreter (one
that had imported anything before would hide what an import pulls in). No timing assertions."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}
HEAVY = (
    "torch",
    "gradio",
    "torchvision",
    "datasets",
    "timm",
    "transformers",
    "rap_hf.modeling_rap",
    "rap_hf.pipelines",
    "rap_hf.processing_rap",
    "rap_hf.configuration_rap",
    "rap_hf.data",
)

# Prints {"name": value} facts of one interpreter as JSON on its last line. `registration()` reads transformers' auto
# mappings before it imports any rap_hf module itself (an import of the RAP classes would register them).
PRELUDE = f"""
import json, sys
HEAVY = {HEAVY!r}
facts = {{}}

def loaded():
    return sorted(name for name in HEAVY if name in sys.modules)

def registration():
    from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.pipelines import PIPELINE_REGISTRY

    def lookup(mapping, key):
        try:
            return mapping[key]
        except KeyError:
            return None

    try:
        config = type(AutoConfig.for_model("rap"))
    except ValueError:
        return {{"AutoConfig": False}}
    found = {{"AutoModel": lookup(AutoModel._model_mapping, config),
              "AutoModelForTokenClassification": lookup(AutoModelForTokenClassification._model_mapping, config),
              "AutoModelForSequenceClassification": lookup(AutoModelForSequenceClassification._model_mapping, config),
              "AutoProcessor": lookup(PROCESSOR_MAPPING, config)}}
    task = "rap-extraction" in PIPELINE_REGISTRY.get_supported_tasks()
    import rap_hf.configuration_rap as configuration, rap_hf.modeling_rap as modeling
    import rap_hf.processing_rap as processing
    expected = {{"AutoModel": modeling.RAPForMultimodalExtraction,
                 "AutoModelForTokenClassification": modeling.RAPForMultimodalNER,
                 "AutoModelForSequenceClassification": modeling.RAPForMultimodalRE,
                 "AutoProcessor": processing.RAPProcessor}}
    return {{"AutoConfig": config is configuration.RAPConfig, "pipeline task": task,
             **{{name: found[name] is cls for name, cls in expected.items()}}}}
"""
PUBLIC_NAMES = """
import rap_hf
facts["after import"] = loaded()
facts["version"] = rap_hf.__dict__.get("__version__")
facts["all"] = list(rap_hf.__all__)
facts["dir"] = dir(rap_hf)
facts["unknown attribute"] = hasattr(rap_hf, "no_such_name")
config = rap_hf.RAPConfig
facts["registration after RAPConfig"] = registration()
facts["defined in"] = {}
for name in [*rap_hf.__all__, "register_auto_classes"]:
    value = getattr(rap_hf, name)
    facts["defined in"][name] = [value.__module__, getattr(sys.modules[value.__module__], name) is value]
namespace = {}
exec("from rap_hf import *", namespace)
facts["star import"] = sorted(name for name in rap_hf.__all__ if namespace.get(name) is getattr(rap_hf, name))
facts["submodule attribute"] = rap_hf.metrics is sys.modules["rap_hf.metrics"]
"""
# Submodule imports that never touch an attribute of the package (modeling_rap imports configuration_rap while it is
# still executing), and transformers' auto classes loaded before the package.
ROUTES = {  # (the pipelines route imports rap_hf.modeling_rap first: one interpreter covers both)
    "from rap_hf.pipelines import pipeline": "from rap_hf.pipelines import pipeline",
    "AutoModel, then import rap_hf": "from transformers import AutoModel\nimport rap_hf",
}
CLI_HELP = """
import contextlib, io
from rap_hf import cli
for argv in (["--help"], ["predict", "--help"], ["explain", "--help"], ["demo", "--help"]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            cli.main(argv)
        code = None
    except SystemExit as exit_:
        code = exit_.code
    facts[" ".join(argv)] = [code, out.getvalue().startswith("usage: rap-hf")]
facts["loaded"] = loaded()
"""


def python(code: str, *arguments: str) -> subprocess.Popen:
    """A fresh interpreter running PRELUDE + `code`, started now (the heavy ones run side by side)."""
    argv = [sys.executable, *arguments, "-c", PRELUDE + code + "\nprint(json.dumps(facts))"]
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def facts_of(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def facts() -> dict:
    """{check: facts} of every interpreter of this module, started together. The CLI's help runs first in the
    interpreter that then takes the pipelines route: help loads nothing heavy (checked), so the route starts as it
    would in a new interpreter."""
    pipelines_route, automodel_route = ROUTES
    started = {
        "public names": python(PUBLIC_NAMES),
        "cli": python(CLI_HELP + ROUTES[pipelines_route] + "\nfacts['registration'] = registration()"),
        automodel_route: python(ROUTES[automodel_route] + "\nfacts.update(registration())"),
    }
    found = {check: facts_of(process) for check, process in started.items()}
    found[pipelines_route] = found["cli"].pop("registration")
    return found


def test_import_loads_no_heavy_module(facts):
    assert facts["public names"]["after import"] == []
    version = facts["public names"]["version"]  # a plain attribute of the module, not resolved lazily
    assert isinstance(version, str) and version[:1].isdigit()


def test_dir_and_all_list_the_public_names(facts):
    public = facts["public names"]
    documented = {
        "RAPConfig",
        "RAPForMultimodalNER",
        "RAPForMultimodalRE",
        "RAPProcessor",
        "RAPTrainer",
        "RAPTrainingArguments",
        "build_model_and_processor",
        "load_dataset",
        "pipeline",
    }  # README's API
    assert len(public["all"]) == len(set(public["all"])) and documented <= set(public["all"])
    assert set(public["all"]) | {"register_auto_classes", "__version__"} <= set(public["dir"])
    assert public["unknown attribute"] is False
    assert public["submodule attribute"] is True


def test_every_public_name_is_the_object_of_its_defining_module(facts):
    public = facts["public names"]
    assert all(identical for _, identical in public["defined in"].values()), public["defined in"]
    assert public["star import"] == sorted(public["all"])


def test_type_checkers_see_every_public_name(facts):
    """The `if TYPE_CHECKING:` imports of rap_hf/__init__.py name every public name, from the module defining it."""
    tree = ast.parse((REPO_ROOT / "rap_hf" / "__init__.py").read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    assert all(isinstance(node, ast.ImportFrom) and node.level == 1 for node in block.body)
    imported = {alias.name: f"rap_hf.{node.module}" for node in block.body for alias in node.names}
    defined = {name: module for name, (module, _) in facts["public names"]["defined in"].items()}
    assert imported == defined


def test_first_class_access_registers_the_auto_classes(facts):
    registered = facts["public names"]["registration after RAPConfig"]
    assert all(registered.values()), registered


@pytest.mark.parametrize("route", ROUTES)
def test_auto_classes_are_registered_by_any_import_route(facts, route):
    registered = {key: value for key, value in facts[route].items() if key != "loaded"}
    assert registered and all(registered.values()), registered


@pytest.mark.parametrize("argv", ["--help", "predict --help", "explain --help", "demo --help"])
def test_cli_help_exits_0(facts, argv):
    assert facts["cli"][argv] == [0, True]


def test_cli_help_imports_no_torch(facts):
    assert facts["cli"]["loaded"] == []


def test_console_module_help_imports_no_torch():
    """`python -m rap_hf.cli --help` as a user starts it; `-X importtime` lists every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rap_hf.cli", "--help"],
        cwd=REPO_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: rap-hf"), done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {name for name in imported if name.split(".")[0] in ("torch", "datasets", "transformers")}
    assert "rap_hf.modeling_rap" not in imported


def test_import_time_benchmark_smoke(tmp_path):
    """scripts/benchmarks/import_time.py (its `main` here; it times each command in a fresh interpreter)."""
    from benchmark_helpers import run_main_in_process

    report_path = tmp_path / "import_time.json"
    status, stdout, stderr = run_main_in_process(
        "import_time.py", "--runs", "1", "--warmup", "0", "--json", str(report_path)
    )
    assert status == 0, stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert list(report["commands"]) == ["import transformers", "import rap_hf", "rap-hf --help"]
    assert all(len(entry["times"]) == 1 for entry in report["commands"].values())
    for label, entry in report["ratios"].items():
        verdict = "PASS" if entry["passed"] else "MISS"
        assert f"| `{label}` / `import transformers` | {entry['ratio']:.2f}x | <= {entry['target']}x | {verdict} |" in (
            stdout
        )
