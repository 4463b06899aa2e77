"""The aiobotocore S3 client for the S3-compatible stores the node talks to.

One set-up for the files backend (files/s3.py) and the backup target
(backup/s3_target.py): Signature V4, path-style addressing (MinIO, Ceph RGW
and most on-premises stores serve no virtual-host buckets), botocore's
standard retry mode, and empty keys sent as none (anonymous). What differs
between the callers is a parameter: attempts, timeouts, the connection pool.
The TLS trust is botocore's: the system's CAs, or $AWS_CA_BUNDLE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3.client import S3Client

# The error codes S3 stores answer for an object or bucket that is not there.
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: ClientError) -> str:
    """The S3 error code of ``exc`` ("NoSuchKey", "PreconditionFailed", ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def create_client(endpoint: str, region: str, access_key: str, secret_key: str, *,
                  max_attempts: int, read_timeout: float, max_pool_connections: int,
                  connect_timeout: float = 10) -> ClientCreatorContext[S3Client]:
    """An S3 client (an async context manager) for ``endpoint``."""
    config = AioConfig(
        signature_version="s3v4", s3={"addressing_style": "path"},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        max_pool_connections=max_pool_connections)
    return get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None, config=config)
