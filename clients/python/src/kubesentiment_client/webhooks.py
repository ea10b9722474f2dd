"""Checking a completion callback on the receiving side.

The server POSTs a CloudEvent (structured JSON, `application/cloudevents+json`) when a job
ends, with the Standard Webhooks headers `webhook-id`, `webhook-timestamp` and
`webhook-signature` (`v1,` and the base64 of HMAC-SHA256(key, "ID.TIMESTAMP.BODY")). For a
REST job the key is the API key's signing key, `signing_key(api_key)`; the same event may
come more than once (delivery is at least once), always with the same `webhook-id`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Mapping, Optional, Union

#: What an API key signs to make its callback signing key.
SIGNING_CONTEXT = b"kubesentiment-callback-v1"


class InvalidCallback(ValueError):
    """The callback's signature does not verify, or its timestamp is too far from now."""


def signing_key(api_key: str) -> bytes:
    """The key the server signs an API key's callbacks with: HMAC-SHA256(api_key,
    "kubesentiment-callback-v1")."""
    return hmac.new(api_key.encode(), SIGNING_CONTEXT, hashlib.sha256).digest()


def verify_callback(
    key: Union[str, bytes],
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300.0,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """Checks a callback and returns its CloudEvent. `key` is an API key (str) or a raw
    signing key (bytes, for a kubectl batch's own Secret); `headers` may be any mapping
    with lowercase or original names. Raises `InvalidCallback`."""
    raw = signing_key(key) if isinstance(key, str) else key
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
        sent = int(stamp)
    except (KeyError, ValueError) as e:
        raise InvalidCallback(f"missing or malformed webhook headers: {e}") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise InvalidCallback(f"the timestamp {sent} is more than {tolerance:.0f} s from now")
    mac = hmac.new(raw, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    want = base64.b64encode(mac).decode()
    # The header may carry several space-separated signatures (key rotation).
    if not any(s.startswith("v1,") and hmac.compare_digest(s[3:], want) for s in signatures.split()):
        raise InvalidCallback("the signature does not verify")
    event: Dict[str, Any] = json.loads(body)
    if event.get("id") != msg_id:
        raise InvalidCallback("the event id is not the webhook-id")
    return event
