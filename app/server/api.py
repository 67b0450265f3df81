"""The HTTP API and its page: `POST /predict` (a picture in the multipart field `file`: curl -F
file=@digit.png http://127.0.0.1:8000/predict), `GET /health`, `GET /` (the page), `/docs` and
`/redoc` (offline), HEAD wherever GET, /v2 (inference.py), /metrics (metrics.py). Bad input gets
a 4xx whose JSON `detail` names it, never a 500, nothing of the upload echoed. Pictures are read
in decode processes (pictures/sandbox.py), within limits.py's and settings.py's limits. The
model loads once the server answers, and at SIGHUP, and answers from the next request on."""

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import fastapi_offline
import numpy as np
from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from app.classifier import Classifier, ModelError, answer, load_classifier, model_input
from app.pictures.decode import Damaged, InputError, NotAnImage, TooCostly
from app.pictures.sandbox import Sandbox
from app.server import metrics, registry
from app.server.inference import Served, v2
from app.server.limits import RequestLimits
from app.server.settings import Limits, Settings

STATIC = Path(__file__).parent / "static"
OFFLINE_DOCS = "/static-offline-docs"  # where fastapi-offline serves Swagger UI's and ReDoc's
# ReDoc's sidebar shows Redocly's logo from their CDN whatever its options say: pointed home.
REDOC_BUNDLE = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
# The page runs its own script and style only, and tells no other site where it was.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "object-src 'none'; base-uri 'none'; "
                                           "frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
log = logging.getLogger("uvicorn.error")


class Ranked(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    """What `mnist-predict --json` prints for one picture, without `file`. A picture the model
    refuses (for a digit model, what no digit looks like: "not a digit: a dash") gets a 200 with
    `refusal` saying why, no `label` or `probability`: the model answered, and that is its
    answer."""
    label: str | None
    probability: float | None
    refusal: str | None
    top: list[Ranked]


class Health(BaseModel):
    """Which model answers, and what it takes: enough for a client (the page) to follow it."""
    status: str
    model: str
    version: str  # the registry's (registry.py), or "" for a file
    sha256: str
    dataset: str
    family: str
    class_names: list[str]
    input_shape: tuple[int, int, int]
    prepare: str  # digit, clothing or picture (app/metadata.py)
    refusal: str  # digit or uncertainty


class Problem(BaseModel):
    """Every 4xx and 5xx the app answers: what is wrong, in a sentence."""
    detail: str


router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


@router.get("/health")
async def health(classifier: Served) -> Health:
    """Which model answers: its file name, version and SHA-256, family, dataset and classes."""
    return Health(status="ok", model=classifier.path.name,  # no paths of the host
                  version=classifier.version, sha256=classifier.sha256,
                  **classifier.info.model_dump(exclude={"refusal"}),
                  refusal=classifier.info.refusal.kind)


# What /predict may answer instead of a Prediction, for the OpenAPI schema and /docs.
PREDICT_PROBLEMS = {code: {"model": Problem, "description": why} for code, why in (
    (400, "not a PNG, JPEG, BMP, GIF, WebP or TIFF picture, or a damaged one"),
    (408, "the upload stalled, or took over a minute"),
    (413, "an upload over 10 MB, or a picture over its limits of size, memory or CPU time"),
    (422, "no digit found in the picture (a digit model), or no file in the form"),
    (500, "the model gave no probabilities for this picture"),
    (503, "the server is busy: try again in a few seconds"))}


@router.post("/predict", responses=PREDICT_PROBLEMS)
async def predict(request: Request, classifier: Served,
                  file: Annotated[UploadFile, File(description="a picture")]) -> Prediction:
    """The most likely class of the picture in `file`, and every class ranked."""
    if not file.size:
        raise HTTPException(400, "the upload is empty")
    pixels = await request.app.state.sandbox.run(model_input, file.file, classifier.info)
    probs = classifier.probabilities(pixels[np.newaxis])[0]
    result = answer(pixels, probs, classifier, len(classifier.info.class_names))
    request.state.refusal = result["refusal"]  # for the metrics and the log (metrics.py)
    request.state.classes = [] if result["refusal"] else [result["label"]]
    return Prediction(**result)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}",
                          title=f"{request.app.title} - ReDoc", redoc_js_url=f"{root}/redoc.js",
                          with_google_fonts=False,
                          redoc_favicon_url=f"{root}{OFFLINE_DOCS}/favicon.png")


@router.get("/redoc.js", include_in_schema=False)
async def redoc_js(request: Request) -> StreamingResponse:
    """In pieces, so that a client that does not read holds 64 KB of it, not the whole MB."""
    bundle = request.app.state.redoc_bundle
    return StreamingResponse((bundle[i:i + 2**16] for i in range(0, len(bundle), 2**16)),
                             media_type="text/javascript",
                             headers={"content-length": str(len(bundle))})


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """What is wrong in one string, echoing nothing (FastAPI's own 422 lists every error with its
    input: a text field of 1 MB came back as 6 MB)."""
    first = error.errors()[0]
    if tuple(first["loc"]) == ("body", "file"):
        detail = ("no picture: send it in the multipart field `file` (curl -F file=@digit.png)"
                  if first["type"] == "missing" else
                  "the multipart field `file` must be a file, not text")
    else:
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return JSONResponse({"detail": detail}, status_code=422)


