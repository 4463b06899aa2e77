"""Presence and last-seen follow ``presence.visibility`` (presence/visibility.py).

Default ``shared``: a user sees their own and that of people who share a
conversation with them; anyone else is answered PRESENCE_STATUS_UNSPECIFIED with
no devices and no last-seen, and is never pushed.
"""

from __future__ import annotations

import asyncio

from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, Event
from tongxin.proto import tongxin_pb2 as pb


async def settled(c: Client) -> list[Event]:
    """Every event pushed to ``c`` before its PING was answered."""
    await c.ping()
    return c.drain_events()


def entries(update: pb.PresenceUpdate) -> dict[str, tuple[int, int, bool]]:
    return {e.user_id: (e.status, e.devices, e.last_seen_ms > 0) for e in update.entries}


async def offline(node: RunningNode, c: Client, user_id: str) -> None:
    await c.close()
    async with asyncio.timeout(5):
        while user_id in node.node.hub.devices:  # noqa: ASYNC110 -- no event to await
            await asyncio.sleep(0.02)


async def test_shared_conversation_decides_who_is_visible(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory()
    alice = await node.user("alice")
    bob = await node.user("bob")
    carol = await node.user("carol")
    dave = await node.user("dave")
    await alice.direct("bob")
    await alice.create_group("ops", ["dave"])
    # Carol was online and went away: she has a last-seen to hide.
    carol_id = carol.user_id
    await offline(node, carol, carol_id)

    got = entries(await alice.subscribe_presence([bob.user_id, carol_id, dave.user_id,
                                                  alice.user_id]))
    assert got == {bob.user_id: (pb.ONLINE, 1, True), dave.user_id: (pb.ONLINE, 1, True),
                   alice.user_id: (pb.ONLINE, 1, True),
                   carol_id: (pb.PRESENCE_STATUS_UNSPECIFIED, 0, False)}

    # No push reveals carol either; bob's going offline is pushed.
    carol = await node.user("carol", device_id="again")
    await offline(node, carol, carol_id)
    assert not [e for e in await settled(alice) if e.type == pb.PRESENCE]
    await offline(node, bob, bob.user_id)
    down = (await alice.next_event(pb.PRESENCE)).message
    assert [(e.user_id, e.status) for e in down.entries] == [(bob.user_id, pb.OFFLINE)]

    # Sharing a conversation later makes her visible at the next subscription.
    await alice.direct("carol")
    again = entries(await alice.subscribe_presence([carol_id]))
    assert again == {carol_id: (pb.OFFLINE, 0, True)}


async def test_visibility_all_shows_everyone(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(presence={"visibility": "all"})
    alice = await node.user("alice")
    carol = await node.user("carol")
    got = entries(await alice.subscribe_presence([carol.user_id]))
    assert got == {carol.user_id: (pb.ONLINE, 1, True)}
