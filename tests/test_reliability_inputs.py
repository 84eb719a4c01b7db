"""Reliability round 3, items 5-12: 16-bit pictures, FIFOs, --output over its input, damaged model folders, invalid
text and spans, duplicate entities, a full disk, unclosed files, model paths offline, --device and --push_to_hub, and
scripts/reproduce.py against a missing corpus. No mocks: only the network edge is simulated (HF_HUB_OFFLINE, a closed
port, or a local HTTP server standing in for the Hub)."""

import gc
import http.server
import json
import os
import resource
import shutil
import signal
import stat
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rap_hf.cli import main
from rap_hf.pipelines import pipeline, read_picture
from rap_hf.processing_rap import RAPProcessor, default_image_processor, load_image

from benchmark_helpers import run_main_in_process
from conftest import run_forked

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py

NER_TEXT = "Kevin Durant visits Oracle Arena"
RE_TEXT = "Bill Cosby 's star on Hollywood Walk of Fame vandalized"


@pytest.fixture(scope="module")
def pipes(folders):
    """The NER and RE pipelines of the saved tiny models (conftest's `folders`)."""
    return {task: pipeline(folders[task], device="cpu", batch_size=4) for task in ("ner", "re")}


@pytest.fixture()
def ner(pipes):
    return pipes["ner"]


@pytest.fixture()
def re_pipe(pipes):
    return pipes["re"]


def error_lines(stderr: str) -> list[str]:
    """The `rap-hf: error:` lines of a run; a traceback would show as other lines."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("rap-hf: error:")]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# item 5: 16-bit greyscale pictures are scaled, not saturated to white
# ----------------------------------------------------------------------------------------------------------------------
def grey16(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A real 16-bit greyscale PNG (mode I;16): a ramp from black through mid-grey 32768 to white 65535."""
    values = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # what Pillow makes of a 16-bit greyscale PNG
    return path, values


def test_sixteen_bit_greyscale_is_scaled_on_every_path(tmp_path):
    path, values = grey16(tmp_path)
    expected = [0, 1, 128, 255]  # round(v / 257): mid-grey stays mid-grey (PIL's own conversion gives 255)
    with Image.open(path) as opened:
        opened.load()
        sources = {
            "path": path,
            "str": str(path),
            "datasets bytes": {"bytes": path.read_bytes(), "path": None},
            "datasets path": {"path": str(path), "bytes": None},
            "PIL I;16": opened,
            "PIL I (older Pillow)": Image.fromarray(values.astype(np.int32)),
            "uint16 array": values,
            "PIL I;16B": Image.frombytes("I;16B", (4, 4), values.astype(">u2").tobytes()),
        }
        for name, source in sources.items():
            image = load_image(source)
            assert image.mode == "RGB", name
            assert [image.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in expected], name
    # the processor (training collator, pipeline) sees the same pixels as for the 8-bit picture of the same greys
    eight_bit = Image.fromarray(np.array([expected] * 4, dtype=np.uint8))
    processor = RAPProcessor(default_image_processor(32), _tokenizer())
    torch.testing.assert_close(
        processor.process_images([path])["pixel_values"], processor.process_images([eight_bit])["pixel_values"]
    )


def _tokenizer():
    from pipeline_helpers import make_processor

    return make_processor().tokenizer