# What a picture, a tensor or the model cannot be, and its answer (the first that matches).
REFUSALS = (((NotAnImage, Damaged), 400), (TooCostly, 413), (InputError, 422),
            (TimeoutError, 503), ((ModelError, ChildProcessError), 500))  # NaN, say, or a crash
LIMITS = {"CPU": "cpu", "pixels": "pixels", "MB": "memory", "memory": "memory"}  # in a 413


async def refused(request: Request, error: Exception) -> JSONResponse:
    """REFUSALS' answer, a decode limit reached noted for the metrics (metrics.py)."""
    status, detail = next(code for kinds, code in REFUSALS if isinstance(error, kinds)), str(error)
    if status == 413:
        request.state.limit = next((v for k, v in LIMITS.items() if k in detail), "other")
    if status == 503:  # past the decode deadline: the server is busy, or its clients are
        request.state.limit = "deadline"
        detail = (f"the picture was not read within {request.app.state.sandbox.deadline_s:g} s: "
                  "the server is busy; try again in a few seconds")
    return JSONResponse({"detail": detail}, status)


async def switch(api: FastAPIOffline, load: Callable[[], Classifier]) -> None:
    """The model `load` gives, checked, answers from the next request on; one that cannot be
    served is refused in one line, and the one before goes on answering."""
    async with api.state.switching:
        try:
            api.state.classifier = classifier = await asyncio.to_thread(load)
        except (ModelError, registry.RegistryError) as error:
            before = api.state.classifier
            metrics.LOADS.labels("refused").inc()
            return log.error("model refused (still serving %s): %s", before and before.path.name,
                             error)
        metrics.LOADS.labels("served").inc()
        metrics.MODEL.info({"name": classifier.name, "version": classifier.version,
                            "sha256": classifier.sha256, "family": classifier.info.family,
                            "dataset": classifier.info.dataset})
        log.info("serving %s (SHA-256 %s)", classifier.path.name, classifier.sha256)


def create_app(settings: Settings | None = None, limits: Limits | None = None) -> FastAPIOffline:
    """The app, from `settings` or else from the environment (settings.py); its decode processes
    start, and its model loads, with it."""
    settings, limits = settings or Settings(), limits or Limits()

    @asynccontextmanager
    async def lifespan(api: FastAPIOffline) -> AsyncIterator[dict]:
        api.state.sandbox = sandbox = Sandbox(limits.decode_processes, limits.decode_deadline_s)
        loop, parent = asyncio.get_running_loop(), multiprocessing.parent_process()
        if parent:  # a worker of mnist-serve: it stops when its server ends, even killed
            loop.add_reader(parent.sentinel, lambda: (loop.remove_reader(parent.sentinel),
                                                      signal.raise_signal(signal.SIGTERM)))
        # MODEL, or the version it links to (registry.py). At SIGHUP a server of one process
        # fetches and checks the model itself; a worker loads what mnist-serve fetched (main.py).
        # The tasks are kept: asyncio holds them weakly.
        current = lambda: load_classifier(settings.model.resolve() if settings.artifact  # noqa: E731
                                          else settings.model)
        if threading.current_thread() is threading.main_thread():  # where signals arrive
            reload = current if parent else lambda: registry.prepare(settings)
            loop.add_signal_handler(signal.SIGHUP, lambda: setattr(
                api.state, "reloading", asyncio.ensure_future(switch(api, reload))))
        api.state.loading = asyncio.ensure_future(switch(api, current))
        yield {"limits": limits}  # for the server's protocol (main.py)
        sandbox.close()

    api = FastAPIOffline(title="MNIST classifier", version="1", redoc_url=None,
                         static_url=OFFLINE_DOCS, lifespan=lifespan,
                         description="Predicts the class of an image with the pipeline's "
                                     "exported ONNX model.")
    api.state.classifier, api.state.switching = None, asyncio.Lock()
    api.state.redoc_bundle = REDOC_BUNDLE.read_text(encoding="utf-8").replace(
        REDOC_CDN_LOGO, f"{OFFLINE_DOCS}/favicon.png").encode()
    api.include_router(router)
    api.include_router(v2)
    if settings.metrics:
        api.include_router(metrics.router)
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    api.add_exception_handler(RequestValidationError, invalid_request)
    for kind in (InputError, TimeoutError, ModelError, ChildProcessError):
        api.add_exception_handler(kind, refused)
    api.add_middleware(RequestLimits, limits=limits)
    api.add_middleware(metrics.observed, routes=api.routes, settings=settings)
    return api

