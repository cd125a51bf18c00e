"""Verify a webhook request signed by herald with the Standard Webhooks
reference library (PyPI `standardwebhooks`), as a receiver would.

Usage: verify_standard_webhook.py SAMPLE.json SECRET
SAMPLE.json is written by the ignored test
`write_a_signed_request_for_the_reference_verifier` (adapters/tests/webhook.rs):
{"body": "<raw body>", "headers": {"webhook-id", "webhook-timestamp", "webhook-signature"}}.
Exits non-zero when the request does not verify, or when a tampered copy does.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sample_path, secret = sys.argv[1], sys.argv[2]
with open(sample_path, encoding="utf-8") as sample_file:
    sample = json.load(sample_file)
body, headers = sample["body"], sample["headers"]
hook = Webhook(secret)

payload = hook.verify(body, headers)
assert payload["delivery_id"] == headers["webhook-id"], payload
print(f"verified: webhook-id {headers['webhook-id']}, {len(body.encode())} bytes")

tampered = [
    ("body", body.replace("survive", "SURVIVE"), headers),
    ("id", body, {**headers, "webhook-id": "another-id"}),
    ("timestamp", body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}),
    ("stale", body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 600)}),
]
for what, tampered_body, tampered_headers in tampered:
    try:
        hook.verify(tampered_body, tampered_headers)
    except WebhookVerificationError:
        print(f"refused as it must be: tampered {what}")
    else:
        sys.exit(f"a request with a tampered {what} verified")
