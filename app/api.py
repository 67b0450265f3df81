"""The HTTP API and the draw-a-digit page: FastAPI under uvicorn, the exported ONNX model inside.

    make serve                                  # http://127.0.0.1:8000 (HOST=..., PORT=...)
    curl -F file=@digit.png http://127.0.0.1:8000/predict

Routes: `POST /predict` (an image in the multipart field `file`), `GET /health` (which model is
loaded), `GET /` (the page), `/docs` and `/redoc` (served from the app itself, so they work
offline). Bad input never costs a 500: each kind gets a 4xx and a JSON `detail` naming it.
Uploads over MAX_UPLOAD_BYTES are refused with 413 from their Content-Length, or as soon as
the body passes the limit, before it is read whole.
"""

import hashlib
import io
import os
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import File, HTTPException, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from app.model import MODEL_FILE, load_classifier
from app.predict import INPUT_ERRORS, ranked
from app.transform import FORMATS, MAX_PIXELS, InputError, TooManyPixels, read_image, to_model_form

MAX_UPLOAD_BYTES = 10 * 2**20  # a phone photo is 2-8 MB; a drawing from the page a few KB
STATIC = Path(__file__).parent / "static"


class Ranked(BaseModel):
    digit: str
    probability: float


class Prediction(BaseModel):
    """The same object `python -m app.predict --json` prints for one image, without `file`."""
    digit: str
    probability: float
    top: list[Ranked]


class Health(BaseModel):
    status: str
    model: str
    sha256: str
    dataset: str
    family: str
    class_names: list[str]


class UploadLimit:
    """ASGI middleware: a POST body over `limit` bytes gets 413 before it is read whole. A
    declared Content-Length is checked first; a chunked body is counted as it arrives."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")  # the server checked it
        if int(length) > self.limit:
            body = b'{"detail":"the upload is over the %d MB limit"}' % (self.limit // 2**20)
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(413, f"the upload is over the {self.limit // 2**20} MB limit")
            return message

        await self.app(scope, counting_receive, send)


class BodyTooLarge(HTTPException):
    """Raised while the body arrives. An HTTPException, which FastAPI answers as it is (its
    form parsing turns anything else into a 400 "error parsing the body")."""


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def create_app(model_file=None):
    """The app, with the model loaded once (ModelError if it cannot be). The model path comes
    from the argument, else $MODEL, else model/model.onnx."""
    classifier = load_classifier(model_file or os.environ.get("MODEL") or MODEL_FILE)
    api = FastAPIOffline(title="MNIST classifier", version="1",
                         description="Predicts the class of an image with the pipeline's "
                                     "exported ONNX model.")
    api.mount("/static", StaticFiles(directory=STATIC), name="static")
    health = Health(status="ok", model=classifier.path.name,  # no paths of the host
                    sha256=file_sha256(classifier.path), dataset=classifier.dataset,
                    family=classifier.family, class_names=classifier.class_names)

    @api.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @api.get("/health")
    async def get_health() -> Health:
        """Which model is loaded: its file name and SHA-256, family, dataset and classes."""
        return health

    @api.post("/predict", responses={400: {}, 413: {}, 422: {}})
    async def predict(file: Annotated[UploadFile, File(description="PNG, JPEG or BMP")]
                      ) -> Prediction:
        """The most likely class of the image in `file`, and every class ranked."""
        data = await file.read()
        if not data:
            raise HTTPException(400, "the upload is empty")
        try:
            pixels = to_model_form(read_image(io.BytesIO(data)), classifier.dataset)
        except UnidentifiedImageError:
            raise HTTPException(400, f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} "
                                     "image") from None
        except (TooManyPixels, Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HTTPException(413, f"the image is over the {MAX_PIXELS // 1_000_000}-"
                                     "megapixel limit") from None
        except InputError as e:  # no digit found
            raise HTTPException(422, str(e)) from None
        except INPUT_ERRORS as e:  # truncated or damaged image data
            raise HTTPException(400, f"cannot read the image: {e}") from None
        probs = classifier.probabilities(pixels[np.newaxis])[0]
        # Every class, most likely first: the page draws a bar for each.
        top = ranked(probs, classifier.class_names, len(classifier.class_names))
        return Prediction(**top[0], top=top)

    return UploadLimit(api, MAX_UPLOAD_BYTES)


def main():
    """`python -m app.api`: serve on $HOST:$PORT (default 127.0.0.1:8000) with $WORKERS
    processes (default 1), after checking the model loads (a clear line if it does not)."""
    import uvicorn

    from app.model import ModelError

    try:
        app = create_app()
    except ModelError as e:
        raise SystemExit(f"error: {e}") from None
    host = os.environ.get("HOST", "127.0.0.1")
    port, workers = os.environ.get("PORT", "8000"), os.environ.get("WORKERS", "1")
    if not (port.isdigit() and int(port) < 65536 and workers.isdigit() and int(workers) >= 1):
        raise SystemExit(f"error: PORT={port!r} WORKERS={workers!r}: expected a port number "
                         "and a number of worker processes")
    port, workers = int(port), int(workers)
    if workers > 1:  # each worker process builds its own app, so uvicorn needs the factory
        uvicorn.run("app.api:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level="warning")
    else:
        uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
