"""The SigV4 query signer against the example AWS publishes for pre-signed URLs
("Authenticating Requests: Using Query Parameters", Amazon S3 API reference)."""

from __future__ import annotations

from datetime import UTC, datetime

from app.integrations.storage import Credentials, sigv4_canonical_query, sigv4_presign

AWS_EXAMPLE = Credentials(
    "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1"
)
EXPECTED = (
    "https://examplebucket.s3.amazonaws.com/test.txt"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z"
    "&X-Amz-Expires=86400"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    "&X-Amz-SignedHeaders=host"
)


def test_the_published_example() -> None:
    url = sigv4_presign(
        AWS_EXAMPLE,
        method="GET",
        url="https://examplebucket.s3.amazonaws.com/test.txt",
        now=datetime(2013, 5, 24, tzinfo=UTC),
        expires_in=86400,
    )
    assert url == EXPECTED


def test_any_change_changes_the_signature() -> None:
    def signature(**changes: object) -> str:
        arguments: dict[str, object] = {
            "method": "GET",
            "url": "https://examplebucket.s3.amazonaws.com/test.txt",
            "now": datetime(2013, 5, 24, tzinfo=UTC),
            "expires_in": 86400,
            **changes,
        }
        url = sigv4_presign(AWS_EXAMPLE, **arguments)  # type: ignore[arg-type]
        return url.split("X-Amz-Signature=")[1].split("&")[0]

    base = signature()
    variants = [
        signature(method="PUT"),
        signature(url="https://examplebucket.s3.amazonaws.com/test2.txt"),
        signature(expires_in=86399),
        signature(now=datetime(2013, 5, 24, 0, 0, 1, tzinfo=UTC)),
        signature(headers={"Content-Type": "text/plain"}),
        signature(extra_query={"response-content-type": "text/plain"}),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_canonical_query_encoding() -> None:
    # RFC 3986 unreserved characters stay; everything else, "/" and space included, is %XX.
    assert sigv4_canonical_query({"b": "a b/c~d", "a": "x*y'z"}) == "a=x%2Ay%27z&b=a%20b%2Fc~d"
