"""ASGI middleware: the limits on a request the app can see. 431 for a head over max_header_bytes
that arrives whole (main.py cuts off one in pieces); HEAD as GET without the body; for an
upload, 503 while max_uploads others are in progress, 413 past max_upload_bytes (declared or
arriving), 408 when it stalls for body_progress_s or is not all there after upload_deadline_s.
Every refusal is JSON with a string `detail`, as FastAPI's own errors are."""

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server.settings import Limits


class UploadRefused(HTTPException):
    """Raised as the body arrives: FastAPI answers an HTTPException as it is (anything else its
    form parsing turns into a 400), and Starlette's parser closes the upload's file."""


def headers_too_large(limits: Limits) -> str:
    return f"the request's headers are over the {limits.max_header_bytes // 1024} KB limit"


async def refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status)(scope, None, send)


def without_body(send: Send) -> Send:
    """`send` for a HEAD request: GET's status and headers (Content-Length included), no body."""
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return send_head


class RequestLimits:
    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.uploads = 0  # POST requests in progress in this process
        self.too_large = f"the upload is over the {limits.max_upload_bytes // 2**20} MB limit"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # The head as it came: request line, headers, CRLFs.
        head = sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 12 \
            + len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"])
        if head > self.limits.max_header_bytes:
            return await refuse(scope, send, 431, headers_too_large(self.limits))
        if scope["method"] == "HEAD":
            return await self.app({**scope, "method": "GET"}, receive, without_body(send))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.uploads >= self.limits.max_uploads:
            return await refuse(scope, send, 503, f"the server is busy with {self.uploads} "
                                "other uploads; try again in a few seconds")
        length = dict(scope["headers"]).get(b"content-length", b"0")  # the server checked it
        if int(length) > self.limits.max_upload_bytes:
            return await refuse(scope, send, 413, self.too_large)
        self.uploads += 1
        try:
            await self.app(scope, self.bounded(receive), send)
        finally:
            self.uploads -= 1

    def bounded(self, receive: Receive) -> Receive:
        """`receive` that refuses a body that grows too large, stalls or drags on."""
        limits, loop = self.limits, asyncio.get_running_loop()
        deadline = loop.time() + limits.upload_deadline_s
        received, complete = 0, False

        async def receive_within_limits() -> Message:
            nonlocal received, complete
            if complete:  # what comes after the body (a disconnect) may take its time
                return await receive()
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(min(limits.body_progress_s, left)):
                    message = await receive()
            except TimeoutError:
                raise UploadRefused(408, f"the upload stalled: nothing came for "
                                         f"{limits.body_progress_s:g} s"
                                    if left > limits.body_progress_s else
                                    "the upload did not arrive within "
                                    f"{limits.upload_deadline_s:g} s") from None
            received += len(message.get("body", b""))
            if received > limits.max_upload_bytes:
                raise UploadRefused(413, self.too_large)
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        return receive_within_limits
