"""`mnist-serve` (python -m app.server.main): the app on uvicorn with its h11 parser.

uvicorn's own settings: h11's limit on a head, keep-alive, a grace period after a stop signal,
no `server` banner, and its workers, sharing one socket bound here (no other program can bind
the port beside them). LimitedH11Protocol adds what uvicorn has no setting for: a deadline for
a whole head (408); a send timeout (an answer that has not moved for send_timeout_s: reset);
431 for a head too large that arrives in pieces; a cap on connections, held answers among them
(503); an end to a connection whose upload was refused, or still arrives at a stop signal. At
SIGHUP the model is fetched and checked here, then each worker switches to it (api.py):
uvicorn's own SIGHUP replaces the workers, and requests crossing a closed connection fail."""

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import h11
import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from app.classifier import ModelError
from app.server.limits import headers_too_large
from app.server.registry import RegistryError, prepare
from app.server.settings import Limits, Settings

LINGER_S = 1  # how long a refused client has to read its answer before the socket is closed
log = logging.getLogger("uvicorn.error")


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits uvicorn has no setting for (above)."""
    head_timer = send_timer = None
    refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.limits = self.app_state.get("limits") or Limits()  # what the app's lifespan gives
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, "the server has too many connections open; try again in a few "
                             "seconds")
        else:
            self.expect_head()

    def expect_head(self) -> None:
        """From now, the next request's head must arrive whole within head_timeout_s."""
        if self.head_timer:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.limits.head_timeout_s,
                                               self.head_overdue, self.cycle)

    def head_overdue(self, cycle: object) -> None:
        if self.cycle is not cycle or self.transport.is_closing():
            return  # a request came in time
        if self.conn.trailing_data[0]:  # part of a head
            self.refuse(408, "the request's head did not arrive within "
                             f"{self.limits.head_timeout_s:g} s")
        else:
            self.transport.close()

    def pause_writing(self) -> None:
        """The client has stopped reading: unless it starts again within send_timeout_s, the
        connection is reset, and what it has not read (in the kernel too) dropped."""
        super().pause_writing()
        self.send_timer = self.loop.call_later(self.limits.send_timeout_s, self.reset)

    def reset(self) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.send_timer:
            self.send_timer.cancel()

    def data_received(self, data: bytes) -> None:
        if not self.refused:  # a refused client's bytes are read and dropped (linger)
            super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:  # a refused upload: no further request
            self.linger()
        elif self.cycle.response_complete:  # unless a pipelined request has already started
            self.expect_head()

    def shutdown(self) -> None:
        """At a stop signal: an upload still arriving is refused now, not waited for."""
        if self.cycle and not self.cycle.response_started and \
                self.conn.their_state is h11.SEND_BODY:
            self.refuse(503, "the server is stopping; try again in a few seconds")
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head_timer, self.send_timer):
            if timer:
                timer.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """For every head h11 cannot parse: one longer than its limit is a head too large."""
        if len(self.conn.trailing_data[0]) > self.config.h11_max_incomplete_event_size:
            self.refuse(431, headers_too_large(self.limits))
        else:
            self.refuse(400, "not a valid HTTP/1.1 request")

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with `detail` (JSON, as the app's refusals), then linger."""
        body = json.dumps({"detail": detail}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, HTTPStatus(status).phrase.encode(), len(body), body))
        self.linger()

    def linger(self) -> None:
        """End our side, drop what the client still sends, close after LINGER_S: closing a
        socket with unread bytes would send a reset, which can overtake the answer."""
        self.refused = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def server_config(app: object, settings: Settings, limits: Limits,
                  **options: object) -> uvicorn.Config:
    """No access log: it would keep every client's address (a reverse proxy logs what a
    deployment needs), for a tenth of the CPU of a small upload."""
    return uvicorn.Config(app, host=settings.host, port=settings.port, http=LimitedH11Protocol,
                          ws="none", access_log=False, server_header=False,
                          timeout_keep_alive=limits.keep_alive_s,
                          timeout_graceful_shutdown=limits.stop_grace_s,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **options)


def reload(settings: Settings, workers: list) -> None:
    """The model fetched and checked, then loaded by each worker; else one line, and the workers
    go on with theirs."""
    try:
        prepare(settings)
    except (ModelError, RegistryError) as error:
        return log.error("model refused (still serving the one before): %s", error)
    for worker in workers:
        os.kill(worker.pid, signal.SIGHUP)


def main(argv: list[str] | None = None) -> None:
    """Serve on $HOST:$PORT with $WORKERS processes, once the model loads and the port is
    free (else a line that says why)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until a reload can be done (below, api.py)
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as folder:  # models, counts
        serve(Path(folder), argv)


def serve(folder: Path, argv: list[str] | None) -> None:
    try:
        settings = CliApp.run(Settings, cli_args=argv)  # flags, else the environment
        if settings.artifact:  # MODEL: a link to the version fetched (registry.py)
            settings = settings.model_copy(update={"model": folder / "model.onnx"})
        os.environ.update({name.upper(): str(value) for name, value in  # for the workers
                           settings.model_dump(exclude_none=True).items()})
        prepare(settings)  # each worker loads its own; a bad one stops us here
    except ValidationError as e:
        error = e.errors()[0]
        sys.exit(f"error: {str(error['loc'][0]).upper()}={error['input']!r}: "
                 f"{error['msg'].lower()}")
    except (ModelError, RegistryError) as error:
        sys.exit(f"error: {error}")
    if settings.metrics:  # where Prometheus' client adds up the workers' counts, emptied
        counts = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", f"{folder}/metrics"))
        counts.mkdir(parents=True, exist_ok=True)
        for stale in counts.glob("*.db"):
            stale.unlink()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family)
    except OSError as error:
        sys.exit(f"error: cannot listen on {settings.host}:{settings.port}: "
                 f"{os.strerror(error.errno) if error.errno else error}")
    config = server_config("app.server.api:create_app", settings, Limits(), factory=True,
                           workers=settings.workers, log_level="info")
    host, port = sock.getsockname()[:2]
    log.info("serving on http://%s:%d with %d worker%s (Ctrl-C to stop)",
             f"[{host}]" if ":" in host else host, port, settings.workers,
             "s" * (settings.workers > 1))
    if settings.workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    supervisor = Multiprocess(config, sockets=[sock])
    reloads = ThreadPoolExecutor(1)  # one at a time, off the supervisor's loop
    signal.signal(signal.SIGHUP, lambda *_: reloads.submit(reload, settings, supervisor.processes))
    supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
