"""The Open Inference Protocol v2 (REST) beside the app's own routes, called with the client people
use, Triton's `tritonclient.http`, against the real server on 127.0.0.1: metadata, liveness and
readiness, and `infer` on a batch of pictures in the model's input form, whose probabilities are
those /predict answers for the same pictures. Every limit the server has holds for it too, with
the same one-shape errors. The real MNIST test digits need the model `dvc repro` trains
(skipped where it is missing; REQUIRE_TRAINED_MODEL=1 makes that a failure, as in
test_photos.py).

KServe's Python SDK (kserve 0.21) is not used: it pins psutil 5.9 and protobuf 6, below this
project's pins, so it does not install beside them.
"""

import http.client
import json

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.classifier import load_classifier, model_input
from app.server.settings import Limits
from tests.app.test_api import digit_image
from tests.app.test_photos import real_mnist_model
from tests.hostile_pictures import encoded
from tests.readings import DIGIT_MODEL, mnist_test_digits
from tests.serving import (  # noqa: F401
    ServedApp,
    base_url_fixture,
    post_file,
    request,
    served_process,
    wait_for,
    wait_until_answering,
)

MODEL = "model"  # the fixture's file is model.onnx: the model's name is its file's


@pytest.fixture(scope="module")
def names(model_dir):
    """(input, output): the names of the fixture model's tensors, as its export chose them."""
    classifier = load_classifier(model_dir / "model.onnx")
    return classifier.input_name, classifier.session.get_outputs()[0].name


def client(url):
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)


def infer(url, pixels, names, **options):
    """tritonclient's result for `pixels` (N, H, W, C), sent as JSON; as_numpy(names[1]) has
    the probabilities."""
    given = triton.InferInput(names[0], list(pixels.shape), "FP32")
    given.set_data_from_numpy(pixels.astype(np.float32), binary_data=False)
    asked = [triton.InferRequestedOutput(names[1], binary_data=False)]
    return client(url).infer(MODEL, [given], outputs=asked, **options)


def pngs(count):
    return [encoded(digit_image(i % 10, seed=i), "PNG") for i in range(count)]


def test_the_server_and_its_model_describe_themselves(base_url, names):
    triton_client = client(base_url)

    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    assert triton_client.get_server_metadata() == {"name": "mnist-serve", "version": "1",
                                                   "extensions": []}
    assert triton_client.get_model_metadata(MODEL) == {
        "name": MODEL, "versions": [], "platform": "onnxruntime_onnx",
        "inputs": [{"name": names[0], "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": names[1], "datatype": "FP32", "shape": [-1, 10]}]}
    assert not triton_client.is_model_ready("other")


def test_a_batch_gets_the_probabilities_predict_answers(base_url, model_dir, names):
    """The same pictures, as the server makes them from PNGs: each probability /predict ranks
    is the one infer answers, to its 6 decimals."""
    pictures = pngs(12)
    pixels = np.stack([model_input(png, DIGIT_MODEL) for png in pictures]).astype(np.float32)

    result = infer(base_url, pixels, names, request_id="batch-1")

    probabilities = result.as_numpy(names[1])
    assert probabilities.shape == (12, 10) and result.get_response()["id"] == "batch-1"
    for png, row in zip(pictures, probabilities):
        top = post_file(base_url, png).json()["top"]
        assert {t["label"]: t["probability"] for t in top} == {
            str(i): round(float(p), 6) for i, p in enumerate(row)}
    local = load_classifier(model_dir / "model.onnx").probabilities(pixels)
    assert np.array_equal(probabilities, local)


def test_the_trained_model_reads_real_mnist_test_digits_through_the_protocol():
    """256 real MNIST test digits in one request, as the dataset has them: read right as the
    model reads them in-process (98 % or more); and 10 of them as PNGs, answered as /predict
    answers them."""
    classifier = real_mnist_model()
    names = classifier.input_name, classifier.session.get_outputs()[0].name
    pixels, labels = mnist_test_digits()
    pixels = pixels[:256, ..., None]
    with ServedApp(classifier.path) as url:
        probabilities = infer(url, pixels, names).as_numpy(names[1])
        pictures = [encoded(Image.fromarray(digit.astype(np.uint8)[..., 0]), "PNG")
                    for digit in pixels[:10]]
        tops = [post_file(url, png).json()["top"] for png in pictures]
        tensors = np.stack([model_input(png, classifier.info) for png in pictures])
        as_pictures = infer(url, tensors.astype(np.float32), names).as_numpy(names[1])

    assert np.array_equal(probabilities, classifier.probabilities(pixels))
    assert (probabilities.argmax(axis=1) == labels[:256]).mean() >= 0.98
    for top, row in zip(tops, as_pictures):
        assert {t["label"]: t["probability"] for t in top} == {
            str(i): round(float(p), 6) for i, p in enumerate(row)}


