"""The parts of multi-endpoint reconnecting that need no network: the back-off
schedule, the endpoint list, and the seq cursors that decide what a reconnect syncs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tongxin.client import Client
from tongxin.client.endpoints import (
    RECONNECTED,
    Backoff,
    ConnectionEvent,
    NoEndpointAvailable,
    SeqCursors,
    parse_endpoints,
)
from tongxin.config import ConfigError, client_endpoint_list, load_config


def test_backoff_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    b = Backoff(initial=0.25, factor=2.0, cap=4.0, jitter=0.0)
    assert [b.delay(n) for n in range(8)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    # Far past the cap the exponent must not overflow a float.
    assert b.delay(10_000) == 4.0


def test_backoff_jitter_stays_within_its_band_and_spreads() -> None:
    b = Backoff(initial=0.25, cap=4.0, jitter=0.5)
    rng = random.Random(7)
    for n in range(1, 12):
        ceiling = min(4.0, 0.25 * 2 ** (n - 1))
        draws = [b.delay(n, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in draws)
        # Clients dropped together must not all come back in the same instant.
        assert max(draws) - min(draws) > ceiling * 0.3


def test_backoff_first_attempt_never_waits() -> None:
    assert Backoff(jitter=1.0).delay(0, random.Random(1)) == 0.0


def test_backoff_bounds_by_attempts_or_deadline() -> None:
    by_count = Backoff(max_attempts=3, deadline=0)
    assert not by_count.exhausted(2, 1e9)
    assert by_count.exhausted(3, 0.0)
    by_time = Backoff(deadline=5.0)
    assert not by_time.exhausted(10_000, 4.9)
    assert by_time.exhausted(1, 5.0)
    assert not Backoff(max_attempts=0, deadline=0).exhausted(10**9, 1e9)


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"factor": 0.5}, {"cap": 0.1},
                                    {"jitter": 1.5}, {"max_attempts": -1}, {"deadline": -1}])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_endpoint_list_accepts_a_url_a_comma_list_or_repeats_in_order() -> None:
    assert parse_endpoints("ws://a/ws") == ("ws://a/ws",)
    assert parse_endpoints("ws://a/ws, ws://b/ws,,") == ("ws://a/ws", "ws://b/ws")
    assert parse_endpoints(["ws://a/ws,ws://b/ws", "ws://c/ws", "ws://a/ws"]) == (
        "ws://a/ws", "ws://b/ws", "ws://c/ws")
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


def test_client_reconnects_by_default_only_with_several_endpoints() -> None:
    assert Client("ws://a/ws").backoff is None
    assert Client("ws://a/ws,ws://b/ws").backoff == Backoff()
    assert Client(["ws://a/ws"], reconnect=True).backoff == Backoff()
    assert Client(["ws://a/ws", "ws://b/ws"], reconnect=False).backoff is None
    c = Client(["ws://a/ws", "ws://b/ws"])
    assert c.url == c.endpoint == "ws://a/ws" and c.endpoints == ("ws://a/ws", "ws://b/ws")


def test_moved_is_true_only_for_a_reconnect_to_another_entry() -> None:
    assert ConnectionEvent(RECONNECTED, "ws://b/ws", "ws://a/ws").moved
    assert not ConnectionEvent(RECONNECTED, "ws://a/ws", "ws://a/ws").moved


def test_no_endpoint_available_names_every_failure() -> None:
    err = NoEndpointAvailable([("ws://a/ws", ConnectionRefusedError("refused")),
                               ("ws://b/ws", TimeoutError())])
    assert isinstance(err, OSError)
    assert "ws://a/ws: refused" in str(err) and "ws://b/ws: timed out" in str(err)


def test_cursor_advances_over_contiguous_seqs_and_drops_repeats() -> None:
    c = SeqCursors()
    c.learn("g:1", 10)  # history up to 10 existed when we learnt the conversation
    assert c.mark("g:1") == 10
    assert c.see("g:1", 11) and c.see("g:1", 13)
    assert c.mark("g:1") == 11  # 12 not held yet: a reconnect syncs from 11
    assert not c.see("g:1", 13) and not c.see("g:1", 11)
    assert c.see("g:1", 12)
    assert c.mark("g:1") == 13


def test_cursor_lets_a_push_racing_the_answer_through_once_known() -> None:
    c = SeqCursors()
    c.learn("d:x", 5)
    # DELIVER 5 may arrive after CONV_INFO said last_seq 5: it is not a repeat.
    assert c.see("d:x", 5)
    # A second copy of that late push (re-published after a re-sent SEND) is a repeat.
    assert not c.see("d:x", 5)
    assert c.see("d:x", 4) and not c.see("d:x", 4)
    c.learn("d:x", 50)  # learning again does not move a tracked conversation
    assert c.mark("d:x") == 5


def test_cursor_of_a_conversation_first_seen_in_a_push() -> None:
    c = SeqCursors()
    assert c.see("g:new", 7)  # added to a group at seq 7: nothing before is ours
    assert c.mark("g:new") == 7 and "g:new" in c
    assert c.conversations() == ["g:new"]


def test_cursor_remembers_a_bounded_number_of_late_pushes() -> None:
    c = SeqCursors(max_gap_entries=3)
    c.learn("g:1", 100)
    for seq in (90, 91, 92, 93):
        assert c.see("g:1", seq)
    assert not c.see("g:1", 93)
    assert c.see("g:1", 90)  # the oldest was forgotten: let through, not held for ever


def test_cursor_stops_waiting_for_a_seq_that_never_comes() -> None:
    c = SeqCursors(max_gap_entries=3)
    c.learn("g:1", 0)
    for seq in (2, 3, 4, 5):  # 1 never arrives
        assert c.see("g:1", seq)
    assert c.mark("g:1") == 5


def test_client_endpoints_key_is_checked_and_kept_in_order() -> None:
    cfg = load_config(None)
    assert cfg.server.client_endpoints == ""
    assert client_endpoint_list(" wss://a/ws,wss://b/ws , wss://a/ws,") == ["wss://a/ws",
                                                                              "wss://b/ws"]


def test_client_endpoints_must_be_websocket_urls(tmp_path: Path) -> None:
    path = tmp_path / "tongxin.yaml"
    path.write_text("server:\n  client_endpoints: wss://a/ws,https://b/\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("server.client_endpoints: 'https://b/'")):
        load_config(path)
    path.write_text("server:\n  client_endpoints: ws://a:8080/ws,wss://b/ws\n", encoding="utf-8")
    assert load_config(path).server.client_endpoints == "ws://a:8080/ws,wss://b/ws"
