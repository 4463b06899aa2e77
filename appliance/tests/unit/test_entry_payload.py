"""A DELIVER's payload built by splicing the stored content (chat.service.entry_payload)
is byte for byte what serializing the whole Message gives, for every kind of entry."""

from __future__ import annotations

import pytest

from tongxin.chat.service import entry_payload, entry_to_pb
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import Entry


def _entry(content: pb.Content | None, **kw: object) -> Entry:
    base: dict[str, object] = dict(
        conversation_id="d:u_0001:u_0002", sender_id="u_0001", sender_device="phone",
        client_msg_id="c-1", sent_at=1_700_000_000_123, kind=pb.CHAT, seq=42,
        content=content.SerializeToString() if content is not None else b"")
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


CONTENTS = [
    pb.Content(text="hi"),
    pb.Content(text="x" * 127),          # length fits one varint byte ...
    pb.Content(text="x" * 200),          # ... and two
    pb.Content(text="长" * 40_000),      # three
    pb.Content(file=pb.FileInfo(file_id="f_1", name="a.pdf", size=123)),
]


@pytest.mark.parametrize("content", CONTENTS)
def test_chat_entry_matches_full_serialization(content: pb.Content) -> None:
    e = _entry(content)
    got = entry_payload(e)
    assert got == entry_to_pb(e).SerializeToString()
    assert pb.Message.FromString(got).content == content


@pytest.mark.parametrize("extra", [
    {"recalled": True}, {"edited_at": 5}, {"unavailable": True},
    {"kind": pb.EDITED, "target_seq": 7},
    {"kind": pb.SYSTEM, "system": pb.SystemEvent(kind=pb.SystemEvent.CREATED).SerializeToString()},
    {"seq": 0, "sent_at": 0, "sender_device": ""},
])
def test_other_entries_match_full_serialization(extra: dict[str, object]) -> None:
    e = _entry(pb.Content(text="hello"), **extra)
    assert entry_payload(e) == entry_to_pb(e).SerializeToString()


def test_recall_entry_without_content() -> None:
    e = _entry(None, kind=pb.RECALLED, target_seq=3)
    assert entry_payload(e) == entry_to_pb(e).SerializeToString()
    assert not pb.Message.FromString(entry_payload(e)).HasField("content")