def test_the_binary_answer_a_client_asks_for_comes_as_json_it_reads(base_url, names):
    """With no outputs named, tritonclient asks for binary ones (Triton's extension, which the
    server does not declare): it gets JSON, and reads it."""
    given = triton.InferInput(names[0], [1, 28, 28, 1], "FP32")
    given.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.float32), binary_data=False)

    probabilities = client(base_url).infer(MODEL, [given]).as_numpy(names[1])

    assert probabilities.shape == (1, 10) and abs(probabilities.sum() - 1) < 1e-5


def post_tensor(url, body, path=f"/v2/models/{MODEL}/infer"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(url + path, data, {"Content-Type": "application/json"}, "POST")


def tensor(count=1, shape=(28, 28, 1), name="input_layer", datatype="FP32", value=0.0):
    numbers = count * int(np.prod(shape))
    return {"inputs": [{"name": name, "shape": [count, *shape], "datatype": datatype,
                        "data": [value] * numbers}]}


FORM_ERROR = ("expected an inference request of one input, '{}': FP32 of shape [N, 28, 28, 1] "
              "with N from 1 to 256, its data as many numbers; the one output is '{}'")
BAD_REQUESTS = {  # name: (body, given the model's input name; status; detail)
    "257 pictures": (lambda name: tensor(257, name=name), 422, FORM_ERROR),
    "another shape": (lambda name: tensor(shape=(28, 28), name=name), 422, FORM_ERROR),
    "another name": (lambda name: tensor(name="x"), 422, FORM_ERROR),
    "integers": (lambda name: tensor(datatype="INT32", name=name), 422, FORM_ERROR),
    "too few numbers": (lambda name: {"inputs": [{**tensor(name=name)["inputs"][0],
                                                  "data": [0.0] * 783}]}, 422, FORM_ERROR),
    "words": (lambda name: tensor(value="a", name=name), 422, FORM_ERROR),
    "no inputs": (lambda name: {"inputs": []}, 422, FORM_ERROR),
    "not json": (lambda name: b"\x89PNG", 422, FORM_ERROR),
    "another output": (lambda name: {**tensor(name=name), "outputs": [{"name": "scores"}]}, 422,
                       FORM_ERROR),
    "over 255": (lambda name: tensor(value=256.0, name=name), 422,
                 "the pictures' pixels are grey levels from 0 to 255"),
    "not a number": (lambda name: json.dumps(tensor(name=name)).replace("0.0", "NaN", 1).encode(),
                     422, "the pictures' pixels are grey levels from 0 to 255"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_that_says_what_is_wrong(base_url, names, case):
    body, status, detail = BAD_REQUESTS[case]

    answer = post_tensor(base_url, body(names[0]))

    detail = detail.format(*names)
    assert (answer.status, answer.json()) == (status, {"detail": detail})
    assert post_tensor(base_url, tensor(name=names[0])).status == 200


def test_another_model_or_version_is_not_found(base_url):
    for path in ("/v2/models/classifier/infer", f"/v2/models/{MODEL}/versions/v2/infer"):
        answer = post_tensor(base_url, {}, path)
        assert answer.status == 404 and answer.json()["detail"].startswith("no model ")
    with pytest.raises(InferenceServerException, match="no model classifier"):
        client(base_url).get_model_metadata("classifier")


def test_a_body_over_10_mb_gets_413_before_it_is_sent(base_url):
    conn = http.client.HTTPConnection(*base_url.removeprefix("http://").split(":"), timeout=30)
    conn.putrequest("POST", f"/v2/models/{MODEL}/infer")
    conn.putheader("Content-Length", str(Limits().max_upload_bytes + 1))
    conn.endheaders(b"{")
    answer = conn.getresponse()

    assert answer.status == 413 and "10 MB limit" in json.loads(answer.read())["detail"]
    conn.close()


def test_the_uploads_cap_and_the_decode_deadline_hold_for_infer(model_dir, names):
    """A server whose decode deadline is shorter than reading any tensor: 503; one whose cap of
    uploads is 0: 503, before the body is read."""
    for limits, count, detail in (
            (Limits(decode_deadline_s=0.001), 256, "the picture was not read within 0.001 s: "
             "the server is busy; try again in a few seconds"),
            (Limits(max_uploads=0), 1, "the server is busy with 0 other uploads; try again in a "
             "few seconds")):
        with ServedApp(model_dir / "model.onnx", limits) as url:
            answer = post_tensor(url, tensor(count, name=names[0]))
        assert (answer.status, answer.json()) == (503, {"detail": detail})


def test_live_at_once_ready_once_the_model_is_checked(model_variants, tmp_path):
    """A model that takes a second or more to load: the worker is live meanwhile, not ready, and
    answers 503 to a picture, then ready and answering."""
    png = pngs(1)[0]
    with served_process(model_variants["slow-to-load"], tmp_path / "log") as (_, url):
        live, ready = request(f"{url}/v2/health/live"), request(f"{url}/v2/health/ready")
        loading = post_file(url, png)
        wait_until_answering(url)
        assert post_file(url, png).status == 200

    assert live.status == 200

    assert (ready.status, ready.json()) == (503, {"detail": "the model is loading; try again in a "
                                                            "few seconds"})
    assert loading.status == 503
