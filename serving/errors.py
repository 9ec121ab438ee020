"""Request errors with TF Serving's status codes, mapped to HTTP the way tensorflow_model_server does.

Every failure a client can cause is raised as a :class:`ServingError` carrying a canonical status
code (``grpc.StatusCode``). The gRPC services abort with that code; the REST API answers
``{"error": "<message>"}`` with the HTTP status TF Serving's ``ToHTTPStatusCode`` uses
(``INVALID_ARGUMENT`` -> 400, ``NOT_FOUND`` -> 404, ``DEADLINE_EXCEEDED`` -> 504, ...).
"""

from __future__ import annotations

import grpc

# tensorflow_serving/model_servers/http_server.cc: ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


MAX_MESSAGE_CHARS = 2000  # Longer messages (they may quote client input) are cut.


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut (messages quoting client input:
    an 8 MB signature name must not come back as an 8 MB error body or gRPC trailer)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class ServingError(Exception):
    """A request that cannot be served, with the canonical status code to report.

    Attributes:
      code: the ``grpc.StatusCode`` (TF Serving's canonical error space).
      message: a human-readable explanation naming what was expected and what was received
        (cut to ``MAX_MESSAGE_CHARS`` characters).
      http_status: the HTTP status the REST API answers with; defaults to TF Serving's mapping of
        ``code``, overridable where HTTP has a more precise status (413 for an oversize body).
    """

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        message = clip(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else _HTTP_STATUS.get(code, 500)

    def __str__(self) -> str:
        return self.message


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)



def too_many_rows(rows: int | str, limit: int) -> ServingError:
    """INVALID_ARGUMENT for a request with more rows than the batch queue holds (it could never
    run: retrying cannot help). Raised by the batcher, and before decoding by both APIs."""
    return invalid_argument(
        f"the request has {rows} rows, more than this server's batch queue holds ({limit} rows = "
        "max_enqueued_batches x max_batch_size); split it into smaller requests"
    )
