"""Who may see whose presence and last-seen (``presence.visibility``).

Online status and last-seen tell when someone works, sleeps or is away: in an
organisation that is personal data, and not everyone's business. With
``shared`` (the default) a user sees their own and that of people who share
at least one conversation with them, direct or group: the people they work
with. There are no organisation units in the account model yet; when there
are, "same unit" belongs here too. ``all`` is the old behaviour: everyone
sees everyone.

Someone not visible is not left out silently: the answer to PRESENCE_SUB
carries an entry with status ``PRESENCE_STATUS_UNSPECIFIED``, no devices and
no last-seen (docs/protocol.md), and the server does not watch them for the
subscriber, so no push reveals them either.
"""

from __future__ import annotations

from collections.abc import Iterable

from tongxin.chat.members import MemberCache
from tongxin.store.ports import ChatStore


async def visible_to(viewer: str, wanted: Iterable[str], policy: str, store: ChatStore,
                     members: MemberCache) -> set[str]:
    """The users of ``wanted`` whose presence ``viewer`` may see."""
    want = set(wanted)
    if policy == "all":
        return want
    seen = want & {viewer}
    rest = want - seen
    if not rest:
        return seen
    # The viewer's conversations, each member list from the cache the fan-out
    # keeps warm anyway; stop as soon as everyone asked about is placed.
    for conversation_id, _ in await store.memberships(viewer):
        found = rest & await members.get(conversation_id)
        if found:
            seen |= found
            rest -= found
            if not rest:
                break
    return seen
