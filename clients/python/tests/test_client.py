"""The client against a real facade: KUBESENTIMENT_API (and KUBESENTIMENT_API_KEY) name it.
The Rust test `python_client` in tests/tests/facade.rs starts one and runs this suite."""

import asyncio
import http.server
import json
import os
import threading
import time

import pytest

from kubesentiment_client import ApiError, AsyncClient, Client, InvalidCallback, verify_callback

URL = os.environ.get("KUBESENTIMENT_API")
KEY = os.environ.get("KUBESENTIMENT_API_KEY")
# A facade with a rate limit of 60 requests a minute, for the retry test.
LIMITED = os.environ.get("KUBESENTIMENT_API_LIMITED")
# Set when the facade takes uploads.
FILES = os.environ.get("KUBESENTIMENT_FILES")
pytestmark = pytest.mark.skipif(not URL, reason="KUBESENTIMENT_API is not set")

TEXTS = ["I love this product! It is amazing.", "This is terrible and disappointing.", "It is okay, nothing special."]


@pytest.fixture
def client():
    with Client(URL, api_key=KEY) as c:
        yield c


def test_submit_wait_results(client):
    job = client.submit(TEXTS, priority="high")
    assert job["status"] == "pending" and job["total_texts"] == 3 and job["priority"] == "high"
    final = client.wait(job["job_id"], progress=True)
    assert final["status"] == "completed" and final["processed_texts"] == 3
    assert client.last_wait_transport == "websocket"
    results = list(client.results(job["job_id"]))
    assert [r["index"] for r in results] == [0, 1, 2]
    assert results[0]["label"] == "POSITIVE" and results[1]["label"] == "NEGATIVE"


def test_wait_falls_back_to_polling():
    with Client(URL, api_key=KEY, use_websocket=False) as c:
        job = c.submit(TEXTS)
        assert c.wait(job["job_id"], poll_interval=0.1)["status"] == "completed"
        assert c.last_wait_transport == "polling"


def test_results_iterate_every_page_with_custom_ids(client):
    items = [{"text": f"{TEXTS[i % 3]} #{i}", "custom_id": f"row-{i}"} for i in range(250)]
    job = client.submit(items)
    client.wait(job["job_id"])
    results = list(client.results(job["job_id"], page_size=100))
    assert [r["custom_id"] for r in results] == [f"row-{i}" for i in range(250)]


def test_download_writes_every_result_in_order(client, tmp_path):
    items = [{"text": f"{TEXTS[i % 3]} #{i}", "custom_id": f"row-{i}"} for i in range(250)]
    job = client.submit(items)
    client.wait(job["job_id"])
    path = tmp_path / "results.jsonl"
    assert client.download(job["job_id"], str(path)) == 250
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == list(client.results(job["job_id"]))
    assert client.download(job["job_id"], str(tmp_path / "errors.jsonl"), errors=True) == 0
    with pytest.raises(ApiError) as e:
        client.download("no-such-job", str(tmp_path / "none.jsonl"))
    assert e.value.status == 404


def test_an_input_url_the_key_may_not_read_is_forbidden(client):
    with pytest.raises(ApiError) as e:
        client.submit(input_url="s3://not-an-input-bucket/texts.jsonl")
    assert (e.value.status, e.value.field) == (403, "input_url")
    with pytest.raises(ApiError) as e:
        client.submit()
    assert (e.value.status, e.value.field) == (422, "texts")


def test_predict_batch_and_sync_predict(client):
    labels = [r["label"] for r in client.predict_batch(TEXTS[:2])]
    assert labels == ["POSITIVE", "NEGATIVE"]
    assert [r["label"] for r in client.predict(TEXTS[:2])] == labels


def test_cancel(client):
    # 1,000 distinct texts: no result cache can finish the job before the cancel lands.
    job = client.submit([f"{TEXTS[i % 3]} (review {i})" for i in range(1000)], priority="low")
    client.cancel(job["job_id"])
    assert client.wait(job["job_id"])["status"] == "cancelled"
    with pytest.raises(ApiError) as e:
        client.cancel(job["job_id"])
    assert e.value.status == 409


def test_metadata_and_the_job_list(client):
    tag = f"run-{os.getpid()}"
    ids = []
    for i in range(3):
        ids.append(client.submit(TEXTS, priority="low", metadata={"tag": tag, "n": str(i)})["job_id"])
        time.sleep(1.1)  # creation times are in seconds
    assert client.status(ids[0])["metadata"] == {"tag": tag, "n": "0"}
    for job_id in ids:
        client.wait(job_id)
    # Newest first, two a page, across pages; only this run's jobs carry its tag.
    mine = [j["job_id"] for j in client.list(priority="low", page_size=2) if j.get("metadata", {}).get("tag") == tag]
    assert mine == ids[::-1]
    assert all(j["status"] == "completed" for j in client.list(status="completed", page_size=100))
    with pytest.raises(ApiError) as e:
        client.submit(TEXTS, metadata={"bad key": "x"})
    assert (e.value.status, e.value.field) == (422, "metadata.bad key")


def test_a_repeated_submit_with_its_idempotency_key_is_the_same_job(client):
    key = f"retry-{os.getpid()}-{time.time()}"
    first = client.submit(TEXTS, idempotency_key=key)
    assert client.submit(TEXTS, idempotency_key=key)["job_id"] == first["job_id"]
    assert client.submit(TEXTS)["job_id"] != first["job_id"]


