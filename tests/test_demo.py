"""`rap-hf demo`: the Gradio page driven in a real browser (Debian's Chromium through selenium), its Space export and
the Space upload with only the Hub's network calls replaced.

The browser test serves the page of the small trained NER model of pipeline_helpers on a free port of 127.0.0.1,
types a tweet, uploads its picture, presses the button and reads the highlighted entities, beta and the gate back
from the page; they must be what `rap_hf.pipelines.pipeline` returns for the same input. It saves the page as a PNG:
in the test's folder, or where `RAP_HF_SCREENSHOT` says (docs/images/demo.png, the screenshot of README.md and
docs/inference.md, is made that way: see docs/inference.md "Demo").
"""

from __future__ import annotations

import ast
import io
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MODEL_ID = "someone/rap-twitter2017"


def chromium() -> tuple[str, str]:
    """The system Chromium and its chromedriver, or a skip saying what is missing."""
    browser = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        pytest.skip(f"{missing} not found: apt-get install chromium chromium-driver (.ci/run does it when root)")
    return browser, driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by selenium (its own chromedriver: selenium-manager never goes online)."""
    binary, driver_path = chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",  # offline: no update, safe-browsing or translation requests
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1000")
    options.add_argument("--force-device-scale-factor=1")
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    except Exception as error:  # noqa: BLE001 -- e.g. a chromedriver of another Chromium version
        pytest.skip(f"Chromium ({binary}) does not start under {driver_path}: {str(error).splitlines()[0]}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def ner_demo(folders, one_thread, monkeypatch_module, tmp_path_factory):
    """`(url, DemoModel, folder)`: the demo of the small trained NER model, served in this process on a free port."""
    monkeypatch_module.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch_module.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))  # uploads, example files
    pytest.importorskip("gradio")
    from rap_hf.demo import DemoModel, launch

    # RAP_HF_DEMO_MODEL: another NER model folder (docs/images/demo.png shows the main job's model, docs/inference.md)
    folder = os.environ.get("RAP_HF_DEMO_MODEL") or str(folders["ner"])
    model = DemoModel(folder, name=os.path.basename(folder) if folder != str(folders["ner"]) else "tiny test model")
    port = free_port()
    demo = launch(model, port=port, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", model, folder
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def pick_example(model) -> dict:
    """The first sample tweet with a picture in which the model finds an entity (the first one otherwise)."""
    from rap_hf.demo import sample_examples

    examples = sample_examples("ner", limit=16)
    assert examples, "the bundled sample has no test tweet with a picture"
    return next((e for e in examples if model.pipe(e["text"], image=e["image"])["entities"]), examples[0])


def test_page_shows_what_the_pipeline_returns(browser, ner_demo, folders, tmp_path):  # browser first: skips early
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from rap_hf.pipelines import pipeline

    url, model, folder = ner_demo
    example = pick_example(model)
    expected = pipeline(folder, device="cpu")(example["text"], image=example["image"])

    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#rap-text textarea"))
    browser.find_element(By.CSS_SELECTOR, "#rap-text textarea").send_keys(example["text"])
    browser.find_element(By.CSS_SELECTOR, "#rap-image input[type=file]").send_keys(example["image"])
    wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#rap-image img"))
    browser.find_element(By.ID, "rap-submit").click()
    wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#rap-routing img"))
    wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#rap-beta input").get_property("value") != "")

    shown = [
        (token.find_element(By.CSS_SELECTOR, ".text").text, token.find_element(By.CSS_SELECTOR, ".label").text)
        for token in browser.find_elements(By.CSS_SELECTOR, "#rap-entities .token.highlighted")
    ]
    text_on_page = browser.find_element(By.CSS_SELECTOR, "#rap-entities .textfield").text
    beta = float(browser.find_element(By.CSS_SELECTOR, "#rap-beta input").get_property("value"))
    gate = float(browser.find_element(By.CSS_SELECTOR, "#rap-gate input").get_property("value"))

    assert shown == [(entity["text"], entity["type"]) for entity in expected["entities"]]
    letters = "".join(text_on_page.split())  # the page's text with the entity labels between its words
    position = 0
    for word in example["text"].split():  # every word of the tweet, in order
        position = letters.index(word, position) + len(word)
    assert expected["image_used"] is True
    assert beta == pytest.approx(expected["relevance"], abs=1e-4)
    score = math.log(expected["relevance"] / (1 - expected["relevance"]))  # the tiny models use the "veto" gate
    assert gate == pytest.approx(1 - math.tanh(max(0.0, -score)), abs=1e-4)
    save_screenshot(browser, Path(os.environ.get("RAP_HF_SCREENSHOT") or tmp_path / "demo.png"))


def save_screenshot(browser, path: Path) -> None:
    """The page as the browser window shows it, as a small palette PNG."""
    from PIL import Image

    picture = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=256).save(path, optimize=True)
    assert 0 < path.stat().st_size < 400_000


def test_re_analysis_marks_subject_and_object(folders, one_thread):
    """RE without a browser: the subject and object are highlighted, the relations are the pipeline's top 5."""
    from rap_hf.demo import DemoModel, candidate_spans

    model = DemoModel(str(folders["re"]))
    text = "RT @WLWT : Bill Cosby 's star on Hollywood Walk of Fame vandalized"
    assert {"Bill Cosby", "Hollywood Walk of Fame", "@WLWT"} <= set(candidate_spans(text))
    shown = model.analyse(text, None, "Bill Cosby", "Hollywood Walk of Fame")
    labelled = [(piece, label) for piece, label in shown["highlighted"] if label]
    assert labelled == [("Bill Cosby", "subject"), ("Hollywood Walk of Fame", "object")]
    assert "".join(piece for piece, _ in shown["highlighted"]) == text
    distribution = shown["result"]["distribution"]
    assert list(shown["relation"]) == sorted(distribution, key=distribution.get, reverse=True)[:5]
    assert shown["beta"] == 0 and shown["gate"] == 0 and shown["image_used"] is False
    with pytest.raises(ValueError, match="subject and an object"):
        model.analyse(text, None, "Bill Cosby", None)


