"""ASGI middleware: the limits on a request that the app can see, whatever server runs it.

- A head (request line and headers) over `max_header_bytes` gets 431. (A head that arrives in
  pieces is cut off at that size by the server, app/server/main.py.)
- HEAD is answered as GET is, without the body.
- POST (an upload) gets 503 while `max_uploads` others are in progress; 413 if its
  Content-Length is over `max_upload_bytes`, or as soon as the body passes it; 408 if the body
  stops coming for `body_progress_s`, or is not all there after `upload_deadline_s`.
Every refusal is JSON with a string `detail`, as FastAPI's own errors are.
"""

import asyncio
import json

from fastapi import HTTPException


class UploadRefused(HTTPException):
    """Raised while the body arrives. An HTTPException, which FastAPI answers as it is (its
    form parsing turns anything else into a 400 "error parsing the body"); Starlette's parser
    closes the upload's temporary file as it passes."""


def problem(detail):
    """The body of every refusal, from the app or from app/server/main.py's protocol."""
    return json.dumps({"detail": detail}).encode()


def headers_too_large(limits):
    return f"the request's headers are over the {limits.max_header_bytes // 1024} KB limit"


async def refuse(send, status, detail):
    body = problem(detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def head_bytes(scope):
    """The size of a request's head as it came: request line, headers, CRLFs."""
    line = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def without_body(send):
    """`send` for a HEAD request: GET's status and headers (Content-Length included), no body."""
    async def send_head(message):
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return send_head


class RequestLimits:
    def __init__(self, app, limits):
        self.app, self.limits = app, limits
        self.uploads = 0  # POST requests in progress in this process

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if head_bytes(scope) > self.limits.max_header_bytes:
            return await refuse(send, 431, headers_too_large(self.limits))
        if scope["method"] == "HEAD":
            return await self.app({**scope, "method": "GET"}, receive, without_body(send))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.uploads >= self.limits.max_uploads:
            return await refuse(send, 503, f"the server is busy with {self.uploads} other "
                                "uploads; try again in a few seconds")
        length = dict(scope["headers"]).get(b"content-length", b"0")  # the server checked it
        if int(length) > self.limits.max_upload_bytes:
            return await refuse(send, 413, self.too_large())
        self.uploads += 1
        try:
            await self.app(scope, self.bounded(receive), send)
        finally:
            self.uploads -= 1

    def too_large(self):
        return f"the upload is over the {self.limits.max_upload_bytes // 2**20} MB limit"

    def bounded(self, receive):
        """`receive` that refuses a body that grows too large, stalls or drags on."""
        limits, loop = self.limits, asyncio.get_running_loop()
        deadline = loop.time() + limits.upload_deadline_s
        received, complete = 0, False

        async def receive_within_limits():
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
                raise UploadRefused(413, self.too_large())
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        return receive_within_limits
