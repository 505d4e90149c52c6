"""What can go wrong with a request, as types: each names its HTTP status and the house error
string once, and `app.py` maps every one of them to `{"error", "detail"}` JSON in one handler."""

from __future__ import annotations


class ServingError(Exception):
    """A refused request: `status` and `error` are the class's, `detail` this request's."""

    status = 400
    error = "bad request"
    headers: dict[str, str] = {}

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail[:400]


class Unauthenticated(ServingError):
    status, error = 401, "authentication required"


class UnknownToken(ServingError):
    status, error = 401, "unknown token"


class Forbidden(ServingError):
    status, error = 403, "forbidden"


class BadDomainName(ServingError):
    status, error = 400, "bad domain name"


class BadVersion(ServingError):
    status, error = 400, "bad version"


class UnknownQueryParameter(ServingError):
    status, error = 400, "unknown query parameter"


class UnknownDomain(ServingError):
    status, error = 404, "unknown domain or version"


class UnknownLoopTurn(ServingError):
    status, error = 404, "unknown loop turn"


class Conflict(ServingError):
    """The request is well formed but the service is not set up for it (routing off, say)."""

    status = 409

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(detail)
        self.error = error


class DomainUnavailable(ServingError):
    status, error = 503, "domain unavailable"


class ReplicaGone(ServingError):
    status, error = 503, "model replica unavailable"


class Unroutable(ServingError):
    status, error = 503, "no routable domain"


class UploadRefused(ServingError):
    """An upload refused before or while decoding it; each subclass is one reason (also the metric label)."""

    reason = "refused"


class EmptyBody(UploadRefused):
    status, error, reason = 400, "empty body", "empty"


class BadContentLength(UploadRefused):
    status, error, reason = 400, "bad content-length", "bad_length"


class UnsupportedContentType(UploadRefused):
    status, error, reason = 415, "unsupported content type", "content_type"


class TooLarge(UploadRefused):
    status, error, reason = 413, "image too large", "too_large"


class TooSlow(UploadRefused):
    status, error, reason = 408, "request body too slow", "too_slow"
    headers = {"connection": "close"}  # a stalled client loses its connection, not only its request


class NotAnImage(UploadRefused):
    status, error, reason = 400, "not a valid image", "not_an_image"


class UnsupportedFormat(UploadRefused):
    status, error, reason = 415, "unsupported image format", "format"


class UnsupportedShape(UploadRefused):
    status, error, reason = 422, "unsupported image shape", "shape"
