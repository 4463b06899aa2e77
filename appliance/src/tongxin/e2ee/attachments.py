"""Attachments encrypted client-side with a random per-file key (docs/e2ee.md section 8)."""

from __future__ import annotations

import os

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import TamperedError
from tongxin.proto import e2ee_pb2 as e2

UPLOAD_NAME = "e2ee.bin"
UPLOAD_CONTENT_TYPE = "application/octet-stream"


def encrypt(suite: CryptoSuite, data: bytes, name: str,
            content_type: str) -> tuple[bytes, e2.Attachment]:
    """(blob to upload, attachment description without file_id)."""
    key = os.urandom(suite.aead_key_size)
    nonce = os.urandom(enc.NONCE_SIZE)
    blob = suite.aead_encrypt(key, nonce, data, enc.attachment_aad(suite.name))
    return blob, e2.Attachment(name=name, size=len(data), content_type=content_type, key=key,
                               nonce=nonce, digest=suite.hash(blob))


def decrypt(suite: CryptoSuite, blob: bytes, att: e2.Attachment) -> bytes:
    if suite.hash(blob) != att.digest:
        raise TamperedError("downloaded attachment does not match its digest")
    try:
        data = suite.aead_decrypt(att.key, att.nonce, blob, enc.attachment_aad(suite.name))
    except (CryptoError, ValueError) as exc:
        raise TamperedError("attachment does not open") from exc
    if len(data) != att.size:
        raise TamperedError("attachment size does not match")
    return data
