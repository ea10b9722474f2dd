"""What the sync and the async client share: errors, typed documents, request bodies and
the retry rule."""

from __future__ import annotations

import sys
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import httpx

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

FINAL = frozenset({"completed", "failed", "cancelled", "expired"})

#: A text, or `{"text": ..., "custom_id": ...}`.
Text = Union[str, Dict[str, str]]

#: Answers worth another try: the server refused before doing anything.
RETRY_STATUSES = frozenset({429, 503})


class JobSummary(TypedDict):
    total_texts: int
    successful_predictions: int
    failed_predictions: int
    success_rate: float
    sentiment_distribution: Dict[str, int]
    average_confidence: float


class CallbackStatus(TypedDict):
    """How a job's completion callback went."""

    state: str
    """`pending`, `delivered` or `failed`."""
    attempts: int
    last_result: Optional[str]


class JobStatus(TypedDict):
    """`GET /api/v1/batch/status/{id}`, and each job of `list`."""

    job_id: str
    status: str
    total_texts: int
    processed_texts: int
    failed_texts: int
    progress_percentage: float
    priority: str
    created_at: float
    started_at: NotRequired[Optional[float]]
    completed_at: NotRequired[Optional[float]]
    estimated_completion_seconds: NotRequired[Optional[int]]
    error: NotRequired[Optional[str]]
    metadata: NotRequired[Dict[str, str]]
    callback: NotRequired[CallbackStatus]


class BatchJob(TypedDict):
    """The answer to a submit."""

    job_id: str
    status: str
    total_texts: int
    estimated_completion_seconds: int
    created_at: float
    priority: str
    progress_percentage: float


class ResultItem(TypedDict):
    """One text's result; a failed text has `error` and no prediction fields."""

    index: int
    custom_id: Optional[str]
    label: NotRequired[str]
    score: NotRequired[float]
    scores: NotRequired[Dict[str, float]]
    model_name: NotRequired[str]
    error: NotRequired[str]


class ResultsPage(TypedDict):
    job_id: str
    status: str
    results: List[ResultItem]
    total_results: int
    page: int
    page_size: int
    has_more: bool
    summary: NotRequired[JobSummary]


class FileObject(TypedDict):
    """An uploaded file: pass `input_url` to `submit`."""

    file_id: str
    input_url: str
    bytes: int
    created_at: float


class ApiError(Exception):
    """An error answer: its HTTP status, the stable `error` code, and the field at fault."""

    def __init__(self, status: int, error: str, message: str, field: Optional[str] = None, retry_after: Optional[float] = None):
        super().__init__(f"{status} {error}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.retry_after = retry_after


class JobFailed(Exception):
    """A job that ended other than `completed`, where a call needed its results."""

    def __init__(self, job: JobStatus):
        super().__init__(f"job {job['job_id']} ended {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
        self.job = job


def error_of(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = {"error": "http_error", "message": resp.text}
    retry = resp.headers.get("retry-after")
    return ApiError(resp.status_code, body.get("error", ""), body.get("message", ""), body.get("field"), float(retry) if retry else None)


def retry_delay(attempt: int, resp: Optional[httpx.Response], max_wait: float) -> float:
    """How long to wait before try `attempt + 1`: the server's `Retry-After` when it gave
    one, else an exponential backoff from 0.5 s; never more than `max_wait`."""
    if resp is not None:
        retry = resp.headers.get("retry-after")
        if retry:
            try:
                return min(max(float(retry), 0.0), max_wait)
            except ValueError:
                pass
    return min(0.5 * 2**attempt, max_wait)


def may_resend(method: str, headers: Dict[str, str]) -> bool:
    """Whether a request whose answer was lost may be sent again: reads and cancels are
    idempotent, and so is a submit that carries its Idempotency-Key."""
    return method in ("GET", "DELETE") or "Idempotency-Key" in headers


def submit_request(
    texts: Optional[Sequence[Text]],
    priority: str,
    timeout_seconds: Optional[int],
    max_batch_size: Optional[int],
    model: Optional[str],
    metadata: Optional[Dict[str, str]],
    idempotency_key: Optional[str],
    input_url: Optional[str],
    callback_url: Optional[str] = None,
) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The body and headers of a submit. Every submit carries an Idempotency-Key (a new
    one unless given), so that a retry after a lost answer is the same job."""
    body: Dict[str, Any] = {"priority": priority}
    if texts is not None:
        body["texts"] = list(texts)
    if input_url is not None:
        body["input_url"] = input_url
    optional = (
        ("timeout_seconds", timeout_seconds),
        ("max_batch_size", max_batch_size),
        ("model", model),
        ("metadata", metadata),
        ("callback_url", callback_url),
    )
    for key, value in optional:
        if value is not None:
            body[key] = value
    return body, {"Idempotency-Key": idempotency_key if idempotency_key is not None else f"client-{uuid.uuid4()}"}


def list_params(status: Optional[str], priority: Optional[str], page_size: int) -> Dict[str, Any]:
    params: Dict[str, Any] = {"limit": page_size}
    if status is not None:
        params["status"] = status
    if priority is not None:
        params["priority"] = priority
    return params


def ws_url(base_url: str, job_id: str) -> str:
    return base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + f"/api/v1/batch/ws/{job_id}"
