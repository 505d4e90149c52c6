"""The web console (`/ui`): one HTML page and its ES module and stylesheet, served by the same app,
no build step. Everything it shows comes from the API with the token the user typed (kept in
`sessionStorage`); it writes every registry string with `textContent`, never as HTML, and the
app's Content-Security-Policy allows no inline script, no other origin and no framing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from raysegment.serving.deps import only_query

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"console.js": "text/javascript", "console.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

# Read once at import: a page view costs no file I/O on the event loop.
PAGE = (STATIC / "index.html").read_bytes()
ASSETS = {name: (STATIC / name).read_bytes() for name in FILES}

router = APIRouter(include_in_schema=False)


@router.get("/ui", dependencies=[Depends(only_query())])
async def page() -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8")


@router.get("/ui/{name}", dependencies=[Depends(only_query())])
async def asset(name: str) -> Response:
    if name not in FILES:
        return Response(status_code=404, content=b'{"error": "not found", "detail": ""}', media_type="application/json")
    return Response(ASSETS[name], media_type=f"{FILES[name]}; charset=utf-8")
