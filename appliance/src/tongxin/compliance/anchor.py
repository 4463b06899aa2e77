"""Anchors: copies of the newest signed head kept off the node.

Signed heads in the compliance store prove that the records they cover were not
rewritten, but whoever can delete records can delete the newest heads with them:
the chain then ends at an older head and still verifies. So every signed head is
also written as an anchor to places the store's writer should not control: the
audit archive (``anchor.json`` next to ``manifest.json``: a bucket, the shared
database or a mounted ``audit_archive_dir``), ``compliance.audit_anchor_dir`` (a
directory on another host), and whatever copy an auditor keeps and passes to
``tongxin audit verify --anchor``. Verification fails when the chain is shorter
than, or differs from, an anchored head.

An anchor file is canonical JSON: the signed head (``seq``, ``hash``, ``ts``,
``node``, ``key_fp``, ``signature``) with ``"format": "tongxin-audit-anchor"`` and
``"v": 1``. Its signature is the head's, so an anchor is trusted exactly like a
head: by a pinned key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tongxin.compliance import chain
from tongxin.compliance.ports import SignedHead

ANCHOR = "anchor.json"  # its name in the archive's objects
ANCHOR_FORMAT = "tongxin-audit-anchor"


def anchor_file_name(chain_name: str) -> str:
    """The file in ``compliance.audit_anchor_dir``: one per chain, so several nodes or
    installations may share one anchor directory."""
    return f"audit-anchor-{chain_name}.json"


def encode_anchor(head: SignedHead) -> bytes:
    return chain.canonical({
        "format": ANCHOR_FORMAT, "v": 1, "seq": head.seq, "hash": head.hash, "ts": head.ts,
        "node": head.node, "key_fp": head.key_fp, "signature": head.signature,
    }).encode("utf-8")


def decode_anchor(body: bytes) -> SignedHead:
    """The signed head in an anchor file; ValueError if it is not one."""
    try:
        obj = json.loads(body)
        if not isinstance(obj, dict) or obj.get("format") != ANCHOR_FORMAT:
            raise ValueError("not a tongxin audit anchor")
        return SignedHead(int(obj["seq"]), str(obj["hash"]), int(obj["ts"]), str(obj["node"]),
                          str(obj["key_fp"]), str(obj["signature"]))
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged anchor: {exc}") from exc


@dataclass
class AnchorSource:
    """One place an anchor was looked for, and what was there (None: nothing)."""

    where: str
    body: bytes | None
    # An auditor's --anchor must exist; a configured place may not have one yet (no
    # head signed since it was configured).
    required: bool = False
