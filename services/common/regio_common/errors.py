"""The one error hierarchy. Client errors map to 4xx, server errors to 5xx, in one place: the
gateway's error middleware renders them as the OpenAI error envelope."""

from __future__ import annotations

from typing import Any, ClassVar

# Causes a worker reports in InferenceChunk.error_code.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the client's prompt does not fit
GENERATION_FAILED = "generation_failed"  # our failure
INVALID_RESPONSE_FORMAT = "invalid_response_format"  # a JSON schema the worker cannot enforce
INVALID_LOGIT_BIAS = "invalid_logit_bias"  # a logit_bias token id outside the vocabulary
INVALID_TOOLS = "invalid_tools"  # tool parameter schemas the worker cannot turn into a grammar
# Media the worker cannot read at all (no multimodal projector, or none for that modality);
# also the gateway's 400 code for media on a route without the capability.
UNSUPPORTED_CONTENT = "unsupported_content"
INVALID_MEDIA = "invalid_media"  # an image or clip the projector cannot decode, or too long
# The gateway's 400 code for a client's media URL that could not be downloaded.
INVALID_IMAGE_URL = "invalid_image_url"


class RegioError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        # Sent as Retry-After: when trying again makes sense (busy, rate-limited).
        self.retry_after_seconds = retry_after_seconds

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ClientError(RegioError):
    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    default_code = "invalid_value"


class RequestTooLarge(ClientError):
    # The seed's table puts every malformed request under 400 invalid_value.
    default_code = "invalid_value"


class Unauthenticated(ClientError):
    """No usable credential (missing, malformed, unknown or revoked): 401."""

    status = 401
    error_type = "authentication_error"
    default_code = "invalid_credentials"


class PermissionDenied(ClientError):
    """A valid credential whose role may not do this: 403."""

    status = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class UnprocessableEntity(ClientError):
    """Well-formed, but a value breaks a limit or rule of the resource: 422."""

    status = 422
    default_code = "invalid_value"


class AuthenticationFailed(ClientError):
    status = 403
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientBudget(ClientError):
    status = 403
    error_type = "insufficient_quota"
    default_code = "insufficient_budget"


class RateLimited(ClientError):
    """A request, token, concurrency or spend limit of the key or account (OpenAI's 429 with
    code `rate_limit_exceeded`; `type` names what ran out, as OpenAI's does)."""

    status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit_type: str = "requests", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit_type = limit_type

    def envelope(self) -> dict[str, Any]:
        body = super().envelope()
        body["error"]["type"] = self.limit_type
        return body


class TooManyRequests(ClientError):
    """Protections of the edge (failed-auth throttling, connection limits): 429."""

    status = 429
    error_type = "rate_limit_error"
    default_code = "too_many_requests"


class ModelNotFound(ClientError):
    status = 404
    default_code = "model_not_found"


class RegionMismatch(ClientError):
    status = 404
    default_code = "region_mismatch"


class NotFound(ClientError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    default_code = "conflict"


class ServerError(RegioError):
    status = 500
    error_type = "server_error"
    default_code = "internal_error"


class ServiceUnavailable(ServerError):
    status = 503
    default_code = "service_unavailable"


class BillingUnavailable(ServiceUnavailable):
    """Billing cannot be reached: nothing may be served (fail closed)."""


class UpstreamTimeout(ServerError):
    status = 504
    default_code = "timeout"