def test_export_writes_a_space(tmp_path, capsys):
    """`rap-hf demo --export DIR`: app.py that compiles and launches the model, requirements, Space card."""
    from rap_hf import cli

    space = tmp_path / "space"
    assert cli.main(["demo", "--model", MODEL_ID, "--export", str(space)]) == 0
    assert f"wrote the Space of {MODEL_ID} into {space}" in capsys.readouterr().err
    app = (space / "app.py").read_text(encoding="utf-8")
    tree = ast.parse(app)
    compile(tree, "app.py", "exec")
    assert "from rap_hf.demo import launch" in app and repr(MODEL_ID) in app
    front, body = _front_matter(space / "README.md")
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == [MODEL_ID]
    assert front["sdk_version"].split(".")[0] == "6" and front["title"] and len(front["short_description"]) <= 60
    assert f"https://huggingface.co/{MODEL_ID}" in body
    requirements = (space / "requirements.txt").read_text().split()
    assert any(line.startswith("gradio>=") for line in requirements)
    assert any(line.startswith("torch") for line in requirements) and not any("rap-hf" in r for r in requirements)
    assert (space / "rap_hf" / "demo.py").is_file() and (space / "rap_hf" / "data" / "sample").is_dir()
    assert not list((space / "rap_hf").rglob("__pycache__"))
    assert cli.main(["demo", "--model", str(tmp_path / "a" / "model"), "--export", str(tmp_path / "s")]) == 2
    assert "is not a Hub model id (org/name)" in capsys.readouterr().err


def _front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


class FakeHfApi:
    """huggingface_hub.HfApi with the two calls push_demo_space makes recorded instead of sent."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).iterdir())
        app = (Path(folder_path) / "app.py").read_text(encoding="utf-8")
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files, "app": app, "token": self.token}))


def test_push_demo_space_creates_and_uploads_a_gradio_space(monkeypatch):
    import huggingface_hub

    from rap_hf.demo import push_demo_space

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    url = push_demo_space(MODEL_ID, token="hf_test", private=True, task="ner")
    assert url == f"https://huggingface.co/spaces/{MODEL_ID}-demo"
    (create, space_id, options), (upload, upload_id, uploaded) = FakeHfApi.calls
    assert (create, space_id, upload, upload_id) == ("create_repo", f"{MODEL_ID}-demo", "upload_folder", space_id)
    assert options == {"repo_type": "space", "space_sdk": "gradio", "private": True, "exist_ok": True}
    assert uploaded["repo_type"] == "space" and uploaded["token"] == "hf_test"
    assert {"app.py", "requirements.txt", "README.md", "rap_hf"} <= set(uploaded["files"])
    assert repr(MODEL_ID) in uploaded["app"]


def test_run_option_push_space(monkeypatch, tmp_path):
    """`scripts/run_rap.py --push_to_hub --push_space`: the pushed model's Space, named by --space_id."""
    import huggingface_hub

    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, push_space, run

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    args = RunArguments(
        output_dir="unused", push_to_hub=True, hub_model_id=MODEL_ID, push_space=True, space_id="someone/space"
    )
    assert push_space(args, "ner") == "https://huggingface.co/spaces/someone/space"
    calls = [call[:2] for call in FakeHfApi.calls]
    assert calls == [("create_repo", "someone/space"), ("upload_folder", "someone/space")]
    alone = RunArguments(output_dir=str(tmp_path / "run"), push_space=True)
    with pytest.raises(ValueError, match="add --push_to_hub"):  # refused before anything is trained
        run(ModelArguments(), DataArguments(), alone)
