"""An in-memory stand-in for the RedisCluster calls RedisPresence makes (unit tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from tongxin.presence.redis_presence import RedisPresence


class FakeRedis:
    """The few RedisCluster calls RedisPresence makes, on dicts.

    ``fail``: raised by every call (a pipeline's at execute) while set;
    ``fail_live``: raised only by the live-node read; ``gate``: while set and
    not yet open, every call waits for it (``waiting`` tells one is there)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.strings: dict[str, str] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.fail: BaseException | None = None
        self.fail_live: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.live_reads = 0

    async def _check(self) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail

    async def initialize(self) -> None:
        await self._check()

    async def aclose(self) -> None:
        pass

    async def zadd(self, key: str, mapping: dict[str, float]) -> None:
        await self._check()
        self.zsets.setdefault(key, {}).update(mapping)

    async def zrangebyscore(self, key: str, lo: float, hi: str) -> list[str]:
        await self._check()
        if self.fail_live is not None:
            raise self.fail_live
        self.live_reads += 1
        return [m for m, score in self.zsets.get(key, {}).items() if score >= lo]

    async def zremrangebyscore(self, key: str, lo: float, hi: float) -> None:
        await self._check()
        z = self.zsets.get(key, {})
        for m in [m for m, score in z.items() if lo <= score <= hi]:
            del z[m]

    async def zrem(self, key: str, member: str) -> None:
        await self._check()
        self.zsets.get(key, {}).pop(member, None)

    async def hgetall(self, key: str) -> dict[str, str]:
        await self._check()
        return dict(self.hashes.get(key, {}))

    async def hget(self, key: str, field: str) -> str | None:
        await self._check()
        return self.hashes.get(key, {}).get(field)

    async def hset(self, key: str, field: str, value: str) -> None:
        await self._check()
        self.hashes.setdefault(key, {})[field] = value

    async def hdel(self, key: str, *fields: str) -> None:
        await self._check()
        for f in fields:
            self.hashes.get(key, {}).pop(f, None)

    async def set(self, key: str, value: Any) -> None:
        await self._check()
        self.strings[key] = str(value)

    async def get(self, key: str) -> str | None:
        await self._check()
        return self.strings.get(key)

    def pipeline(self) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any) -> FakePipeline:
            self.calls.append((name, args))
            return self
        return queue

    async def execute(self) -> list[Any]:
        r = self.redis
        await r._check()
        return [await getattr(r, name)(*args) for name, args in self.calls]


def fake_presence() -> tuple[RedisPresence, FakeRedis]:
    presence = RedisPresence("127.0.0.1:1", "tx")  # no connection is made: .redis is replaced
    fake = FakeRedis()
    presence.redis = fake  # type: ignore[assignment]
    return presence, fake
