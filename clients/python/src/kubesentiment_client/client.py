"""The sync client: one class over the facade's routes, with typed errors and retries."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import httpx

from ._common import (
    FINAL,
    RETRY_STATUSES,
    ApiError,
    BatchJob,
    FileObject,
    JobFailed,
    JobStatus,
    ResultItem,
    ResultsPage,
    Text,
    error_of,
    list_params,
    may_resend,
    retry_delay,
    submit_request,
    ws_url,
)


class Client:
    """A client of one facade. `api_key` is sent as `Authorization: Bearer`. A request
    answered 429 or 503 is tried again after the server's `Retry-After` (else a backoff),
    up to `max_retries` times and never waiting more than `max_retry_wait` seconds at once;
    so is one whose connection failed, when sending it again is safe."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        use_websocket: bool = True,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.use_websocket = use_websocket
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        #: How the last `wait` followed its job: "websocket" or "polling".
        self.last_wait_transport: Optional[str] = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, headers: Optional[Dict[str, str]] = None, retries: bool = True, **kwargs: Any) -> Any:
        headers = headers or {}
        tries = self.max_retries + 1 if retries else 1
        for attempt in range(tries):
            last = attempt == tries - 1
            try:
                resp = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError:
                if last or not may_resend(method, headers):
                    raise
                time.sleep(retry_delay(attempt, None, self.max_retry_wait))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                time.sleep(retry_delay(attempt, resp, self.max_retry_wait))
                continue
            if resp.status_code >= 400:
                raise error_of(resp)
            return resp.json()
        raise AssertionError("unreachable")

    def submit(
        self,
        texts: Optional[Sequence[Text]] = None,
        priority: str = "medium",
        timeout_seconds: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        model: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        idempotency_key: Optional[str] = None,
        input_url: Optional[str] = None,
        callback_url: Optional[str] = None,
    ) -> BatchJob:
        """Submits a batch; returns the answer (`job_id`, `status`, ...) at once. A text is
        a string, or a dict with `text` and `custom_id`; or, instead of texts, `input_url`
        (`configmap://NAMESPACE/NAME/KEY` or `s3://BUCKET/KEY`) names where they are.
        `metadata` (up to 16 string pairs) comes back on status and in `list`. A submit
        repeated with the same `idempotency_key` returns the job the first one created; a
        submit without one gets a fresh key, so that its own retries are the same job.
        With `callback_url`, the server POSTs a CloudEvent there when the job ends, signed
        with this API key's signing key: check it with `verify_callback`."""
        body, headers = submit_request(
            texts, priority, timeout_seconds, max_batch_size, model, metadata, idempotency_key, input_url, callback_url
        )
        return self._call("POST", "/api/v1/batch/predict", json=body, headers=headers)

    def upload(self, path: str) -> FileObject:
        """Uploads a file of texts (JSONL with `text` and an optional `id`, or one text per
        line), streamed from disk; returns where it is (`input_url`)."""
        with open(path, "rb") as data:
            return self._call("POST", "/api/v1/files", content=data, headers={"Content-Type": "application/x-ndjson"}, retries=False)

    def delete_file(self, file_id: str) -> Dict[str, Any]:
        """Deletes an upload of yours (a job still reading it fails): `{"file_id", "deleted"}`."""
        return self._call("DELETE", f"/api/v1/files/{file_id}")

    def submit_file(self, path: str, **submit: Any) -> BatchJob:
        """Uploads `path` and submits a job that reads it; `submit` takes `submit`'s options."""
        return self.submit(input_url=self.upload(path)["input_url"], **submit)

    def list(self, status: Optional[str] = None, priority: Optional[str] = None, page_size: int = 20) -> Iterator[JobStatus]:
        """The caller's jobs as status documents, newest first, fetching page after page."""
        params = list_params(status, priority, page_size)
        while True:
            body = self._call("GET", "/api/v1/batch/jobs", params=params)
            yield from body["jobs"]
            if body["next_cursor"] is None:
                return
            params["after"] = body["next_cursor"]

    def status(self, job_id: str) -> JobStatus:
        return self._call("GET", f"/api/v1/batch/status/{job_id}")

    def page(self, job_id: str, page: int = 1, page_size: int = 100) -> ResultsPage:
        """One page of results, with `total_results`, `has_more` and `summary`."""
        return self._call("GET", f"/api/v1/batch/results/{job_id}", params={"page": page, "page_size": page_size})

    def results(self, job_id: str, page_size: int = 100) -> Iterator[ResultItem]:
        """Every result, in input order, fetching page after page."""
        page = 1
        while True:
            body = self.page(job_id, page, page_size)
            yield from body["results"]
            if not body["has_more"]:
                return
            page += 1

    def download(self, job_id: str, path: str, errors: bool = False) -> int:
        """Writes every result (or, with `errors`, every failure) to `path` as JSONL, in
        input order, streamed; returns the number of lines."""
        params = {"errors": "true"} if errors else {}
        with self._http.stream("GET", f"/api/v1/batch/results/{job_id}/download", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise error_of(resp)
            lines = 0
            with open(path, "wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    lines += chunk.count(b"\n")
        return lines

    def cancel(self, job_id: str) -> JobStatus:
        """Cancels a job; raises ApiError 409 if it has already ended."""
        return self._call("DELETE", f"/api/v1/batch/jobs/{job_id}")

    def queue_status(self) -> Dict[str, Any]:
        return self._call("GET", "/api/v1/batch/queue/status")

    def metrics(self) -> Dict[str, Any]:
        return self._call("GET", "/api/v1/batch/metrics")

    def predict(self, texts: Sequence[str]) -> List[Dict[str, Any]]:
        """Synchronous prediction of a few texts."""
        return self._call("POST", "/api/v1/predict", json={"texts": list(texts)})["results"]

    def predict_batch(self, texts: Sequence[Text], priority: str = "medium", progress: bool = False) -> List[ResultItem]:
        """Submits, waits and returns every result: the async API as one call. Raises
        JobFailed if the job ends other than completed."""
        job = self.submit(texts, priority=priority)
        final = self.wait(job["job_id"], progress=progress)
        if final["status"] != "completed":
            raise JobFailed(final)
        return list(self.results(job["job_id"], page_size=1000))

    def wait(self, job_id: str, progress: bool = False, poll_interval: float = 0.5, timeout: Optional[float] = None) -> JobStatus:
        """Blocks until the job is final; returns its final status. Follows the job over
        the WebSocket, falling back to polling; `progress=True` shows a tqdm bar. Raises
        TimeoutError once `timeout` seconds have passed, on either path."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=0, unit="text", desc=job_id[:8])

        def show(doc: JobStatus) -> None:
            if bar is not None:
                bar.total = doc["total_texts"]
                bar.n = doc["processed_texts"]
                bar.set_postfix_str(doc["status"])
                bar.refresh()

        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> Optional[float]:
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} not final after {timeout} s")
            return remaining

        try:
            if self.use_websocket:
                final = self._wait_ws(job_id, show, left)
                if final is not None:
                    self.last_wait_transport = "websocket"
                    return final
            self.last_wait_transport = "polling"
            while True:
                doc = self.status(job_id)
                show(doc)
                if doc["status"] in FINAL:
                    return doc
                remaining = left()
                time.sleep(poll_interval if remaining is None else min(poll_interval, remaining))
        finally:
            if bar is not None:
                bar.close()

    def _wait_ws(self, job_id: str, show: Callable[[JobStatus], None], left: Callable[[], Optional[float]]) -> Optional[JobStatus]:
        """The final status from the WebSocket, or None if it is unavailable; raises
        TimeoutError when `left()` runs out."""
        try:
            from websockets.sync.client import connect
        except ImportError:
            return None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = None
        remaining = left()
        try:
            with connect(ws_url(self.base_url, job_id), additional_headers=headers, open_timeout=min(10.0, remaining or 10.0)) as ws:
                while True:
                    last = json.loads(ws.recv(timeout=left()))
                    show(last)
                    if last["status"] in FINAL:
                        return last
        except TimeoutError:
            left()  # raises if the caller's time is up; else the socket was slow to open
        except Exception:  # the socket is an optimisation; polling is the fallback
            pass
        return last if last is not None and last["status"] in FINAL else None
