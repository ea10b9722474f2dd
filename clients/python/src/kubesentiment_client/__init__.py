"""Client of the KubeSentiment batch sentiment REST API, sync and asyncio.

    from kubesentiment_client import Client

    client = Client("http://localhost:8000", api_key="...")
    job = client.submit(["I love it", "I hate it"], priority="high")
    client.wait(job["job_id"], progress=True)
    for result in client.results(job["job_id"]):
        print(result["index"], result["label"], result["score"])

`AsyncClient` has the same methods, awaited. Documents are typed (`JobStatus`,
`BatchJob`, `ResultItem`, `ResultsPage`: TypedDicts, so they stay plain dicts).
`verify_callback` checks a completion callback's signature on the receiving side.
"""

from ._common import ApiError, BatchJob, CallbackStatus, FileObject, JobFailed, JobStatus, ResultItem, ResultsPage
from .aio import AsyncClient
from .client import Client
from .webhooks import InvalidCallback, signing_key, verify_callback

__all__ = [
    "ApiError",
    "AsyncClient",
    "BatchJob",
    "CallbackStatus",
    "Client",
    "FileObject",
    "InvalidCallback",
    "JobFailed",
    "JobStatus",
    "ResultItem",
    "ResultsPage",
    "signing_key",
    "verify_callback",
]