def test_sixteen_bit_pictures_reach_the_feature_cache_scaled(tmp_path):
    """rap_hf/data/features.py converts through processing_rap.load_image: the cached feature of a 16-bit picture is
    that of its 8-bit equivalent, not that of a white picture."""
    from transformers import ResNetConfig, ResNetModel

    from rap_hf.data import VisualFeatureCache

    class TinyVision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.vision_encoder = ResNetModel(
                ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic")
            )

        def get_image_features(self, pixel_values):
            return self.vision_encoder(pixel_values=pixel_values).pooler_output.flatten(1)

    grey = np.full((32, 32), 32768, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(tmp_path / "grey8.png")
    Image.fromarray(np.full((32, 32), 255, dtype=np.uint8)).save(tmp_path / "white8.png")
    cache = VisualFeatureCache(
        tmp_path / "cache", TinyVision(), default_image_processor(32), num_crops=0, show_progress=False, device="cpu"
    )
    features = cache.lookup([tmp_path / "grey16.png", tmp_path / "grey8.png", tmp_path / "white8.png"])
    sixteen, eight, white = features["visual_features"][:, 0]
    torch.testing.assert_close(sixteen, eight)
    assert not torch.allclose(sixteen, white)


# ----------------------------------------------------------------------------------------------------------------------
# item 6: a FIFO (or any non-regular file) given as a picture is refused at once
# ----------------------------------------------------------------------------------------------------------------------
def finishes(function, fifo: Path, seconds: float = 60):
    """`function()` run in a thread that must end within `seconds`; a reader stuck on the FIFO is released (a writer
    opens and closes it) so that a failing test does not hang."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 -- re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
        pytest.fail(f"still waiting on the FIFO {fifo} after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_as_picture_is_refused_in_one_line(ner, folders, tmp_path, caplog, capsys):
    fifo = tmp_path / "tweet.jpg"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a FIFO"):
        finishes(lambda: load_image(fifo), fifo)
    text_only = ner(NER_TEXT)
    caplog.clear()
    result = finishes(lambda: ner(NER_TEXT, image=str(fifo)), fifo)
    assert result["image_used"] is False and result["entities"] == text_only["entities"]
    warned = [r.getMessage() for r in caplog.records if "FIFO" in r.getMessage()]
    assert len(warned) == 1 and str(fifo) in warned[0] and "predicting without it" in warned[0]
    assert read_picture("/dev/zero") is None  # a device is refused the same way (it would be read without end)
    status = finishes(
        lambda: main(["predict", "--model", str(folders["ner"]), "--text", NER_TEXT, "--image", str(fifo)]), fifo
    )
    assert status == 0 and json.loads(capsys.readouterr().out)["image_used"] is False


# ----------------------------------------------------------------------------------------------------------------------
# item 7: --output that is the input file is refused
# ----------------------------------------------------------------------------------------------------------------------
def test_output_that_resolves_to_the_input_is_refused(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": NER_TEXT}])
    original = source.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    (tmp_path / "real").mkdir()
    for output in ("in.jsonl", str(source), "nodir/../in.jsonl", "real/../in.jsonl", "./link.jsonl", "hard.jsonl"):
        assert main(["predict", "--model", str(folders["ner"]), "--input", "in.jsonl", "--output", output]) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert f"--output {output!r} is the --input file 'in.jsonl'" in line and "choose another --output" in line
        assert source.read_bytes() == original and source.is_file() and not source.is_symlink()
    assert not (tmp_path / "nodir").exists()  # refused before anything was created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.jsonl", "in.jsonl", "link.jsonl", "real"]


# ----------------------------------------------------------------------------------------------------------------------
# item 8: damaged model folders end in one line naming the file or the field
# ----------------------------------------------------------------------------------------------------------------------
def damage(folder: Path, how: str) -> None:
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    config = json.loads(config_file.read_text())
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "weights cut inside the header":
        weights.write_bytes(weights.read_bytes()[:20])
    elif how == "num_labels edited":
        config["id2label"] = {str(i): f"L{i}" for i in range(3)}
        config["label2id"] = {f"L{i}": i for i in range(3)}
    elif how == "text hidden size edited":
        config["text_config"]["hidden_size"] = 4096  # a model of another size than the weights
    elif how == "text hidden size absurd":
        config["text_config"]["hidden_size"] = 10**6  # would allocate terabytes
    elif how == "routing_layers absurd":
        config["routing_layers"] = 10**6  # built for minutes and gigabytes before the bounds
    elif how == "tokenizer.json truncated":
        tokenizer = folder / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes()[:1000])
    config_file.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "how, error, expected",
    [
        ("truncated weights", OSError, ["model.safetensors' is damaged", "truncated"]),
        ("weights cut inside the header", OSError, ["model.safetensors' is damaged", "20 bytes"]),
        ("num_labels edited", ValueError, ["config.json': num_labels is 3", "model.safetensors' holds 9 labels"]),
        (
            "text hidden size edited",
            ValueError,
            ["config.json' does not describe the weights", "(text_config)", "the config builds [4096]"],
        ),
        (
            "text hidden size absurd",
            ValueError,
            ["config.json': RAPConfig.text_config.hidden_size must be an integer in [1, 65536]", "TEXT_CONFIG_BOUNDS"],
        ),
        (
            "routing_layers absurd",
            ValueError,
            ["config.json': RAPConfig.routing_layers must be an integer in [1, 64]", "MAX_ROUTING_LAYERS"],
        ),
        ("tokenizer.json truncated", OSError, ["tokenizer.json' is not valid JSON"]),
    ],
)
def test_damaged_model_folder_fails_in_one_line(folders, tmp_path, capsys, how, error, expected):
    folder = Path(shutil.copytree(folders["ner"], tmp_path / "model"))
    damage(folder, how)
    start = time.perf_counter()
    with pytest.raises(error) as info:
        pipeline(folder, device="cpu")
    assert time.perf_counter() - start < 30  # nothing absurd was allocated or built
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    assert all(part in message for part in expected), message
    chained = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
    assert chained is None  # no torch/transformers traceback chained to it
    assert main(["predict", "--model", str(folder), "--text", NER_TEXT]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert all(part in line for part in expected), line


# ----------------------------------------------------------------------------------------------------------------------
# item 9: invalid text, spans, duplicate entities, a full disk, unclosed files
# ----------------------------------------------------------------------------------------------------------------------
def test_lone_surrogates_are_named_not_a_tokenizer_type_error(ner, folders, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"text holds an invalid character: lone surrogate U\+D800 at character 6"):
        ner("Kevin \ud800 Durant")
    with pytest.raises(ValueError, match=r"tokens\[1\] \('a\\udfff'\) holds an invalid character"):
        ner({"tokens": ["Kevin", "a\udfff"]})
    with pytest.raises(ValueError, match=r"example 0, word 1 \('b\\ud800'\): lone surrogate U\+D800"):
        ner.processor.encode_ner([["a", "b\ud800"]])
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "Kevin \\ud800 Durant"}\n')  # JSON escapes: the file itself is ASCII
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(path)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{path}:2: text holds an invalid character: lone surrogate U+D800 at character 6" in line


def test_boolean_and_negative_spans_are_refused(re_pipe, folders, tmp_path, capsys):
    with pytest.raises(TypeError, match="subject word span must be an integer, got True"):
        re_pipe(RE_TEXT, subject=(True, 2), object=(5, 9))
    with pytest.raises(TypeError, match="object start_word must be an integer, got False"):
        re_pipe(RE_TEXT, subject=(0, 2), object={"start_word": False, "end_word": 2})
    with pytest.raises(TypeError, match=r"subject start_char must be an integer, got 1\.0"):
        re_pipe(RE_TEXT, subject={"start_char": 1.0, "end_char": 4}, object=(5, 9))
    with pytest.raises(ValueError, match=rf"subject characters \[-4, 4\) are not inside the {len(RE_TEXT)} characters"):
        re_pipe(RE_TEXT, subject={"start_char": -4, "end_char": 4}, object=(5, 9))
    with pytest.raises(ValueError, match=r"entity 1 characters \[-9, -3\)"):
        re_pipe(RE_TEXT, pairs="all", entities=[{"start_char": 0, "end_char": 4}, {"start_char": -9, "end_char": -3}])
    assert re_pipe(RE_TEXT, subject=(0, 2), object=(5, 9))["subject"]["text"] == "Bill Cosby"  # ints still work
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": RE_TEXT, "subject": [True, 2], "object": [5, 9]}])
    assert main(["predict", "--model", str(folders["re"]), "--input", str(path)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{path}:1: subject word span must be an integer, got True" in line


def test_all_pairs_never_pair_an_entity_listed_twice_with_itself(re_pipe):
    cosby = {"text": "Bill Cosby", "start_char": 0, "end_char": 10, "type": "PER"}
    fame = {"text": "Hollywood Walk of Fame", "start_char": 22, "end_char": 44, "type": "LOC"}
    twice = re_pipe(RE_TEXT, pairs="all", entities=[cosby, fame, dict(cosby), {"start_word": 0, "end_word": 2}])
    pairs = [(r["subject"]["text"], r["object"]["text"]) for r in twice]
    assert pairs == [("Bill Cosby", "Hollywood Walk of Fame"), ("Hollywood Walk of Fame", "Bill Cosby")]
    assert twice == re_pipe(RE_TEXT, pairs="all", entities=[cosby, fame])
    assert re_pipe(RE_TEXT, pairs="all", entities=[cosby, cosby]) == []  # one entity: no pair


@pytest.mark.skipif(
    not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode),
    reason="needs the /dev/full device",
)
def test_full_disk_during_predict_output_is_one_line(folders, tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": NER_TEXT}, {"text": "Dakota tonight !"}])
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(path), "--output", "/dev/full"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == "rap-hf: error: cannot write --output '/dev/full': [Errno 28] No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written to, never replaced by a renamed file


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE and fork are POSIX")
def test_output_file_that_cannot_grow_keeps_the_earlier_output(folders, tmp_path):
    """A disk that fills up while a regular --output file is written (here: a file-size limit, the same write error
    path): one line, the earlier file kept, no temporary file left."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": NER_TEXT}] * 20)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")

    def predict_with_a_300_byte_file_limit() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
        return main(["predict", "--model", str(folders["ner"]), "--input", str(path), "--output", str(out)])

    done = run_forked(predict_with_a_300_byte_file_limit)
    assert done["returncode"] == 2, done["stderr"][-3000:]
    (line,) = error_lines(done["stderr"])
    assert line.startswith(f"rap-hf: error: cannot write --output {str(out)!r}: [Errno 27] File too large")
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_truncated_jpeg_and_animated_gif_leave_no_file_open(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    frames = [Image.new("RGB", (16, 16), (color, 255 - color, 40)) for color in (10, 120, 230)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "animated.gif") as gif:
        assert gif.n_frames == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_picture(tmp_path / "truncated.jpg") is None
        with pytest.raises(OSError, match="truncated"):
            load_image(tmp_path / "truncated.jpg")
        animated = read_picture(tmp_path / "animated.gif")
        assert animated.mode == "RGB" and animated.size == (16, 16)
        assert load_image({"path": str(tmp_path / "animated.gif"), "bytes": None}).size == (16, 16)
        del animated
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# ----------------------------------------------------------------------------------------------------------------------
# item 10: a model path that is neither a local folder nor reachable fails fast, in one line
# ----------------------------------------------------------------------------------------------------------------------
def test_model_path_offline_fails_fast_saying_where_it_looked(tmp_path, monkeypatch, capsys):
    from transformers.utils.hub import constants, is_offline_mode

    assert is_offline_mode()  # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    monkeypatch.chdir(tmp_path)  # "runs/rap-ner" from the wrong folder
    for name in ("runs/rap-ner", "org/x", "rap-ner"):
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError) as info:
            pipeline(name, device="cpu")
        assert time.perf_counter() - start < 2
        message = str(info.value)
        assert "\n" not in message and os.path.join(os.getcwd(), name) in message and constants.HF_HUB_CACHE in message
        assert "HF_HUB_OFFLINE set" in message
        start = time.perf_counter()
        assert main(["predict", "--model", name, "--text", "a"]) == 2
        assert time.perf_counter() - start < 2
        (line,) = error_lines(capsys.readouterr().err)
        assert f"RAP model directory not found: {name!r} is neither a folder here" in line


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """A local server in the place of the Hub (HF_ENDPOINT): every repository is unknown (404); requests are kept."""

    requests: list[str] = []

    def _not_found(self):
        type(self).requests.append(self.path)
        body = b'{"error": "Repository not found"}'
        self.send_response(404)
        for key, value in (
            ("Content-Type", "application/json"),
            ("X-Error-Code", "RepoNotFound"),
            ("Content-Length", str(len(body))),
        ):
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _not_found

    def log_message(self, *args):
        pass


