"""What the server reads from its environment (Settings) and every limit it puts on a client, in
one place. The limits are what the tests and the benchmark check, not read from the environment
(docs/serving.md says why each has its value): code that needs others passes its own Limits to
create_app, as the tests do."""

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
    # A head (line and headers): a browser's is under 2 KB; 16 KB is nginx's default and h11's.
    max_header_bytes: int = 16 * 2**10
    # A whole head must arrive within this of the connection's opening or the last answer:
    # a client that sends a byte a second (slowloris), or nothing, is cut off.
    head_timeout_s: float = 10
    keep_alive_s: float = 5  # idle between requests (uvicorn's default): browsers reuse sooner
    body_progress_s: float = 10  # an upload's longest gap ...
    upload_deadline_s: float = 60  # ... and its whole: 10 MB at 1.4 Mbit/s, a slow uplink
    # An answer no byte of which has left for this long is dropped: the client does not read.
    send_timeout_s: float = 5
    # Open connections, held answers among them: far above a page's users (a browser opens at
    # most 6 to a host), far below the usual 1024 open files. Past it: 503, closed.
    max_connections: int = 256
    # Uploads received or waiting for a decode process, each at most 1 MB in memory (Starlette
    # spools the rest to a temporary file): 32 MB of memory, 320 MB of disk. Past it: 503.
    max_uploads: int = 32
    # Decode processes (pictures/sandbox.py): two, so that a costly picture leaves one free.
    decode_processes: int = Field(2, ge=1)
    # From an upload's arrival at the decode processes to its answer: past it 503, and its
    # process, if it has one, is killed.
    decode_deadline_s: float = 10
    # From a stop signal to the server's end, whatever its clients do (uvicorn's setting).
    stop_grace_s: int = 5


# Workers when WORKERS is not set: one per core it may use (its affinity, which a container's
# cpuset narrows; the GIL holds a worker to one), at most 4 (each takes up to 500 MB).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    """mnist-serve's settings, each optional: a flag, else an environment variable of its name
    in capitals (docs/serving.md)."""
    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True,
                                      cli_prog_name="mnist-serve", cli_kebab_case=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    workers: int = Field(min(CORES, 4), ge=1)
    model: Path = MODEL_FILE
    artifact: str | None = None  # NAME@VERSION, NAME (its latest) or NAME#STAGE (registry.py)
    registry: str = "."  # the git repository of the artifact: a path or a URL
    metrics: bool = True  # /metrics, and counting for it
    log_requests: bool = False  # a JSON line per request on stderr ...
    log_client_address: bool = False  # ... with the client's address
