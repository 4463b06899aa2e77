"""A delivery bus shared by nodes in one process: the cluster's bus in miniature (unit tests)."""

from __future__ import annotations

from tongxin.delivery.ports import Delivery, Handler


class SharedBus:
    """Every node's handler gets every delivery."""

    republish_duplicates = False

    def __init__(self, handlers: list[Handler]) -> None:
        self.handlers = handlers

    async def start(self, handler: Handler) -> None:
        self.handlers.append(handler)

    async def publish(self, delivery: Delivery) -> None:
        for h in list(self.handlers):
            await h(delivery)

    async def close(self) -> None:
        return None