def test_local_looking_paths_never_ask_the_hub_and_hub_ids_still_do(tmp_path, monkeypatch):
    """Online, with a local server in the place of the Hub (the only patch: where huggingface_hub sends requests, as
    HF_ENDPOINT would set it): local-looking paths fail at once without a request, a Hub id is asked for."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _HubStandIn.requests = []
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/rap-ner" where runs/ exists: a local path, even online
    local = ["./runs/rap-ner", "runs/rap-ner", "runs/rap-ner/", "a/b/c", "~/no-such-rap-model-7f3a", "../x/y"]
    try:
        for name in local:
            start = time.perf_counter()
            with pytest.raises(FileNotFoundError) as info:
                pipeline(name, device="cpu")
            assert time.perf_counter() - start < 2
            looked = f"RAP model directory not found: {os.path.expanduser(name)!r} (looked for the folder "
            assert looked in str(info.value)
        with pytest.raises(OSError) as info:
            pipeline("org/rap-x", device="cpu")
    finally:
        server.shutdown()
    assert "org/rap-x" in str(info.value) and f"no local folder {tmp_path / 'org/rap-x'}" in str(info.value)
    assert any("/org/rap-x/" in request for request in _HubStandIn.requests)  # the Hub id went to the Hub
    assert not any("runs" in request or "no-such" in request or "a/b" in request for request in _HubStandIn.requests)


# ----------------------------------------------------------------------------------------------------------------------
# item 11: --device without the device, --push_to_hub without token or network
# ----------------------------------------------------------------------------------------------------------------------
def test_device_the_machine_lacks_is_one_line(folders, capsys):
    devices = ["cuda:99", "nonsense"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for command in (["predict", "--text", NER_TEXT], ["explain", "--text", NER_TEXT, "--out", "x.png"]):
            assert main([command[0], "--model", str(folders["ner"]), "--device", device, *command[1:]]) == 2
            (line,) = error_lines(capsys.readouterr().err)
            assert line.startswith(f"rap-hf: error: --device {device}: ") and line.endswith("; use --device cpu")
    assert "no usable CUDA GPU here" in line or torch.cuda.is_available()
    with pytest.raises(ValueError, match=r"device='cuda:99': .*; use device='cpu'"):
        pipeline(folders["ner"], device="cuda:99")


RUN_RAP = "../run_rap.py"  # scripts/run_rap.py, as benchmark_helpers loads scripts
PUSH = ["--push_to_hub", "True", "--hub_model_id", "org/rap-test"]


def test_unknown_option_is_a_usage_error_not_a_traceback():
    status, _, stderr = run_main_in_process(RUN_RAP, "--no_such_option", "1")
    assert status == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].endswith("error: unrecognized arguments: --no_such_option 1")


def test_push_to_hub_without_a_token_stops_before_training(tmp_path, monkeypatch):
    from huggingface_hub import get_token

    monkeypatch.delenv("HF_TOKEN", raising=False)
    if get_token():
        pytest.skip("a Hugging Face token is stored on this machine")
    status, _, stderr = run_main_in_process(RUN_RAP, "--output_dir", str(tmp_path / "run"), *PUSH)
    assert status == 2 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: --push_to_hub needs a Hugging Face token with write access: run `hf auth login`, or set HF_TOKEN (or "
        "pass --hub_token)"
    ]
    assert not (tmp_path / "run").exists()


def test_push_to_hub_offline_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    status, _, stderr = run_main_in_process(RUN_RAP, "--output_dir", str(tmp_path / "run"), *PUSH)
    assert status == 2 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: --push_to_hub cannot upload while HF_HUB_OFFLINE is set: unset it (and check the network connection), "
        "or leave out --push_to_hub"
    ]


def test_push_to_hub_without_network_is_one_line_before_anything_is_built(tmp_path, monkeypatch):
    """A token but no network (the Hub endpoint is a closed port; the only patch: where huggingface_hub sends its
    requests, as HF_ENDPOINT would set it): one `error:` line instead of a 170-line traceback, before the corpus or
    the model is touched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    status, _, stderr = run_main_in_process(RUN_RAP, "--output_dir", str(tmp_path / "run"), *PUSH)
    assert status == 2 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: --push_to_hub: the Hugging Face Hub request failed (ConnectError: ")
    assert "check the network connection and that your token (`hf auth login` or HF_TOKEN) may write to " in last
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# item 12: scripts/reproduce.py checks the corpora first and reports failed runs in its exit status
# ----------------------------------------------------------------------------------------------------------------------
def test_reproduce_checks_every_corpus_before_starting_anything(tmp_path):
    out = tmp_path / "out"
    status, _, stderr = run_main_in_process(
        "../reproduce.py", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(out)
    )
    assert status != 0 and f"--data_dir {tmp_path / 'missing'} is not a directory; nothing was started" in stderr
    data = tmp_path / "data"
    (data / "NER_data" / "twitter2017").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / "NER_data" / "twitter2017" / f"{split}.txt").write_text("IMGID:1\nKevin\tB-PER\n\n")
    (data / "NER_data" / "twitter2015").mkdir()
    (data / "NER_data" / "twitter2015" / "train.txt").write_text("IMGID:1\nKevin\tB-PER\n\n")
    status, _, stderr = run_main_in_process("../reproduce.py", "--data_dir", str(data), "--output_dir", str(out))
    assert status != 0
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "lacks corpora the runs need, nothing was started" in line
    assert "no validation file in" in line and "twitter2015" in line  # twitter2015 has only train.txt
    assert "MNRE: neither" in line and "no train.txt" not in line  # twitter2017 is complete
    assert not out.exists()  # no run, no log, no report


