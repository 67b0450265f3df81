"""Serve the app: uvicorn with its h11 parser, and the connection limits uvicorn leaves out.

    mnist-serve                       # or python -m app.server.main; HOST, PORT, WORKERS, MODEL

uvicorn closes an idle connection only after a first answer; it never times out a request's
head, so a client that sends one byte a second holds a connection forever (slowloris); it
answers a head over h11's size limit with a plain-text 400; and past `limit_concurrency` it
keeps accepting connections that never send a request. LimitedH11Protocol adds:

- a head deadline: a request's head must arrive whole within `head_timeout_s` of the
  connection opening or of the previous answer, else the connection is closed (with a 408 if
  part of a head came);
- 431 for a head over `max_header_bytes` that arrives in pieces (app/server/limits.py refuses one
  that arrives whole);
- a cap of `max_connections`: the next one gets a 503 and is closed;
- an end to a connection whose request was answered before its body was all read (a refused
  upload): it cannot carry another request.
Every refusal is JSON with a string `detail`, sent before a lingering close (the client's
unread bytes are drained for a second, so that it reads the answer rather than a reset).
docs/serving.md says why uvicorn and h11, with the measurements.

With several workers (WORKERS, one per core by default), each listens on a socket of its own,
bound to the same port (SO_REUSEPORT), and the kernel spreads new connections among them.
uvicorn would give them one socket to share, from which the worker that wakes first takes a
whole burst of new connections: one benchmark run of two workers served 211 requests/s where
the next served 824, all of the load generator's connections having gone to one worker. The
price (docs/serving.md): connections waiting in a worker's queue when it exits are reset, and
until the first worker listens, another program may take the port (the workers then stop the
server with one line) or a second mnist-serve share it.
"""

import logging
import socket
import sys
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from app.classifier import ModelError
from app.server.api import create_app
from app.server.limits import headers_too_large, problem
from app.server.settings import SettingsError, settings_from_env

LINGER_S = 1  # how long a refused client has to read its answer before the socket is closed
log = logging.getLogger("uvicorn.error")


class ServerConfig(uvicorn.Config):
    """uvicorn's Config with the app's Limits, which each connection's protocol reads."""

    def __init__(self, app, limits, **options):
        super().__init__(app, http=LimitedH11Protocol, ws="none",  # the app has no WebSocket
                         timeout_keep_alive=limits.keep_alive_s,
                         h11_max_incomplete_event_size=limits.max_header_bytes, **options)
        self.limits = limits


class LimitedH11Protocol(H11Protocol):
    head_timer = None
    refused = False

    def connection_made(self, transport):
        super().connection_made(transport)
        if len(self.connections) > self.config.limits.max_connections:
            self.refuse(503, "the server has too many connections open; try again in a few "
                             "seconds")
        else:
            self.expect_head()

    def expect_head(self):
        """From now, the next request's head must arrive whole within head_timeout_s."""
        if self.head_timer:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.config.limits.head_timeout_s,
                                               self.head_overdue, self.cycle)

    def head_overdue(self, cycle):
        if self.cycle is not cycle or self.transport.is_closing():
            return  # a request came in time
        if self.conn.trailing_data[0]:  # part of a head
            self.refuse(408, "the request's head did not arrive within "
                             f"{self.config.limits.head_timeout_s:g} s")
        else:
            self.transport.close()

    def data_received(self, data):
        if not self.refused:  # a refused client's bytes are read and dropped (linger)
            super().data_received(data)

    def on_response_complete(self):
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:  # answered before the body was all read
            self.linger()  # (a refused upload): the connection cannot carry another request
        elif self.cycle.response_complete:  # unless a pipelined request has already started
            self.expect_head()

    def connection_lost(self, exc):
        if self.head_timer:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg):
        """What uvicorn sends for every head h11 cannot parse; one left longer than h11's
        limit in its buffer is a head too large rather than a malformed one."""
        if len(self.conn.trailing_data[0]) > self.config.h11_max_incomplete_event_size:
            self.refuse(431, headers_too_large(self.config.limits))
        else:
            self.refuse(400, "not a valid HTTP/1.1 request")

    def refuse(self, status, detail):
        """Answer `status` with `detail`, then linger."""
        body = problem(detail)
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, HTTPStatus(status).phrase.encode(), len(body), body))
        self.linger()

    def linger(self):
        """Close once the client has had time to read the answer: end our side, drop what it
        still sends, close when it ends its side or after LINGER_S. Closing a socket with
        unread bytes in it would send a reset, which can reach the client before the answer."""
        self.refused = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def server_config(app, settings, **options):
    """No access log: it would keep every client's address, and took about a tenth of the
    CPU of a small upload; a reverse proxy in front logs what a deployment needs."""
    return ServerConfig(app, settings.limits, host=settings.host, port=settings.port,
                        access_log=False, **options)


def bound_socket(host, port, shared=False):
    """A TCP socket bound to host:port (port 0: a free one), not listening yet: uvicorn makes
    it listen. `shared`: others bound so too may listen on the port beside it (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class WorkersOwnSocket:
    """What uvicorn hands each worker in place of a socket to share: it pickles the sockets
    for the worker processes, and this one unpickles there as a new socket of the worker's own,
    bound to the same address with SO_REUSEPORT. The parent's socket stays bound and never
    listens: the port stays ours (another server's bind fails once a worker listens), and
    the kernel gives it no connections."""

    def __init__(self, sock):
        self.address = sock.getsockname()[:2]

    def __reduce__(self):
        return workers_socket, self.address


def workers_socket(host, port):
    """The socket a worker binds as it starts; if it cannot (another program took the port
    while no worker listened yet), one line, and the exit status that makes uvicorn's
    supervisor stop the server rather than start the worker again and again."""
    try:
        return bound_socket(host, port, shared=True)
    except OSError as error:
        print(f"error: a worker cannot listen on {host}:{port}: {error.strerror or error}",
              file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


def main():
    """`mnist-serve`: serve on $HOST:$PORT (default 127.0.0.1:8000) with $WORKERS processes
    (default: one per core, up to 4), after checking the model loads and the port is free (a
    clear line if not)."""
    try:
        settings = settings_from_env()
        app = create_app(settings)
    except (SettingsError, ModelError) as error:
        sys.exit(f"error: {error}")
    try:
        sock = bound_socket(settings.host, settings.port)
    except OSError as error:
        sys.exit(f"error: cannot listen on {settings.host}:{settings.port}: "
                 f"{error.strerror or error}")
    alone = settings.workers == 1
    # Several worker processes each build their own app from the environment: the factory.
    config = server_config(app if alone else "app.server.api:create_app", settings,
                           factory=not alone, workers=settings.workers, log_level="info")
    host, port = sock.getsockname()[:2]
    log.info("serving on http://%s:%d with %d worker%s (Ctrl-C to stop)",
             f"[{host}]" if ":" in host else host, port, settings.workers,
             "s" * (settings.workers > 1))
    if alone:
        uvicorn.Server(config).run(sockets=[sock])
        return
    del app  # the parent only supervises: each worker loads its own
    # Linux spreads connections among SO_REUSEPORT sockets; elsewhere one of them would get
    # them all, so there the workers share the parent's.
    on_linux = sys.platform.startswith("linux")
    supervisor = Multiprocess(config, sockets=[WorkersOwnSocket(sock) if on_linux else sock])
    supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
