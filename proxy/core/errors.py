"""The proxy's error hierarchy; each error maps to one PluralKit-shaped response."""

from __future__ import annotations

from enum import StrEnum


class ThrottleReason(StrEnum):
    """Why the proxy itself answered 429 (logs and metrics)."""

    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    CONSUMER_QUOTA = "consumer_quota"
    CONSUMER_QUEUE_FULL = "consumer_queue_full"


class ProxyError(Exception):
    """Root of every error the proxy answers itself, as `{"message": ..., "code": ...}`."""

    status = 500
    code = 0

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # for the request.completed event: why, never a secret

    def body(self) -> dict[str, object]:
        return {"message": self.message, "code": self.code}


class BadRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    status = 401


class Forbidden(ProxyError):
    status = 403


class NotFound(ProxyError):
    status = 404


class MethodNotAllowed(ProxyError):
    status = 405


class Gone(ProxyError):
    status = 410


class RequestTimeout(ProxyError):
    """The request's head or body did not arrive in time (a stalled or slow client)."""

    status = 408


class PayloadTooLarge(ProxyError):
    status = 413


class UriTooLong(ProxyError):
    status = 414


class ExpectationFailed(ProxyError):
    status = 417


class HeadersTooLarge(ProxyError):
    status = 431


class Internal(ProxyError):
    """A bug in the proxy: answered in PluralKit's shape, logged with its traceback."""

    status = 500


class UpstreamUnavailable(ProxyError):
    status = 502


class UpstreamTooLarge(UpstreamUnavailable):
    """Upstream answered more than `upstream.max_body_bytes`: refused, never cached."""


class Draining(ProxyError):
    status = 503


class Overloaded(ProxyError):
    """More connections than `server.max_connections`: refused at once."""

    status = 503


class UpstreamTimeout(ProxyError):
    status = 504


class Throttled(ProxyError):
    """A local 429 in PluralKit's exact shape, with the proxy's honest retry estimate."""

    status = 429

    reason: ThrottleReason

    def __init__(
        self, scope: str, retry_after_ms: int, limit: int, reset_ms: int, reason: ThrottleReason
    ) -> None:
        super().__init__("429: too many requests", reason)
        self.scope = scope
        self.retry_after_ms = max(0, retry_after_ms)
        self.limit = limit
        self.reset_ms = reset_ms

    def body(self) -> dict[str, object]:
        return {
            "message": self.message,
            "retry_after": self.retry_after_ms,
            "scope": self.scope,
            "code": self.code,
        }
