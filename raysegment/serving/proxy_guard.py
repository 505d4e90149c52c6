"""A guard in Serve's HTTP proxy (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`): a request whose
declared Content-Length is over the limit is answered 413 there, before anything reads its body.

Serve's proxy pulls the body as soon as a request arrives, so uvicorn would answer
`Expect: 100-continue` with `100 Continue` (inviting the client to send 50 MB) before the app could
refuse it; only the proxy sees the request early enough. The limit comes from the proxy's
environment (`PROXY_MAX_BODY_ENV`, set by `use_serve_process_env`), the app's own checks stay."""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.middleware import Middleware

PROXY_MAX_BODY_ENV = "RAYSEGMENT_PROXY_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = (
    10 * 1024 * 1024
)  # the serve default's image limit: every body the API takes is a raw image or small JSON


class DeclaredLengthGuard:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                body = json.dumps(
                    {"error": "image too large", "detail": f"{int(length)} bytes > limit {self.max_bytes}"}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    limit = int(os.environ.get(PROXY_MAX_BODY_ENV) or DEFAULT_MAX_BODY)
    return [Middleware(DeclaredLengthGuard, max_bytes=limit)]
