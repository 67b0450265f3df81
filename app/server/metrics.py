"""What an operator sees of each request: its ID (the client's X-Request-ID, or one made here) in
the answer; Prometheus metrics at /metrics (prometheus-client), added up across the workers by
the client's multiprocess mode (mnist-serve gives it a folder, main.py); and, opt-in, a JSON line
on stderr: ID, route, status, duration, the classes answered or why not; the client's address
only if asked for. The counts come from what the routes leave in request.state: `classes`,
`refusal` (the model's), `limit` (a decode limit reached) and `detail` (an error's)."""

import collections
import json
import logging
import os
import re
import time
import uuid

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.classifier import Classifier

REQUESTS = Counter("mnist_requests", "Requests answered by the app", ["route", "status"])
LATENCY = Histogram("mnist_request_duration_seconds", "From a request to its answer", ["route"])
ANSWERS = Counter("mnist_answers", "Pictures the model answered, by class", ["label"])
REFUSALS = Counter("mnist_refusals", "Pictures the model refused, by reason", ["reason"])
DECODE_LIMITS = Counter("mnist_pictures_refused", "Uploads refused by a decode limit: pixels, "
                        "memory, cpu or deadline", ["limit"])
# Each worker says which model it serves: a scrape reaches one worker, and a reload changes it.
MODEL = Info("mnist_model", "The model the worker that answered the scrape serves")
# An ID a client gives is kept if it is printable ASCII of up to 128 characters, else replaced.
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
log = logging.getLogger("app.requests")


def registry() -> CollectorRegistry:
    """Every worker's counts (multiprocess mode, as mnist-serve runs), or this process's."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    shared = CollectorRegistry()
    MultiProcessCollector(shared)
    shared.register(MODEL)
    return shared


router = APIRouter()
EXPOSED = registry()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """In the format the scraper asks for: OpenMetrics for Prometheus, else its text format."""
    encode, content_type = choose_encoder(request.headers.get("accept"))
    return Response(encode(EXPOSED), media_type=content_type)


def identify(classifier: Classifier) -> None:
    """The model's identity as the info metric: name, version, family, dataset, SHA-256."""
    name, _, version = classifier.path.stem.partition("@")
    MODEL.info({"name": name, "version": version, "family": classifier.info.family,
                "dataset": classifier.info.dataset, "sha256": classifier.sha256})


class Observed:
    """ASGI middleware: the request's ID, then, as settings say, its metrics and its log line."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute], metrics: bool, log_line: bool,
                 client_address: bool) -> None:
        self.app, self.routes, self.metrics = app, routes, metrics
        self.log_line, self.client_address = log_line, client_address
        if log_line and not log.handlers:
            log.addHandler(logging.StreamHandler())
            log.setLevel(logging.INFO)
            log.propagate = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.record(scope, request_id, status, time.perf_counter() - started)

    def record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        # The route as declared, never the path a client chose; found again for a request the
        # limits refused before it was routed.
        route = scope.get("route") or next(
            (r for r in self.routes if r.matches(scope)[0] is not Match.NONE), None)
        route = getattr(route, "path", "unmatched")
        state = scope.get("state", {})
        if self.metrics:
            REQUESTS.labels(route, status).inc()
            LATENCY.labels(route).observe(seconds)
            for label, count in collections.Counter(state.get("classes", ())).items():
                ANSWERS.labels(label).inc(count)
            if "refusal" in state:  # its kind: the figures in an uncertainty's are cut
                REFUSALS.labels(state["refusal"].split(" (")[0]).inc()
            if "limit" in state:
                DECODE_LIMITS.labels(state["limit"]).inc()
        if self.log_line:
            line = {"id": request_id, "method": scope["method"], "route": route,
                    "status": status, "seconds": round(seconds, 4),
                    **{key: state[key] for key in ("classes", "refusal", "detail") if key in state}}
            if self.client_address and scope.get("client"):
                line["client"] = scope["client"][0]
            log.info(json.dumps(line))
