"""Compliance export: one user's or one conversation's messages for a time range.

An export is a directory holding

* ``messages.jsonl`` — one entry per line, canonical JSON: conversation, seq,
  sender, times, kind and the content as the protobuf JSON mapping (recalled
  messages included, flagged ``recalled``: the store keeps their content for
  exactly this purpose);
* ``manifest.json`` — canonical JSON: what was asked (scope, range), who asked,
  when, how many entries, and the SM3 digest and size of ``messages.jsonl``;
* ``manifest.sig`` — the SM2 signature of the exact bytes of ``manifest.json``
  with the audit signing key (same form as the audit archive's).

A user's export holds the conversations the user is a member of (entries from
the user's join onward) and everything the user sent elsewhere. Entries are
read through the chat store port (``ChatStore.memberships``,
``entries_between``, ``sent_by``): SQLite and MySQL/TiDB alike.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from tongxin.compliance import chain
from tongxin.compliance.keys import AuditKeys, resolve_trust
from tongxin.crypto import SM2_DEFAULT_SIGNER_ID, sm3_digest
from tongxin.crypto.errors import CryptoError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import ChatStore, Entry

FORMAT = "tongxin-export"


def _kind_name(kind: int) -> str:
    try:
        return str(pb.MessageKind.Name(kind))
    except ValueError:
        return str(kind)


def entry_json(e: Entry) -> dict[str, Any]:
    content: Any = None
    if e.content:
        c = pb.Content()
        c.ParseFromString(e.content)
        content = MessageToDict(c)
    system: Any = None
    if e.system:
        s = pb.SystemEvent()
        s.ParseFromString(e.system)
        system = MessageToDict(s)
    return {"conversation_id": e.conversation_id, "seq": e.seq, "sender_id": e.sender_id,
            "sender_device": e.sender_device, "client_msg_id": e.client_msg_id,
            "sent_at": e.sent_at, "kind": _kind_name(e.kind), "target_seq": e.target_seq,
            "recalled": e.recalled, "edited_at": e.edited_at, "content": content,
            "system": system, **({"unavailable": True} if e.unavailable else {})}


async def entries_in_range(history: ChatStore, kind: str, target: str, from_ms: int,
                           to_ms: int) -> list[Entry]:
    out: list[Entry] = []
    if kind == "conversation":
        scopes = [(target, 0)]
    else:
        scopes = await history.memberships(target)
    seen: set[tuple[str, int]] = set()
    for cid, min_seq in scopes:
        after = 0
        while True:
            rows = await history.entries_between(cid, from_ms, to_ms, after, 1000, min_seq)
            for e in rows:
                seen.add((e.conversation_id, e.seq))
                out.append(e)
            if len(rows) < 1000:
                break
            after = rows[-1].seq
    if kind == "user":
        out.extend(e for e in await history.sent_by(target, from_ms, to_ms)
                   if (e.conversation_id, e.seq) not in seen)
    out.sort(key=lambda e: (e.conversation_id, e.seq))
    return out


async def export_messages(history: ChatStore, keys: AuditKeys, out_root: Path, *, kind: str,
                          target: str, target_name: str, from_ms: int, to_ms: int, actor: str,
                          now: int) -> tuple[Path, dict[str, Any]]:
    if kind not in ("user", "conversation"):
        raise ValueError("export scope must be a user or a conversation")
    if to_ms <= from_ms:
        raise ValueError("the export range is empty (to must be after from)")
    entries = await entries_in_range(history, kind, target, from_ms, to_ms)
    export_id = f"exp_{now}_{uuid.uuid4().hex[:8]}"
    out = out_root / export_id
    out.mkdir(parents=True, mode=0o700)
    data = "".join(chain.canonical(entry_json(e)) + "\n" for e in entries).encode("utf-8")
    (out / "messages.jsonl").write_bytes(data)
    manifest = {
        "format": FORMAT, "v": 1, "export_id": export_id,
        "scope": {"kind": kind, "id": target, "name": target_name},
        "from_ms": from_ms, "to_ms": to_ms, "created_at": now, "created_by": actor,
        "records": len(entries),
        "files": [{"name": "messages.jsonl", "bytes": len(data), "sm3": sm3_digest(data).hex()}],
    }
    body = chain.canonical(manifest).encode("utf-8")
    fp, sig = keys.sign(body)
    (out / "manifest.json").write_bytes(body)
    (out / "manifest.sig").write_text(json.dumps({
        "alg": "SM2-with-SM3", "signer_id": SM2_DEFAULT_SIGNER_ID.decode(), "key_fp": fp,
        "signature": sig}, sort_keys=True), encoding="utf-8")
    for p in out.iterdir():
        os.chmod(p, 0o600)
    return out, manifest


def verify_export(path: Path, keys: AuditKeys, pins: Sequence[str],
                  given: Sequence[Path] = ()) -> list[str]:
    """Problems found in an export directory (empty when it verifies). The manifest
    must be signed by a pinned key (``pins``, compliance.audit_trusted_keys), or by one
    of exactly the ``given`` keys (--pubkey): a key merely found in audit-keys/ could
    have been put there with a forged export."""
    problems: list[str] = []
    body = (path / "manifest.json").read_bytes()
    manifest = json.loads(body)
    trust = resolve_trust(keys.found_keys(), pins, given)
    problems += trust.errors
    try:
        sig = json.loads((path / "manifest.sig").read_text(encoding="utf-8"))
        fp = str(sig["key_fp"])
    except (OSError, KeyError, ValueError, TypeError):
        problems.append("manifest signature is missing or damaged")
    else:
        key = trust.keys.get(fp)
        if key is None:
            problems.append(f"manifest is signed by key {fp[:16]}, which is not trusted "
                            f"(pin it in compliance.audit_trusted_keys or give it with --pubkey)")
        else:
            try:
                key.verify(bytes.fromhex(str(sig["signature"])), body)
            except (KeyError, ValueError, CryptoError):
                problems.append("manifest signature does not verify")
    for f in manifest["files"]:
        p = path / f["name"]
        if not p.exists():
            problems.append(f"{f['name']} is missing")
        elif sm3_digest(p.read_bytes()).hex() != f["sm3"]:
            problems.append(f"{f['name']} does not match its SM3 digest")
    return problems
