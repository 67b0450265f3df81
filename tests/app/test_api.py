"""The HTTP API under the real server (app/server/main.py) on 127.0.0.1, with real requests and the
fixture model.

A good image gets the same answer the predict CLI gives; every kind of bad input gets a 4xx
whose JSON `detail` is a string naming it (never a 500, never the upload echoed back), and the
server goes on answering; HEAD works wherever GET does; the docs pages work offline; a model
is served right or refused at start in one line. The limits on connections and on hostile
uploads are tested in test_server.py.
"""

import hashlib
import http.client
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from app.server.settings import Limits
from tests.conftest import REPO, WITHOUT_TRAINING_PACKAGES
from tests.digits import draw_digit
from tests.drawings import canvas_png
from tests.hostile_pictures import bad_checksum_png, encoded, png, progressive_jpeg, text_bomb_png
from tests.serving import (  # noqa: F401
    START_TIMEOUT_S,
    ServedApp,
    base_url_fixture,
    free_port,
    multipart,
    post_file,
    request,
    wait_until_answering,
)

MAX_UPLOAD_BYTES = Limits().max_upload_bytes

CLASSES = [str(d) for d in range(10)]


def digit_image(digit, seed=0, size=140):
    """A digit as people send it: black ink on white paper, far larger than 28x28."""
    white_on_black = draw_digit(digit, np.random.default_rng(seed))
    return Image.fromarray(255 - white_on_black).resize((size, size), Image.Resampling.BILINEAR)


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def assert_still_serving(url):
    answer = post_file(url, encoded(digit_image(3), "PNG"))
    assert answer.status == 200, answer.body


def assert_prediction(body):
    """The shape of a prediction: the best class, no refusal, then all ten ranked, summing
    to 1."""
    assert set(body) == {"label", "probability", "refusal", "top"} and body["refusal"] is None
    top = body["top"]
    assert sorted(t["label"] for t in top) == CLASSES
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1, abs=1e-4)
    assert top[0] == {"label": body["label"], "probability": body["probability"]}