@pytest.mark.slow
def test_reproduce_exits_non_zero_when_a_run_failed(tmp_path):
    """Table 3 on Twitter-2017, one seed: the text-only baseline has finished before (its results.json), RAP's run
    fails at once (run_rap.py refuses an unknown option). The report is written from what finished and the exit
    status says a run failed."""
    from benchmark_helpers import load_benchmark

    out = tmp_path / "out"
    reproduce = load_benchmark("../reproduce.py", "reproduce_failing")
    specs = reproduce.expand_grid([3], ["twitter2017"], [0], paper=True)
    finished = next(spec for spec in specs if spec.name == "text_only_baseline=True").folder(out)
    finished.mkdir(parents=True)
    scores = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3}
    (finished / "results.json").write_text(
        json.dumps({"test": scores, "best_epoch": 1, "timings": {"train_seconds": 1}})
    )
    status, _, stderr = run_main_in_process(
        "../reproduce.py",
        *("--table", "3", "--datasets", "twitter2017", "--seeds", "0", "--output_dir", str(out)),
        *("--no_such_option", "1"),
    )
    assert status == 1, stderr[-3000:]
    assert "error: 1 of 1 runs failed (twitter2017 default seed 0)" in stderr and str(out / "logs") in stderr
    report = (out / "report.md").read_text()
    assert "Finished runs: 1 of 2." in report and "33.33" in report  # the baseline's F1, in Table 3
    (log,) = (out / "logs").glob("*.log")
    assert "unrecognized arguments: --no_such_option 1" in log.read_text()
