"""The client: one class over the facade's routes, with typed errors."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import httpx

FINAL = frozenset({"completed", "failed", "cancelled", "expired"})

Text = Union[str, Dict[str, str]]


class ApiError(Exception):
    """An error answer: its HTTP status, the stable `error` code, and the field at fault."""

    def __init__(self, status: int, error: str, message: str, field: Optional[str] = None, retry_after: Optional[float] = None):
        super().__init__(f"{status} {error}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.retry_after = retry_after


class Client:
    """A client of one facade. `api_key` is sent as `Authorization: Bearer`."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 30.0, use_websocket: bool = True):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.use_websocket = use_websocket
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

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            self._raise(resp)
        return resp.json()

    @staticmethod
    def _raise(resp: httpx.Response) -> None:
        try:
            body = resp.json()
        except ValueError:
            body = {"error": "http_error", "message": resp.text}
        retry = resp.headers.get("retry-after")
        raise ApiError(resp.status_code, body.get("error", ""), body.get("message", ""), body.get("field"), float(retry) if retry else None)

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
    ) -> Dict[str, Any]:
        """Submits a batch; returns the BatchJobResponse (`job_id`, `status`, ...) at once.
        A text is a string, or a dict with `text` and `custom_id`; or, instead of texts,
        `input_url` (`configmap://NAMESPACE/NAME/KEY` or `s3://BUCKET/KEY`) names where
        they are. `metadata` (up to 16 string pairs) comes back on status and in `list`. A
        submit repeated with the same `idempotency_key` returns the job the first one created."""
        body: Dict[str, Any] = {"priority": priority}
        if texts is not None:
            body["texts"] = list(texts)
        if input_url is not None:
            body["input_url"] = input_url
        for key, value in (("timeout_seconds", timeout_seconds), ("max_batch_size", max_batch_size), ("model", model), ("metadata", metadata)):
            if value is not None:
                body[key] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        return self._call("POST", "/api/v1/batch/predict", json=body, headers=headers)

    def list(self, status: Optional[str] = None, priority: Optional[str] = None, page_size: int = 20) -> Iterator[Dict[str, Any]]:
        """The caller's jobs as status documents, newest first, fetching page after page."""
        params: Dict[str, Any] = {"limit": page_size}
        if status is not None:
            params["status"] = status
        if priority is not None:
            params["priority"] = priority
        while True:
            body = self._call("GET", "/api/v1/batch/jobs", params=params)
            yield from body["jobs"]
            if body["next_cursor"] is None:
                return
            params["after"] = body["next_cursor"]

    def status(self, job_id: str) -> Dict[str, Any]:
        return self._call("GET", f"/api/v1/batch/status/{job_id}")

    def page(self, job_id: str, page: int = 1, page_size: int = 100) -> Dict[str, Any]:
        """One page of results, with `total_results`, `has_more` and `summary`."""
        return self._call("GET", f"/api/v1/batch/results/{job_id}", params={"page": page, "page_size": page_size})

    def results(self, job_id: str, page_size: int = 100) -> Iterator[Dict[str, Any]]:
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
                self._raise(resp)
            lines = 0
            with open(path, "wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    lines += chunk.count(b"\n")
        return lines

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancels a job; raises ApiError 409 if it has already ended."""
        return self._call("DELETE", f"/api/v1/batch/jobs/{job_id}")

    def queue_status(self) -> Dict[str, Any]:
        return self._call("GET", "/api/v1/batch/queue/status")

    def metrics(self) -> Dict[str, Any]:
        return self._call("GET", "/api/v1/batch/metrics")

    def predict(self, texts: Sequence[str]) -> List[Dict[str, Any]]:
        """Synchronous prediction of a few texts."""
        return self._call("POST", "/api/v1/predict", json={"texts": list(texts)})["results"]

    def predict_batch(self, texts: Sequence[Text], priority: str = "medium", progress: bool = False) -> List[Dict[str, Any]]:
        """Submits, waits and returns every result: the async API as one call."""
        job = self.submit(texts, priority=priority)
        final = self.wait(job["job_id"], progress=progress)
        if final["status"] != "completed":
            raise ApiError(200, final["status"], final.get("error") or f"job {job['job_id']} ended {final['status']}")
        return list(self.results(job["job_id"], page_size=1000))

    def wait(self, job_id: str, progress: bool = False, poll_interval: float = 0.5, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Blocks until the job is final; returns its final status. Follows the job over
        the WebSocket, falling back to polling; `progress=True` shows a tqdm bar."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=0, unit="text", desc=job_id[:8])

        def show(doc: Dict[str, Any]) -> None:
            if bar is not None:
                bar.total = doc["total_texts"]
                bar.n = doc["processed_texts"]
                bar.set_postfix_str(doc["status"])
                bar.refresh()

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self.use_websocket:
                final = self._wait_ws(job_id, show, timeout)
                if final is not None:
                    self.last_wait_transport = "websocket"
                    return final
            self.last_wait_transport = "polling"
            while True:
                doc = self.status(job_id)
                show(doc)
                if doc["status"] in FINAL:
                    return doc
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not final after {timeout} s")
                time.sleep(poll_interval)
        finally:
            if bar is not None:
                bar.close()

    def _wait_ws(self, job_id: str, show: Any, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
        """The final status from the WebSocket, or None if it is unavailable."""
        try:
            from websockets.sync.client import connect
        except ImportError:
            return None
        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + f"/api/v1/batch/ws/{job_id}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = None
        try:
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                for message in ws:
                    last = json.loads(message)
                    show(last)
                    if last["status"] in FINAL:
                        return last
        except Exception:  # the socket is an optimisation; polling is the fallback
            pass
        return last if last is not None and last["status"] in FINAL else None
