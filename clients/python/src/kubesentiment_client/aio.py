"""The asyncio client: the sync client's routes and rules, on `httpx.AsyncClient`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence

import httpx

from ._common import (
    FINAL,
    RETRY_STATUSES,
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
)


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited (`list` and `results` are async
    iterators), the same retries. `wait` polls."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 30.0, max_retries: int = 3, max_retry_wait: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, headers: Optional[Dict[str, str]] = None, retries: bool = True, **kwargs: Any) -> Any:
        headers = headers or {}
        tries = self.max_retries + 1 if retries else 1
        for attempt in range(tries):
            last = attempt == tries - 1
            try:
                resp = await self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError:
                if last or not may_resend(method, headers):
                    raise
                await asyncio.sleep(retry_delay(attempt, None, self.max_retry_wait))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(retry_delay(attempt, resp, self.max_retry_wait))
                continue
            if resp.status_code >= 400:
                raise error_of(resp)
            return resp.json()
        raise AssertionError("unreachable")

    async def submit(
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
        body, headers = submit_request(
            texts, priority, timeout_seconds, max_batch_size, model, metadata, idempotency_key, input_url, callback_url
        )
        return await self._call("POST", "/api/v1/batch/predict", json=body, headers=headers)

    async def upload(self, path: str) -> FileObject:
        """Uploads a file of texts, streamed from disk; returns where it is."""

        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as data:
                while chunk := data.read(1 << 20):
                    yield chunk

        return await self._call("POST", "/api/v1/files", content=chunks(), headers={"Content-Type": "application/x-ndjson"}, retries=False)

    async def delete_file(self, file_id: str) -> Dict[str, Any]:
        """Deletes an upload of yours (a job still reading it fails): `{"file_id", "deleted"}`."""
        return await self._call("DELETE", f"/api/v1/files/{file_id}")

    async def submit_file(self, path: str, **submit: Any) -> BatchJob:
        return await self.submit(input_url=(await self.upload(path))["input_url"], **submit)

    async def list(self, status: Optional[str] = None, priority: Optional[str] = None, page_size: int = 20) -> AsyncIterator[JobStatus]:
        params = list_params(status, priority, page_size)
        while True:
            body = await self._call("GET", "/api/v1/batch/jobs", params=params)
            for job in body["jobs"]:
                yield job
            if body["next_cursor"] is None:
                return
            params["after"] = body["next_cursor"]

    async def status(self, job_id: str) -> JobStatus:
        return await self._call("GET", f"/api/v1/batch/status/{job_id}")

    async def page(self, job_id: str, page: int = 1, page_size: int = 100) -> ResultsPage:
        return await self._call("GET", f"/api/v1/batch/results/{job_id}", params={"page": page, "page_size": page_size})

    async def results(self, job_id: str, page_size: int = 100) -> AsyncIterator[ResultItem]:
        page = 1
        while True:
            body = await self.page(job_id, page, page_size)
            for item in body["results"]:
                yield item
            if not body["has_more"]:
                return
            page += 1

    async def download(self, job_id: str, path: str, errors: bool = False) -> int:
        params = {"errors": "true"} if errors else {}
        async with self._http.stream("GET", f"/api/v1/batch/results/{job_id}/download", params=params) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise error_of(resp)
            lines = 0
            with open(path, "wb") as out:
                async for chunk in resp.aiter_bytes():
                    out.write(chunk)
                    lines += chunk.count(b"\n")
        return lines

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._call("DELETE", f"/api/v1/batch/jobs/{job_id}")

    async def queue_status(self) -> Dict[str, Any]:
        return await self._call("GET", "/api/v1/batch/queue/status")

    async def predict(self, texts: Sequence[str]) -> List[Dict[str, Any]]:
        return (await self._call("POST", "/api/v1/predict", json={"texts": list(texts)}))["results"]

    async def predict_batch(self, texts: Sequence[Text], priority: str = "medium") -> List[ResultItem]:
        job = await self.submit(texts, priority=priority)
        final = await self.wait(job["job_id"])
        if final["status"] != "completed":
            raise JobFailed(final)
        return [item async for item in self.results(job["job_id"], page_size=1000)]

    async def wait(self, job_id: str, poll_interval: float = 0.5, timeout: Optional[float] = None) -> JobStatus:
        """Polls until the job is final; raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = await self.status(job_id)
            if doc["status"] in FINAL:
                return doc
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job {job_id} not final after {timeout} s")
                await asyncio.sleep(min(poll_interval, remaining))
            else:
                await asyncio.sleep(poll_interval)
