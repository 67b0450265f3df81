"""What the server reads from its environment, and every limit it puts on a client, in one place.

    MODEL=model/model.onnx HOST=127.0.0.1 PORT=8000 WORKERS=2 mnist-serve

The limits are not read from the environment: they are what the tests and the benchmark check,
and docs/serving.md says why each has its value. A deployment that needs others builds a
Settings in code (as the tests do, with short timeouts).
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.classifier import MODEL_FILE


class Limits(BaseModel):
    """What one worker process allows each client, and all of them together."""
    model_config = ConfigDict(frozen=True)

    # A phone photo is 2-8 MB; a drawing from the page a few KB.
    max_upload_bytes: int = 10 * 2**20
    # The request line and headers. A browser sends under 2 KB, cookies included; 16 KB is
    # nginx's default (4 buffers of 8 KB) and h11's.
    max_header_bytes: int = 16 * 2**10
    # The whole head of a request must arrive within this, counted from the connection's
    # opening or the previous answer: a client that sends a byte a second (slowloris) or
    # nothing at all is cut off. A head is under 2 KB: a second's work on the slowest link.
    head_timeout_s: float = 10
    # An idle connection between two requests is closed after this (uvicorn's default):
    # browsers reuse a connection within a second or two, or never.
    keep_alive_s: float = 5
    # An upload must keep coming: no gap longer than this between two pieces ...
    body_progress_s: float = 10
    # ... and all of it within this: 10 MB at 1.4 Mbit/s, a slow mobile uplink.
    upload_deadline_s: float = 60
    # Open connections. Far above what the page's users need (a browser opens at most 6 to a
    # host), far below the usual limit of 1024 open files. Past it: 503, and the socket closed.
    max_connections: int = 256
    # Uploads being received or waiting for the pool. Each keeps at most 1 MB in memory
    # (Starlette spools the rest to a temporary file), so all of them together stay under
    # 32 MB of memory and 320 MB of disk. Past it: 503.
    max_uploads: int = 32
    # Threads that decode and classify, off the event loop. Two, so that a costly picture (a
    # few seconds at worst) leaves one for the others; the workers, one per core, use the
    # cores. Each decode may hold decode.MAX_DECODE_BYTES, so this bounds the memory too.
    pool_threads: int = Field(2, ge=1)
    # From an upload's arrival at the pool to its answer: past this the client gets a 503
    # and the decode stops at its next check. A worst-case image the limits let through
    # decodes in about a second here.
    decode_deadline_s: float = 10


def cores():
    """The CPUs this process may run on: its affinity, which a container's cpuset narrows."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Worker processes when WORKERS is not set: one per core, since Python's GIL holds each to one
# core (docs/serving.md: one worker misses 400 requests/s here, two pass it). At most 4: each
# holds about 120 MB at rest and up to 500 MB under load, and more is a choice to make
# knowingly.
DEFAULT_MAX_WORKERS = 4


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    workers: int = Field(default_factory=lambda: min(cores(), DEFAULT_MAX_WORKERS), ge=1)
    model: Path = MODEL_FILE
    limits: Limits = Limits()


class SettingsError(ValueError):
    """A setting from the environment that cannot be used; the message says which, in a line."""


def settings_from_env(environ=os.environ):
    """Settings from HOST, PORT, WORKERS and MODEL, each optional."""
    given = {key.lower(): environ[key] for key in ("HOST", "PORT", "WORKERS", "MODEL")
             if environ.get(key)}
    try:
        return Settings(**given)
    except ValidationError as e:
        error = e.errors()[0]
        name = str(error["loc"][0]).upper()
        raise SettingsError(f"{name}={given.get(name.lower())!r}: {error['msg'].lower()}") from None
