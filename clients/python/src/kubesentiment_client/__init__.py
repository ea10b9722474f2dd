"""Client of the KubeSentiment batch sentiment REST API.

    from kubesentiment_client import Client

    client = Client("http://localhost:8000", api_key="...")
    job = client.submit(["I love it", "I hate it"], priority="high")
    client.wait(job["job_id"], progress=True)
    for result in client.results(job["job_id"]):
        print(result["index"], result["label"], result["score"])
"""

from .client import ApiError, Client

__all__ = ["ApiError", "Client"]
