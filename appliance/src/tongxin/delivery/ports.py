"""The delivery port. In-process by default; Kafka in production.

A Delivery is what one node tells every node (itself included): "push this
frame to these users' connected devices". It carries the encoded payload so
no node needs to read the store to fan out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tongxin.store.ports import Unavailable


class BusStartTimeout(Unavailable):
    """The bus's brokers did not let the node start in time: its message says
    which brokers and which bound, so the command line prints it as it is."""


@dataclass(frozen=True, slots=True)
class Delivery:
    frame_type: int
    payload: bytes
    conversation_id: str = ""
    # Recipients; empty means every current member of conversation_id.
    user_ids: tuple[str, ...] = ()
    # (user_id, device_id) that must not receive it: the sending device,
    # which already has the ACK.
    skip_user: str = ""
    skip_device: str = ""
    # Set on membership changes: nodes drop cached member lists first.
    members_changed: bool = False
    # Presence updates go to the connections watching this user instead.
    watchers_of: str = ""
    # user_ids is the exact recipient list on this node, even when empty
    # (set by the Kafka router, which already resolved the members).
    routed: bool = False
    # Set by the Kafka router instead of watchers_of: a batch's presence
    # changes for one node in one record, (watched user, payload) in order.
    # A user coming online is a change for every node; one record each per
    # change made a mass login or close cost nodes x changes records.
    presence_bundle: tuple[tuple[str, bytes], ...] = ()


Handler = Callable[[Delivery], Awaitable[None]]


class DeliveryBus(Protocol):
    #: True when a publish can fail after the store committed (a broker), so a
    #: re-sent client_msg_id must be published again before it is ACKed.
    republish_duplicates: bool

    async def start(self, handler: Handler) -> None: ...
    async def publish(self, delivery: Delivery) -> None: ...
    async def close(self) -> None: ...
