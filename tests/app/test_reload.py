"""Reloads on `mnist-serve` as it runs: at SIGHUP each worker loads and checks the model MODEL
names now, then answers with it from its next request; under load no request fails; a model
that cannot be served is refused in one line, and the one before goes on answering.
"""

import http.client
import shutil
import signal
import threading
import time

from tests.app.test_api import digit_image
from tests.hostile_pictures import encoded
from tests.serving import post_file, request, served_process, wait_for, wait_until_answering

CLIENTS = 8
SERVING = "INFO:     serving model.onnx (SHA-256 "  # a worker's line once it loaded a model


def replace(model, source):
    """`model` replaced by a copy of `source` at once, as `dvc checkout` or a deploy would."""
    shutil.copy(source, model.with_suffix(".new"))
    model.with_suffix(".new").replace(model)


def sha256(url):
    return request(f"{url}/health").json()["sha256"]


def hammer(url, body, stop, results):
    """POST /predict again and again on one keep-alive connection until `stop`: each status,
    or the exception that stood for an answer."""
    boundary, (host, port) = "b", url.removeprefix("http://").split(":")
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    while not stop.is_set():
        try:
            connection.request("POST", "/predict", form,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            answer = connection.getresponse()
            answer.read()
            results.append(answer.status)
        except OSError as error:
            results.append(repr(error))
            connection.close()
    connection.close()


def test_reloads_under_load_lose_no_request(model_dir, model_variants, tmp_path):
    """Eight clients on keep-alive connections to two workers while the model is switched three
    times: every request answered 200, and each worker says it switched, in one line."""
    model, log = tmp_path / "model.onnx", tmp_path / "log"
    replace(model, model_dir / "model.onnx")
    png = encoded(digit_image(4), "PNG")
    with served_process(model, log, workers=2) as (server, url):
        wait_for(lambda: log.read_text().count(SERVING) == 2, "not both loaded")
        stop, results = threading.Event(), []
        clients = [threading.Thread(target=hammer, args=(url, png, stop, results))
                   for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            for source in (model_variants["fixed-batch"], model_dir / "model.onnx",
                           model_variants["fixed-batch"]):
                time.sleep(1)
                before = log.read_text().count(SERVING)
                replace(model, source)
                server.send_signal(signal.SIGHUP)
                wait_for(lambda n=before + 2: log.read_text().count(SERVING) == n,
                         "the workers did not both switch")
            time.sleep(1)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=60)

    assert len(results) > 100 and set(results) == {200}, [r for r in results if r != 200][:5]


def test_a_model_that_cannot_be_served_is_refused_and_the_one_before_answers(
        model_dir, model_variants, tmp_path):
    """One process serving alone (it checks the new model itself): a damaged file, a model
    whose metadata does not fit its graph and one without its softmax are each refused in one
    line; a good one is then taken."""
    model, log = tmp_path / "model.onnx", tmp_path / "log"
    replace(model, model_dir / "model.onnx")
    png = encoded(digit_image(4), "PNG")
    (tmp_path / "damaged.onnx").write_bytes(model.read_bytes()[:2000])
    with served_process(model, log) as (server, url):
        wait_until_answering(url)
        first = sha256(url)
        for bad in (tmp_path / "damaged.onnx", model_variants["batch-of-32"],
                    model_variants["logits"]):
            refused = log.read_text().count("model refused")
            replace(model, bad)
            server.send_signal(signal.SIGHUP)
            wait_for(lambda n=refused + 1: log.read_text().count("model refused") == n,
                     "not refused")
            assert sha256(url) == first and post_file(url, png).status == 200
        replace(model, model_variants["fixed-batch"])
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: sha256(url) != first, "the good model was not taken")

    lines = [line for line in log.read_text().splitlines() if "model refused" in line]
    assert len(lines) == 3 and all(line.startswith("ERROR:    model refused (still serving "
                                                   "model.onnx): ") for line in lines)
    assert "cannot load the model" in lines[0] and "batches of exactly 32" in lines[1]
    assert "not probabilities" in lines[2]
