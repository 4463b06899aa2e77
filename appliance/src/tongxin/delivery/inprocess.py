"""Embedded default: one node, so publishing is handing the delivery to the local hub."""

from __future__ import annotations

from tongxin.delivery.ports import Delivery, Handler


class InProcessBus:
    republish_duplicates = False

    def __init__(self) -> None:
        self._handler: Handler | None = None

    async def start(self, handler: Handler) -> None:
        self._handler = handler

    async def publish(self, delivery: Delivery) -> None:
        if self._handler is not None:
            await self._handler(delivery)

    async def close(self) -> None:
        self._handler = None