def test_errors_name_the_field(client):
    with pytest.raises(ApiError) as e:
        client.submit(["fine", "   "])
    assert (e.value.status, e.value.error, e.value.field) == (422, "validation_error", "texts[1]")
    with pytest.raises(ApiError) as e:
        client.status("no-such-job")
    assert e.value.status == 404
    if KEY:
        with Client(URL, api_key="not-a-valid-key") as bad, pytest.raises(ApiError) as e:
            bad.queue_status()
        assert e.value.status == 401


def test_the_async_client():
    async def run():
        async with AsyncClient(URL, api_key=KEY) as c:
            job = await c.submit(TEXTS, priority="high")
            final = await c.wait(job["job_id"], timeout=120)
            assert final["status"] == "completed" and final["processed_texts"] == 3
            labels = [r["label"] async for r in c.results(job["job_id"], page_size=2)]
            assert labels[:2] == ["POSITIVE", "NEGATIVE"] and len(labels) == 3
            assert [j["job_id"] async for j in c.list(page_size=100)].count(job["job_id"]) == 1
            assert [r["label"] for r in await c.predict_batch(TEXTS[:2])] == ["POSITIVE", "NEGATIVE"]
            with pytest.raises(ApiError) as e:
                await c.status("no-such-job")
            assert e.value.status == 404

    asyncio.run(run())


def test_wait_keeps_its_timeout_on_the_websocket():
    # 1,000 distinct low-priority texts: not done in a quarter of a second.
    job = None
    with Client(URL, api_key=KEY) as c:
        job = c.submit([f"{TEXTS[i % 3]} (slow {i})" for i in range(1000)], priority="low")
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            c.wait(job["job_id"], timeout=0.25)
        assert time.monotonic() - began < 5
        c.cancel(job["job_id"])


@pytest.mark.skipif(not LIMITED, reason="KUBESENTIMENT_API_LIMITED is not set")
def test_a_429_is_retried_after_its_retry_after():
    with Client(LIMITED, api_key=KEY, max_retries=0) as c:
        with pytest.raises(ApiError) as e:
            for _ in range(200):
                c.queue_status()
        assert e.value.status == 429 and e.value.retry_after is not None and e.value.retry_after >= 1
    with Client(LIMITED, api_key=KEY, max_retries=5) as c:
        began = time.monotonic()
        for _ in range(3):
            c.queue_status()
        # Over the limit, each call waited for the quota, as Retry-After said, and succeeded.
        assert time.monotonic() - began >= 1.0


@pytest.mark.skipif(not FILES, reason="KUBESENTIMENT_FILES is not set")
def test_a_hundred_thousand_text_file_job_downloads_in_order(client, tmp_path):
    n = 100_000
    source = tmp_path / "texts.jsonl"
    with open(source, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"{TEXTS[i % 3]} (line {i})", "id": f"line-{i}"}) + "\n")
    job = client.submit_file(str(source), priority="high")
    final = client.wait(job["job_id"], timeout=900)
    assert final["status"] == "completed" and final["processed_texts"] == n, final
    results = tmp_path / "results.jsonl"
    assert client.download(job["job_id"], str(results)) == n
    with open(results) as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            assert (r["index"], r["custom_id"]) == (i, f"line-{i}") and r["label"] in ("POSITIVE", "NEGATIVE", "NEUTRAL"), r


@pytest.mark.skipif(not FILES, reason="KUBESENTIMENT_FILES is not set")
def test_the_async_client_submits_a_file(tmp_path):
    source = tmp_path / "few.txt"
    source.write_text("\n".join(TEXTS) + "\n")

    async def run():
        async with AsyncClient(URL, api_key=KEY) as c:
            job = await c.submit_file(str(source))
            assert (await c.wait(job["job_id"], timeout=120))["processed_texts"] == 3
            out = tmp_path / "out.jsonl"
            assert await c.download(job["job_id"], str(out)) == 3

    asyncio.run(run())


@pytest.mark.skipif(not FILES, reason="KUBESENTIMENT_FILES is not set")
def test_an_upload_is_deleted(client, tmp_path):
    source = tmp_path / "few.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    file = client.upload(str(source))
    assert client.delete_file(file["file_id"]) == {"file_id": file["file_id"], "deleted": True}
    with pytest.raises(ApiError) as e:
        client.delete_file(file["file_id"])
    assert e.value.status == 404


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_callback_arrives_signed_with_the_api_keys_signing_key(client):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        job = client.submit(TEXTS, callback_url=url)
        deadline = time.monotonic() + 60
        while client.status(job["job_id"]).get("callback", {}).get("state") != "delivered":
            assert time.monotonic() < deadline, client.status(job["job_id"])
            time.sleep(0.2)
        headers, body = _Receiver.got[-1]
        event = verify_callback(KEY, headers, body)
        assert event["type"] == "io.kubesentiment.batch.completed"
        assert event["data"]["job_id"] == job["job_id"] and event["data"]["processed_texts"] == 3
        with pytest.raises(InvalidCallback):
            verify_callback(KEY, headers, body.replace(b"completed", b"cancelled"))
        with pytest.raises(InvalidCallback):
            verify_callback("another-key-123", headers, body)
        with pytest.raises(InvalidCallback):
            verify_callback(KEY, headers, body, now=time.time() + 3600)
        with pytest.raises(ApiError) as e:
            client.submit(TEXTS, callback_url="not a url")
        assert e.value.status == 422 and e.value.field == "callback_url"
    finally:
        server.shutdown()
