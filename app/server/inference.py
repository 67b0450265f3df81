"""How the routes run the model: the one answering now (`Served`: a reload switches it between
requests), an upload read in a decode process (`decoded`, pictures/sandbox.py), and the Open
Inference Protocol v2 over REST (KServe's, which Triton speaks too) beside the app's own routes:
server and model metadata, liveness and readiness, and `infer` on 1 to 256 pictures in the
model's input form, [N, H, W, C] FP32 grey levels 0-255 (the model normalises them itself),
answering each class's probability. Tensors as JSON, the protocol's own form (not Triton's binary
extension); the body is read within the app's limits, then parsed in a decode process.
"""

import asyncio
import math
from collections.abc import Callable
from typing import Annotated, Any, BinaryIO

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError

from app.classifier import Classifier, ModelError
from app.metadata import ModelInfo
from app.pictures.decode import Damaged, InputError, NotAnImage, TooCostly

MAX_BATCH = 256
REFUSALS = (((NotAnImage, Damaged), 400), (TooCostly, 413), (InputError, 422))  # first match
LIMITS = {"CPU": "cpu", "pixels": "pixels", "MB": "memory", "memory": "memory"}  # in a 413


async def served(request: Request) -> Classifier:
    """The model answering now, for the whole request; 503 until the first is loaded."""
    if not request.app.state.classifier:
        raise HTTPException(503, "the model is loading; try again in a few seconds")
    return request.app.state.classifier


Served = Annotated[Classifier, Depends(served)]


async def decoded(request: Request, job: Callable, data: bytes | BinaryIO, *args: Any) -> Any:
    """job(data, *args) in a decode process: its value, or the HTTPException that says what is
    wrong (a decode limit reached is noted for the metrics)."""
    sandbox = request.app.state.sandbox
    try:
        return await sandbox.run(job, data, *args)
    except InputError as error:
        status = next(code for kinds, code in REFUSALS if isinstance(error, kinds))
        if status == 413:
            request.state.limit = next(v for k, v in LIMITS.items() if k in str(error))
        raise HTTPException(status, str(error)) from None
    except TimeoutError:  # the server is busy, or its clients are
        request.state.limit = "deadline"
        raise HTTPException(503, f"the picture was not read within {sandbox.deadline_s:g} s: "
                                 "the server is busy; try again in a few seconds") from None
    except ChildProcessError as error:  # a crash: no answer
        raise HTTPException(500, str(error)) from None


def probabilities(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    try:
        return classifier.probabilities(pixels)
    except ModelError as error:  # NaN, say
        raise HTTPException(500, str(error)) from None


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list  # row-major, flat or nested
    parameters: dict | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=1)
    outputs: list[dict] | None = None
    parameters: dict | None = None


def pictures(body: bytes, names: tuple[str, str], info: ModelInfo) -> tuple[str | None, Any]:
    """(id, pictures as float32) of an inference request's body for a model of `names` (input,
    output); else InputError. What a decode process runs."""
    try:
        request = InferenceRequest.model_validate_json(body)
        given = request.inputs[0]
        pixels = np.asarray(given.data, np.float32)
    except ValidationError as e:
        error = e.errors()[0]
        raise InputError(f"not an inference request: {'.'.join(map(str, error['loc']))} "
                         f"{error['msg'].lower()}".replace(":  ", ": ")) from None
    except (ValueError, TypeError):
        raise InputError("the input's data are not numbers in rows of one length") from None
    shape = [*info.input_shape]
    if given.name != names[0] or given.datatype != "FP32" or given.shape[1:] != shape \
            or not 1 <= given.shape[0] <= MAX_BATCH or pixels.size != math.prod(given.shape):
        raise InputError(f"the model takes one input, {names[0]!r}: FP32 of shape [N, "
                         f"{', '.join(map(str, shape))}], N from 1 to {MAX_BATCH}, its data "
                         "as many numbers as its shape says")
    if any(asked.get("name") != names[1] for asked in request.outputs or ()):
        raise InputError(f"the model has one output, {names[1]!r}")
    pixels = pixels.reshape(given.shape)
    if not ((pixels >= 0) & (pixels <= 255)).all():
        raise InputError("the pictures' pixels are grey levels from 0 to 255")
    return request.id, pixels


v2 = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def named(classifier: Classifier, name: str, version: str | None) -> tuple[str, list[str]]:
    """The served model's output name and versions if `name` (and `version`) name it; else 404.
    Its name and version are its file's, NAME@VERSION.onnx (registry.py)."""
    served_name, _, served_version = classifier.path.stem.partition("@")
    if (name, version or served_version) != (served_name, served_version):
        raise HTTPException(404, f"no model {name} {version or ''} here: this server serves "
                                 f"{served_name} {served_version}".replace("  ", " "))
    return classifier.session.get_outputs()[0].name, [served_version] if served_version else []


@v2.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": "mnist-serve", "version": request.app.version, "extensions": []}


@v2.get("/health/live")
async def live() -> dict:
    """Whether the process answers: always, while it runs."""
    return {"live": True}


@v2.get("/health/ready")
async def ready(classifier: Served) -> dict:
    """Whether a model is loaded and checked (503 until then)."""
    return {"ready": True}


@v2.get("/models/{name}/ready")
@v2.get("/models/{name}/versions/{version}/ready")
async def model_ready(classifier: Served, name: str, version: str | None = None) -> dict:
    named(classifier, name, version)
    return {"name": name, "ready": True}


@v2.get("/models/{name}")
@v2.get("/models/{name}/versions/{version}")
async def model_metadata(classifier: Served, name: str, version: str | None = None) -> dict:
    output, versions = named(classifier, name, version)
    return {"name": name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": [{"name": classifier.input_name, "datatype": "FP32",
                        "shape": [-1, *classifier.info.input_shape]}],
            "outputs": [{"name": output, "datatype": "FP32",
                         "shape": [-1, len(classifier.class_names)]}]}


@v2.post("/models/{name}/infer")
@v2.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, classifier: Served, name: str,
                version: str | None = None) -> dict:
    """Each class's probability for each picture of the input tensor."""
    output, versions = named(classifier, name, version)
    request_id, pixels = await decoded(request, pictures, await request.body(),
                                       (classifier.input_name, output), classifier.info)
    probs = await asyncio.to_thread(probabilities, classifier, pixels)  # a batch: off the loop
    request.state.classes = [classifier.class_names[i] for i in probs.argmax(axis=1)]
    return {"model_name": name, "model_version": "".join(versions), "outputs": [
        {"name": output, "datatype": "FP32", "shape": list(probs.shape),
         "data": probs.ravel().tolist()}], **({"id": request_id} if request_id else {})}
