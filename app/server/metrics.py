"""What an operator sees of each request: its ID (the client's X-Request-ID, else a new one) in
the answer; Prometheus metrics at /metrics, every worker's added up by prometheus-client's
multiprocess mode (main.py gives it a folder); opt-in, a JSON line (the client's address only if
asked). From request.state: the `classes` answered, the model's `refusal`, a decode `limit`."""

import json
import logging
import os
import re
import time
import uuid

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server.settings import Settings

REQUESTS = Counter("mnist_requests", "Requests answered by the app", ["route", "status"])
LATENCY = Histogram("mnist_request_duration_seconds", "From a request to its answer", ["route"])
ANSWERS = Counter("mnist_answers", "Pictures the model answered, by class", ["label"])
REFUSALS = Counter("mnist_refusals", "Pictures the model refused, by reason", ["reason"])
LIMITED = Counter("mnist_pictures_refused", "Uploads refused by a decode limit: pixels, memory, "
                  "cpu or deadline", ["limit"])
MODEL = Info("mnist_model", "The model the worker that answered the scrape serves")
LOADS = Counter("mnist_model_loads", "Models loaded by a worker, at its start or a reload: "
                "served, or refused (the one before goes on)", ["outcome"])
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a client's, kept if printable and short
log = logging.getLogger("app.requests")
router = APIRouter()


class EveryWorker:
    """Every worker's counts, as MultiProcessCollector adds them up, less a file a worker is still
    making: empty, it fails every scrape (prometheus/client_python#1199) until it is sized."""
    def collect(self) -> list[Metric]:
        return MultiProcessCollector.merge([entry.path for entry in os.scandir(
            os.environ["PROMETHEUS_MULTIPROC_DIR"]) if entry.name.endswith(".db")
            and entry.stat().st_size])


EXPOSED = REGISTRY
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # as mnist-serve runs: every worker's counts
    EXPOSED = CollectorRegistry()
    EXPOSED.register(EveryWorker())
    EXPOSED.register(MODEL)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """In the format the scraper asks for (OpenMetrics for Prometheus)."""
    encode, content_type = choose_encoder(request.headers.get("accept"))
    return Response(encode(EXPOSED), media_type=content_type)


def observed(app: ASGIApp, routes: list[BaseRoute], settings: Settings) -> ASGIApp:
    """ASGI middleware: each request's ID, then, as the settings say, its metrics and log line."""
    if settings.log_requests and not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.setLevel(logging.INFO)

    async def observe(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started, status = time.perf_counter(), [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            seconds, state = time.perf_counter() - started, scope.get("state", {})
            # The route declared, never a path a client chose (found again if refused unrouted).
            routed = scope.get("route") or next(
                (r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
            route = getattr(routed, "path", "unmatched")
            classes = state.get("classes", [])
            if settings.metrics:
                REQUESTS.labels(route, status[0]).inc()
                LATENCY.labels(route).observe(seconds)
                for label in set(classes):
                    ANSWERS.labels(label).inc(classes.count(label))
                if state.get("refusal"):  # its kind, without an uncertainty's figures
                    REFUSALS.labels(state["refusal"].split(" (")[0]).inc()
                if "limit" in state:
                    LIMITED.labels(state["limit"]).inc()
            if settings.log_requests:
                log.info(json.dumps({
                    "id": request_id, "method": scope["method"], "route": route,
                    "status": status[0], "seconds": round(seconds, 4),
                    **{k: state[k] for k in ("classes", "refusal", "limit") if state.get(k)},
                    **({"client": scope["client"][0]} if settings.log_client_address
                       and scope.get("client") else {})}))
    return observe
