"""Schemathesis hooks for openapi/ci.sh: every request carries a fresh, valid token of a new
user of the dev tenant, minted by the simulated Entra ID of `sync-gateway dev`.

One token for the whole run would spend the per-caller limit (10 a minute, burst 3) on the
first few requests and leave everything behind it untested; new users share only the tenant's
limit (120 a minute, burst 30), whose 429s the document describes.
"""

import json
import os
import urllib.request
import uuid

import schemathesis

ENTRA = os.environ["SYNC_GATEWAY_DEV_ENTRA"]
TENANT = os.environ["SYNC_GATEWAY_DEV_TENANT"]


@schemathesis.auth(refresh_interval=None, retry_on=[])
class FreshDevUser:
    """A new dev user's token per request (never cached, never retried)."""

    def get(self, case, ctx):
        body = json.dumps({"tenant_id": TENANT, "object_id": str(uuid.uuid4())}).encode()
        request = urllib.request.Request(
            f"{ENTRA}/_sim/tokens",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)["access_token"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
