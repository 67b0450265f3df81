"""The model answering now (Served), and the Open Inference Protocol v2 over REST (KServe's;
Triton speaks it too) beside the app's own routes: metadata, liveness, readiness and `infer` on
1 to 256 pictures in the model's input form, [N, H, W, C] FP32 grey levels 0-255 (the model
normalises them), as JSON (not Triton's binary extension), answering each class's probability.
A body is read within the app's limits and parsed in a decode process, as a picture is."""

import asyncio
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request

from app.classifier import Classifier
from app.metadata import ModelInfo
from app.pictures.decode import InputError

MAX_BATCH = 256


async def served(request: Request) -> Classifier:
    """The model answering now, for the whole request; 503 until the first is loaded."""
    if not request.app.state.classifier:
        raise HTTPException(503, "the model is loading; try again in a few seconds")
    return request.app.state.classifier


Served = Annotated[Classifier, Depends(served)]


def pictures(body: bytes, names: tuple[str, str], info: ModelInfo) -> tuple[Any, np.ndarray]:
    """(id, pictures) of a request to a model of `names` (input, output), in a decode process."""
    try:
        request = json.loads(body)
        [given] = request["inputs"]
        pixels = np.asarray(given["data"], np.float32).reshape(given["shape"])
        fits = (given["name"], given["datatype"], [*pixels.shape[1:]]) == (
            names[0], "FP32", [*info.input_shape]) and 0 < len(pixels) <= MAX_BATCH and all(
            asked["name"] == names[1] for asked in request.get("outputs", ()))
    except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, not of this form
        fits = False
    if not fits:
        raise InputError(f"expected an inference request of one input, {names[0]!r}: FP32 of "
                         f"shape [N, {', '.join(map(str, info.input_shape))}] with N from 1 to "
                         f"{MAX_BATCH}, its data as many numbers; the one output is {names[1]!r}")
    if not ((pixels >= 0) & (pixels <= 255)).all():  # NaN too
        raise InputError("the pictures' pixels are grey levels from 0 to 255")
    return request.get("id"), pixels


v2 = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


async def named(classifier: Served, name: str, version: str | None = None) -> Classifier:
    """The model served, if `name` and `version` name it (Classifier.name); else 404."""
    if (name, version or classifier.version) != (classifier.name, classifier.version):
        raise HTTPException(404, f"no model {name}{' ' + version if version else ''} here; this "
                                 f"server serves {classifier.path.name}")
    return classifier


Named = Annotated[Classifier, Depends(named)]


# The server's metadata and health: live while the process answers, ready once a model is.
v2.add_api_route("", lambda: {"name": "mnist-serve", "version": "1", "extensions": []},
                 name="server metadata")
v2.add_api_route("/health/live", lambda: {"live": True}, name="live")
v2.add_api_route("/health/ready", lambda: {"ready": True}, name="ready",
                 dependencies=[Depends(served)])


@v2.get("/models/{name}/ready")
@v2.get("/models/{name}/versions/{version}/ready")
async def model_ready(classifier: Named) -> dict:
    return {"name": classifier.name, "ready": True}


@v2.get("/models/{name}")
@v2.get("/models/{name}/versions/{version}")
async def model_metadata(classifier: Named) -> dict:
    return {"name": classifier.name, "versions": [v for v in [classifier.version] if v],
            "platform": "onnxruntime_onnx", "inputs": [{
                "name": classifier.input_name, "datatype": "FP32",
                "shape": [-1, *classifier.info.input_shape]}],
            "outputs": [{"name": classifier.output_name, "datatype": "FP32",
                         "shape": [-1, len(classifier.info.class_names)]}]}


@v2.post("/models/{name}/infer")
@v2.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, classifier: Named) -> dict:
    """Each class's probability for each picture of the input."""
    names = classifier.input_name, classifier.output_name
    request_id, pixels = await request.app.state.sandbox.run(pictures, await request.body(),
                                                             names, classifier.info)
    probs = await asyncio.to_thread(classifier.probabilities, pixels)  # a batch: off the loop
    request.state.classes = [classifier.info.class_names[i] for i in probs.argmax(axis=1)]
    return {"model_name": classifier.name, "model_version": classifier.version, "outputs": [
        {"name": names[1], "datatype": "FP32", "shape": [*probs.shape],
         "data": probs.ravel().tolist()}], **({"id": request_id} if request_id else {})}
