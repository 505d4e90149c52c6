"""What every handler is given (FastAPI `Depends`): the gateway's services, the caller checked
against a role, and a guard that refuses query parameters a route does not take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request

from raysegment.serving.auth import Client, TokenTable
from raysegment.serving.catalog import Catalog
from raysegment.serving.config import ServeConfig
from raysegment.serving.errors import Forbidden, Unauthenticated, UnknownQueryParameter, UnknownToken
from raysegment.serving.loops import LoopTurns
from raysegment.serving.metrics import ServingMetrics
from raysegment.serving.mirror import Mirror
from raysegment.serving.replica import ModelCalls

LOCAL = Client("local", "admin")  # who acts when auth is none (a loopback-only server)


@dataclass
class Services:
    cfg: ServeConfig
    catalog: Catalog
    models: ModelCalls
    mirror: Mirror
    tokens: TokenTable | None
    loops: LoopTurns
    metrics: ServingMetrics


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request, svc: Services = Depends(services)) -> Client:
    """The client behind the request's bearer token (401 without a known one)."""
    if svc.tokens is None:
        return LOCAL
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send 'Authorization: Bearer <token>'")
    client = svc.tokens.client(token.strip())
    if client is None:
        raise UnknownToken("the token is not in the server's token file")
    return client


def require_role(role: str) -> Callable[[Client], Client]:
    """A dependency: the caller, if their role grants `role` (else 403)."""

    def check(client: Client = Depends(caller)) -> Client:
        if not client.may(role):
            raise Forbidden(f"client {client.name!r} has role {client.role!r}; this needs {role!r}")
        return client

    return check


def only_query(*names: str) -> Callable[[Request], None]:
    """A dependency: 400 for any query parameter outside `names` (a typo is never silently ignored)."""
    allowed = set(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise UnknownQueryParameter(
                f"{', '.join(repr(u[:40]) for u in unknown[:5])}; this route takes {sorted(allowed) or 'none'}"
            )

    return check


READ = require_role("read")
ADMIN = require_role("admin")
