"""The client against a real facade: KUBESENTIMENT_API (and KUBESENTIMENT_API_KEY) name it.
The Rust test `python_client` in tests/tests/facade.rs starts one and runs this suite."""

import json
import os
import time

import pytest

from kubesentiment_client import ApiError, Client

URL = os.environ.get("KUBESENTIMENT_API")
KEY = os.environ.get("KUBESENTIMENT_API_KEY")
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
