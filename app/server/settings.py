"""What the server reads from its environment, and every limit it puts on a client, in one place.

    MODEL=model/model.onnx HOST=127.0.0.1 PORT=8000 WORKERS=2 mnist-serve

The limits are not read from the environment: they are what the tests and the benchmark check,
and docs/serving.md says why each has its value. A deployment that needs others passes its own
Limits to create_app (as the tests do, with short timeouts).
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.classifier import MODEL_FILE
from app.pictures.decode import MAX_FILE_BYTES


class Limits(BaseModel):
    """What one worker process allows each client, and all of them together."""
    model_config = ConfigDict(frozen=True)

    max_upload_bytes: int = MAX_FILE_BYTES
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
    # An answer the client does not read: the connection is closed when no byte of it has
    # left for this long (a phone that lost its signal catches up within seconds).
    send_timeout_s: float = 5
    # Open connections, held answers among them. Far above what the page's users need (a
    # browser opens at most 6 to a host), far below the usual limit of 1024 open files.
    # Past it: 503, and the socket closed.
    max_connections: int = 256
    # Uploads being received or waiting for a decode process. Each keeps at most 1 MB in
    # memory (Starlette spools the rest to a temporary file): all of them, 32 MB of memory
    # and 320 MB of disk at most. Past it: 503.
    max_uploads: int = 32
    # Processes that decode pictures (pictures/sandbox.py), each bounded in memory and CPU
    # time. Two, so that a costly picture leaves one for the others.
    decode_processes: int = Field(2, ge=1)
    # From an upload's arrival at the decode processes to its answer: past this the client
    # gets a 503, and its process, if it has one, is killed.
    decode_deadline_s: float = 10
    # From a stop signal to the end of the server, whatever its clients do (uvicorn's
    # timeout_graceful_shutdown).
    stop_grace_s: int = 5


def cores() -> int:
    """The CPUs this process may run on: its affinity, which a container's cpuset narrows."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Worker processes when WORKERS is not set: one per core, since Python's GIL holds each to one
# core. At most 4: each, with its decode processes, takes up to 500 MB.
DEFAULT_MAX_WORKERS = 4


class Settings(BaseSettings):
    """HOST, PORT, WORKERS and MODEL from the environment, each optional."""
    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    workers: int = Field(default_factory=lambda: min(cores(), DEFAULT_MAX_WORKERS), ge=1)
    model: Path = MODEL_FILE
