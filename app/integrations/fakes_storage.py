"""A fake S3-compatible object store for tests: verifies SigV4 pre-signed URLs, keeps objects.

Path-style only (`/<bucket>/<key>`), as `S3Storage` addresses it. It checks what S3 checks of
a query-string-signed request (algorithm, credential scope, expiry, signed headers present,
signature) and answers S3's XML errors: `SignatureDoesNotMatch` and `AccessDenied` (expired)
with 403, `NoSuchKey` and `NoSuchBucket` with 404. Faults and call recording come from
`FakeServer`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from app.integrations.fakes import FakeResponse, FakeServer, RecordedCall
from app.integrations.storage import Clock, Credentials, sigv4_signature, utc_now


@dataclass(frozen=True)
class StoredObject:
    content: bytes
    content_type: str


class FakeS3(FakeServer):
    name = "fake-s3"

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        *,
        bucket: str,
        region: str = "us-east-1",
        clock: Clock = utc_now,
    ) -> None:
        super().__init__()
        self.credentials = Credentials(access_key_id, secret_access_key, region)
        self.bucket = bucket
        self.clock = clock
        self.objects: dict[str, StoredObject] = {}

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": len(self._calls), "objects": sorted(self.objects)}

    def handle_call(self, call: RecordedCall) -> FakeResponse:
        bucket, _, encoded_key = call.path.removeprefix("/").partition("/")
        if unquote(bucket) != self.bucket:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist")
        refusal = self._authenticate(call)
        if refusal is not None:
            return refusal
        key = unquote(encoded_key)
        if call.method == "PUT":
            if call.headers.get("if-none-match") == "*" and key in self.objects:
                return _error(412, "PreconditionFailed", "The object exists already.")
            content_type = call.headers.get("content-type", "binary/octet-stream")
            self.objects[key] = StoredObject(call.raw, content_type)
            etag = hashlib.md5(call.raw, usedforsecurity=False).hexdigest()
            return FakeResponse(200, content=b"", headers={"ETag": f'"{etag}"'})
        if call.method == "GET":
            stored = self.objects.get(key)
            if stored is None:
                return _error(404, "NoSuchKey", "The specified key does not exist.")
            query = dict(parse_qsl(call.query, keep_blank_values=True))
            headers = {"Content-Type": query.get("response-content-type", stored.content_type)}
            if "response-content-disposition" in query:
                headers["Content-Disposition"] = query["response-content-disposition"]
            return FakeResponse(200, content=stored.content, headers=headers)
        return _error(405, "MethodNotAllowed", "The method is not allowed for this resource.")

    def _authenticate(self, call: RecordedCall) -> FakeResponse | None:
        query = dict(parse_qsl(call.query, keep_blank_values=True))
        signature = query.pop("X-Amz-Signature", None)
        if signature is None or query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            return _error(403, "AccessDenied", "Query-string authentication is required.")
        try:
            access_key, day, region, service, terminal = query["X-Amz-Credential"].split("/")
            amz_date = query["X-Amz-Date"]
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires = int(query["X-Amz-Expires"])
            signed_names = query["X-Amz-SignedHeaders"].split(";")
        except (KeyError, ValueError):
            return _error(400, "AuthorizationQueryParametersError", "Malformed query auth.")
        scope = (access_key, day, region, service, terminal)
        expected_scope = (
            self.credentials.access_key_id,
            amz_date[:8],
            self.credentials.region,
            "s3",
            "aws4_request",
        )
        if scope != expected_scope:
            return _error(403, "InvalidAccessKeyId", "The credential scope is not valid.")
        if not 1 <= expires <= 604_800:
            return _error(400, "AuthorizationQueryParametersError", "X-Amz-Expires is invalid.")
        if self.clock() > signed_at + timedelta(seconds=expires):
            return _error(403, "AccessDenied", "Request has expired")
        if "host" not in signed_names or any(name not in call.headers for name in signed_names):
            return _error(403, "SignatureDoesNotMatch", "A signed header is missing.")
        expected = sigv4_signature(
            self.credentials,
            method=call.method,
            path=call.path,
            query=query,
            headers={name: call.headers[name] for name in signed_names},
            amz_date=amz_date,
        )
        if not hmac.compare_digest(expected, signature):
            return _error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None


def _error(status: int, code: str, message: str) -> FakeResponse:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return FakeResponse(status, content=xml.encode(), headers={"Content-Type": "application/xml"})
