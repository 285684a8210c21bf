"""The service's exceptions. Each becomes an RFC 9457 problem response at the edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid part of a request and its fix; `field` is a path like `body.question`."""

    field: str
    message: str


class ScoutError(Exception):
    """Base of the errors a client can see; `status` and `title` go into the problem response."""

    status = 500
    title = "Internal error"
    type_suffix = "internal"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidRequest(ScoutError):
    status = 422
    title = "Invalid request"
    type_suffix = "invalid-request"


class UnsupportedMediaType(ScoutError):
    status = 415
    title = "Unsupported media type"
    type_suffix = "unsupported-media-type"


class PayloadTooLarge(ScoutError):
    status = 413
    title = "Request body too large"
    type_suffix = "payload-too-large"


class JobNotFound(ScoutError):
    status = 404
    title = "Job not found"
    type_suffix = "job-not-found"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"No job has the id {job_id!r}; job ids come from POST /research.",
            [FieldError("path.job_id", "Use a job_id returned by POST /research.")],
        )


class IllegalTransition(ScoutError):
    """The job's current status does not allow the requested change."""

    status = 409
    title = "Job is not in a state that allows this"
    type_suffix = "illegal-transition"

    def __init__(self, job_id: str, current: str | None, action: str) -> None:
        super().__init__(
            f"Job {job_id!r} is {current!r}, so it cannot {action}.",
            [FieldError("path.job_id", f"Read GET /status/{job_id} for the job's current status.")],
        )
        self.job_id = job_id
        self.current = current


class IdempotencyMismatch(ScoutError):
    status = 422
    title = "Idempotency key reused with a different request"
    type_suffix = "idempotency-mismatch"