@pytest.mark.parametrize("digit", [2, 7])
def test_png_is_predicted_as_the_cli_predicts_it(base_url, model_dir, tmp_path, digit):
    png = tmp_path / f"{digit}.png"
    digit_image(digit).save(png)

    answer = post_file(base_url, png.read_bytes())

    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert_prediction(body)
    assert body["label"] == str(digit)
    cli = subprocess.run([sys.executable, "-m", "app.cli", "--json", "--top", "10",
                          "--model", str(model_dir / "model.onnx"), str(png)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    [printed] = json.loads(cli.stdout)
    assert printed == {"file": str(png), **body}


def test_a_dash_gets_not_a_digit_as_the_cli_says_it(base_url, model_dir, tmp_path):
    """No digit in the picture: a 200 whose refusal says why, no class, and the model's guesses
    still listed; the command line says the same."""
    dash = tmp_path / "dash.png"
    dash.write_bytes(canvas_png([[(50, 150), (230, 140)]]))
    answer = post_file(base_url, dash.read_bytes())
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["refusal"] == "not a digit: a dash"
    assert body["label"] is None and body["probability"] is None and len(body["top"]) == 10
    cli = subprocess.run([sys.executable, "-m", "app.cli", "--json", "--top", "10",
                          "--model", str(model_dir / "model.onnx"), str(dash)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(cli.stdout) == [{"file": str(dash), **body}]


@pytest.mark.parametrize("fmt, content_type", [("JPEG", "image/jpeg"), ("BMP", "image/bmp")])
def test_jpeg_and_bmp_are_predicted(base_url, fmt, content_type):
    data = encoded(digit_image(5, seed=3).convert("RGB"), fmt)

    answer = post_file(base_url, data, f"digit.{fmt.lower()}", content_type)

    assert answer.status == 200, answer.body
    assert_prediction(answer.json())
    assert answer.json()["label"] == "5"


def test_health_names_the_model(base_url, model_dir):
    model = model_dir / "model.onnx"

    answer = request(f"{base_url}/health")

    assert answer.status == 200
    assert answer.json() == {
        "status": "ok", "model": model.name, "version": "",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "family": "mlp", "dataset": "mnist", "class_names": CLASSES,
        "input_shape": [28, 28, 1], "prepare": "digit", "refusal": "digit"}


def truncated_png():
    data = encoded(digit_image(4), "PNG")
    return data[:len(data) // 2]


def huge_png():
    """7000x7000 pixels, 49 megapixels, in a few KB: a 1-bit PNG of blank paper compresses
    to almost nothing, so only its header can tell."""
    return encoded(Image.new("1", (7000, 7000), 1), "PNG")


BAD_UPLOADS = {
    # name: (a function making the upload's bytes; the expected status; words the detail
    # must contain)
    "text": (lambda: b"hello, this is not an image\n", 400, "not a picture (BMP, GIF, JPEG"),
    "empty": (lambda: b"", 400, "empty"),
    "truncated png": (truncated_png, 400, "a damaged PNG image"),
    "bad checksum": (bad_checksum_png, 400, "a damaged PNG image"),
    "text bomb": (text_bomb_png, 400, "a damaged PNG image (a text chunk over the size allowed)"),
    "too many pixels": (huge_png, 413, "over the 40-megapixel limit"),
    # A 16-bit RGBA PNG of 6300x6300 in 300 KB: 151 MB to decode.
    "costly png": (lambda: png(6300, 6300, 6, 16), 413, "takes over the 128 MB allowed"),
    # 6000x6000 with its last scan repeated: 32 s to decode, stopped at 1 s of CPU.
    "1,000 scans": (lambda: progressive_jpeg(6000, 1000), 413, "took over 1 s of CPU time"),
    "blank page": (lambda: encoded(Image.new("L", (200, 200), 255), "PNG"), 422,
                   "no digit found"),
    "one pixel high": (lambda: encoded(Image.new("L", (1000, 1), 0), "PNG"), 422, "too small"),
    "three pixels wide": (lambda: encoded(Image.new("L", (3, 3000), 0), "PNG"), 422,
                          "too small"),
    "two digits": (lambda: encoded(Image.fromarray(np.hstack([digit_image(3),
                                                              digit_image(8, seed=1)])), "PNG"),
                   422, "several"),
}


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_bad_upload_gets_a_4xx_naming_it(base_url, name):
    make, status, words = BAD_UPLOADS[name]

    answer = post_file(base_url, make())

    assert answer.status == status, answer.body
    assert words in answer.json()["detail"]
    assert_still_serving(base_url)


def form_with_text(field, text):
    body = (f'--b\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'.encode() + text
            + b"\r\n--b--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=b"}


@pytest.mark.parametrize("field, detail", [
    ("image", "no picture: send it in the multipart field `file` (curl -F file=@digit.png)"),
    ("file", "the multipart field `file` must be a file, not text"),
])
def test_a_form_without_a_file_gets_one_string_and_no_echo(base_url, field, detail):
    """FastAPI's own 422 is a list, and it echoed a text field of 1 MB back as 6 MB."""
    body, headers = form_with_text(field, b"x" * 2**19)

    answer = request(f"{base_url}/predict", body, headers, "POST")

    assert answer.status == 422
    assert answer.json() == {"detail": detail}
    assert_still_serving(base_url)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("GET", "/predict", 405), ("DELETE", "/health", 405),
    ("GET", "/static/nothing.js", 404), ("HEAD", "/predict", 405),
])
def test_every_refusal_has_a_string_detail(base_url, method, path, status):
    answer = request(base_url + path, method=method)

    assert answer.status == status
    if method != "HEAD":
        assert isinstance(answer.json()["detail"], str)


@pytest.mark.parametrize("path", ["/", "/health", "/docs", "/redoc", "/openapi.json",
                                  "/static/app.js"])
def test_head_answers_as_get_does_without_the_body(base_url, path):
    get = request(base_url + path)

    head = request(base_url + path, method="HEAD")

    assert get.status == head.status == 200
    assert head.body == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == str(len(get.body))


def test_declared_oversize_upload_is_refused_before_its_body_is_sent(base_url):
    """Content-Length says 11 MB, a few bytes follow: the 413 must come back at once. A server
    that read the body first would wait for the rest, and getresponse would time out."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(base_url), timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Content-Length", str(11 * 2**20))
    conn.endheaders(b"--b\r\n")
    answer = conn.getresponse()

    assert answer.status == 413
    assert "10 MB limit" in json.loads(answer.read())["detail"]
    conn.close()
    assert_still_serving(base_url)


def send_chunked(url, head, filler_bytes, tail=b""):
    """POST /predict with Transfer-Encoding: chunked, so no length is declared up front: `head`,
    then `filler_bytes` of file data in 1 MiB chunks, then `tail`. Sending stops early if the
    server hangs up; the answer is read either way."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=60)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunks = [head] + [b"\0" * 2**20] * (filler_bytes // 2**20) + [tail]
    try:
        for chunk in filter(None, chunks):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused mid-way: the answer is already waiting
    answer = conn.getresponse()
    status, body = answer.status, answer.read()
    conn.close()
    return status, body


PART_HEAD = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
             b"Content-Type: image/png\r\n\r\n")


def test_chunked_upload_within_the_limit_is_predicted(base_url):
    png = encoded(digit_image(7), "PNG")

    status, body = send_chunked(base_url, PART_HEAD + png, 0, b"\r\n--b--\r\n")

    assert status == 200, body
    assert json.loads(body)["label"] == "7"


def test_chunked_upload_over_the_limit_is_refused(base_url):
    status, body = send_chunked(base_url, PART_HEAD, MAX_UPLOAD_BYTES + 2**20)

    assert status == 413, body
    assert "10 MB limit" in json.loads(body)["detail"]
    assert_still_serving(base_url)


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_use_only_their_own_assets(base_url, path):
    """Offline, a page that fetched a CDN's script would be blank: everything it references
    must come from the app itself, and be there."""
    answer = request(base_url + path)

    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    html = answer.text
    absolute = re.findall(r"""https?://[^\s"'<>)]+""", html)
    assert [url for url in absolute if not url.startswith(base_url + "/")] == []
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets, "the page references no assets"
    for asset in assets:
        served = request(base_url + asset if asset.startswith("/") else asset)
        assert served.status == 200, asset
        assert served.body, asset


def test_openapi_schema_is_served(base_url):
    # Both docs pages are drawn from it.
    answer = request(f"{base_url}/openapi.json")

    assert answer.status == 200
    assert "/predict" in answer.json()["paths"]


def start_refused(environ):
    """`python -m app.server.main` with `environ` added: (exit status, the lines it wrote)."""
    done = subprocess.run([sys.executable, "-m", "app.server.main"], cwd=REPO,
                          env={**os.environ, "PORT": "0", **environ},
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr + done.stdout
    return done.returncode, done.stderr.splitlines()


def test_server_refuses_to_start_without_its_model():
    status, lines = start_refused({"MODEL": "/nonexistent/model.onnx"})

    assert status != 0
    [line] = lines
    assert line.startswith("error: /nonexistent/model.onnx: model file not found")


def test_server_refuses_a_model_without_its_softmax(model_variants):
    status, lines = start_refused({"MODEL": str(model_variants["logits"])})

    assert status != 0
    [line] = lines
    assert "its outputs are not probabilities" in line and "final softmax" in line


@pytest.mark.parametrize("name, value, error", [
    ("PORT", "80000", "error: PORT='80000': input should be less than 65536"),
    ("WORKERS", "two", "error: WORKERS='two': input should be a valid integer, unable to parse "
                       "string as an integer"),
])
def test_server_refuses_a_setting_it_cannot_use(monkeypatch, name, value, error):
    """mnist-serve's own main, here: it stops before it loads anything."""
    from app.server.main import main

    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main([])

    assert stopped.value.code == error


def test_nan_is_never_served(model_variants):
    """A model that gives NaN for pictures of digits, though not for the pictures it is
    checked on at load: a 500 that says so, never `"probability": null`."""
    with ServedApp(model_variants["nan-for-digits"]) as url:
        answer = post_file(url, encoded(digit_image(7), "PNG"))

    assert answer.status == 500
    assert "gave no probabilities" in answer.json()["detail"]


def test_a_model_with_a_fixed_batch_of_one_is_served(model_variants, base_url):
    png_bytes = encoded(digit_image(2), "PNG")

    with ServedApp(model_variants["fixed-batch"]) as url:
        answer = post_file(url, png_bytes)

    assert answer.status == 200
    assert answer.json()["top"] == post_file(base_url, png_bytes).json()["top"]


def test_the_server_runs_without_tensorflow_and_writes_no_telemetry(model_dir, tmp_path):
    """`python -m app.server.main` as a serving host runs it: the training packages are not there,
    and ONNX Runtime writes nothing under the user's home (it would record a device id under
    ~/.cache/Microsoft for an uploader)."""
    port = free_port()
    # One worker: the packages are kept out of this process, not of workers it would start
    # (test_install.py serves with the default workers where those packages are not installed).
    env = {**os.environ, "MODEL": str(model_dir / "model.onnx"), "PORT": str(port),
           "HOME": str(tmp_path), "WORKERS": "1"}
    code = ("import runpy, sys\n" + WITHOUT_TRAINING_PACKAGES
            + "runpy.run_module('app.server.main', run_name='__main__', alter_sys=True)\n")
    server = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url)
        answer = post_file(url, encoded(digit_image(7), "PNG"))
        assert answer.status == 200 and answer.json()["label"] == "7"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "Traceback" not in output, output
    assert list(tmp_path.rglob("*")) == []


def test_the_server_starts_a_worker_per_core_it_may_use():
    """Not more than the process's CPUs (a container's cpuset narrows them), and at most 4."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    code = ("import os, sys\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from app.server.settings import Settings\nprint(Settings().workers)")
    environ = {k: v for k, v in os.environ.items() if k != "WORKERS"}
    one_core = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, check=True, env=environ)
    every_core = subprocess.run([sys.executable, "-c", code.split("\n", 2)[2]], cwd=REPO,
                                capture_output=True, text=True, check=True, env=environ)

    assert one_core.stdout.strip() == "1"
    assert every_core.stdout.strip() == str(min(len(os.sched_getaffinity(0)), 4))


def test_no_answer_names_the_server_and_the_page_sends_its_security_headers(base_url):
    for path in ("/", "/health", "/static/app.js", "/nowhere"):
        assert "server" not in request(base_url + path).headers, path

    page = request(base_url + "/").headers

    assert page["x-content-type-options"] == "nosniff"
    assert page["referrer-policy"] == "no-referrer"
    policy = dict(rule.strip().split(" ", 1) for rule in
                  page["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'"  # scripts and styles: the page's own files only
    assert "script-src" not in policy and "style-src" not in policy


def test_a_model_that_fails_on_a_picture_gets_a_500_in_the_products_words(model_variants):
    """ONNX Runtime's message names its C++ source and functions: none of that is answered."""
    with ServedApp(model_variants["fails-alone"]) as url:
        answer = post_file(url, encoded(digit_image(7), "PNG"))

    assert answer.status == 500
    detail = answer.json()["detail"]
    assert detail.startswith("fails-alone.onnx: cannot run the model (")
    assert not re.search(r"\.(cc|h|cpp)\b|onnxruntime::|/onnxruntime", detail), detail


def test_a_model_of_pictures_answers_in_its_class_names(picture_model_dir):
    """Any model the pipeline exports: /health says what it takes; a picture of any size and
    format is fitted to it, read in its class names, or refused by its own threshold."""
    from tests.folders import SHAPES, shape_picture
    from tests.serving import ServedApp

    rng = np.random.default_rng(3)
    with ServedApp(picture_model_dir / "model.onnx") as url:
        health = request(f"{url}/health").json()
        assert health["class_names"] == list(SHAPES) and health["input_shape"] == [24, 24, 3]
        assert (health["prepare"], health["refusal"]) == ("picture", "uncertainty")
        read = []
        for shape in SHAPES:
            body = io.BytesIO()
            shape_picture(shape, rng, (200, 150)).save(body, "WEBP")
            answer = post_file(url, body.getvalue(), "shape.webp", "image/webp").json()
            assert {t["label"] for t in answer["top"]} == set(SHAPES), answer
            read.append(answer["label"] == shape)
        assert sum(read) >= 2
        noise = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise, "PNG")
        unsure = post_file(url, noise.getvalue()).json()
        assert unsure["refusal"] is None or unsure["refusal"].startswith("not recognised")
