"""Create a bucket on an S3-compatible server with the standard library only
(the test host has no S3 client before the node is installed, and MinIO's
`mc` is not built): one CreateBucket request signed with AWS Signature V4.

    S3_ACCESS_KEY=... S3_SECRET_KEY=... python3 make_bucket.py ENDPOINT BUCKET CAFILE [lock]

With ``lock``, the bucket is made with S3 Object Lock (x-amz-bucket-object-lock-enabled).

An existing bucket of the same owner is fine (prints "exists").
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

REGION = "us-east-1"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def main() -> int:
    endpoint, bucket, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
    lock = sys.argv[4:5] == ["lock"]
    access, secret = os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"]
    host = urllib.parse.urlsplit(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-bucket-object-lock-enabled": "true" if lock else "",
               "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    headers = {k: v for k, v in headers.items() if v}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["PUT", f"/{bucket}", "",
                           *(f"{k}:{headers[k]}" for k in sorted(headers)), "",
                           signed, payload])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), REGION), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{endpoint.rstrip('/')}/{bucket}", method="PUT", headers={
        **{k: v for k, v in headers.items() if k != "host"},
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                         f"SignedHeaders={signed}, Signature={signature}"})
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as res:
            print(f"created {bucket} ({res.status})")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 409 and "BucketAlreadyOwnedByYou" in body:
            print(f"exists {bucket}")
            return 0
        print(f"CreateBucket {bucket}: {exc.code} {body}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
