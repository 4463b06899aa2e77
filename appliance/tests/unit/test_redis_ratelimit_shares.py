"""RedisRateLimiter spends shares of the user's budget locally: the limit
across nodes stays within the stated tolerance, a steady sender asks Redis
about once per share interval, an idle one never, and an outage falls back.

Redis is replaced by ``SharedGcra``, the Lua script's arithmetic on the same
injected clock; the script itself runs on a real cluster in
tests/integration/test_redis_limits.py.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tongxin.server.redis_ratelimit import IDLE_AFTER, RedisRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SharedGcra:
    """One Redis primary: the GCRA_LUA script over a dict, in microseconds."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.tat: dict[str, int] = {}
        self.calls: list[int] = []  # the ``want`` of every call
        self.down = False
        self.hold: asyncio.Event | None = None  # set: calls wait for it

    async def reserve(self, key: str, interval: int, tolerance: int, want: int) -> tuple[int, int]:
        self.calls.append(want)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise RedisConnectionError("Connection refused")
        now = int(self.clock() * 1_000_000)
        tat = max(self.tat.get(key, now), now)
        n = (now + tolerance - tat) // interval
        if n < 1:
            return 0, tat + interval - (now + tolerance)
        n = min(n, want)
        self.tat[key] = tat + n * interval
        return n, 0


class Node(RedisRateLimiter):
    def __init__(self, shared: SharedGcra, rate: float = 20.0, burst: float = 100.0,
                 fallbacks: list[int] | None = None) -> None:
        on_fallback = (lambda: fallbacks.append(1)) if fallbacks is not None else None
        super().__init__("127.0.0.1:1", "t", rate, burst, clock=shared.clock,
                         on_fallback=on_fallback)
        self.shared = shared

    async def _reserve(self, user_id: str, want: int) -> tuple[int, int]:
        return await self.shared.reserve(self.key(user_id), self.interval_us,
                                         self.tolerance_us, want)


async def flood(nodes: list[Node], clock: Clock, seconds: float, gap: float,
                user: str = "alice") -> list[tuple[float, bool]]:
    """One frame every ``gap`` seconds, round robin over the nodes."""
    frames: list[tuple[float, bool]] = []
    end = clock.now + seconds
    i = 0
    while clock.now < end:
        wait = await nodes[i % len(nodes)].acquire(user)
        frames.append((clock.now, wait == 0.0))
        clock.now += gap
        i += 1
    return frames


def most_in_any_window(allowed: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(allowed):
        while allowed[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


async def test_two_nodes_stay_within_rate_plus_burst_plus_one_share_each() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    a, b = Node(shared), Node(shared)
    assert a.max_share == 5  # 5% of the default burst of 100
    tolerance = 2 * (a.max_share - 1)
    # Frames far above the rate (1,000/s) spread over two nodes for 10 s.
    frames = await flood([a, b], clock, 10.0, 0.001)
    allowed = [t for t, ok in frames if ok]
    elapsed = frames[-1][0] - frames[0][0]
    assert len(allowed) <= 20 * elapsed + 100 + tolerance + 1
    # Not much less either: what the nodes hold unspent at the end, at most.
    assert len(allowed) >= 20 * elapsed + 100 - tolerance - 1
    for window in (0.1, 0.5, 1.0, 5.0):
        assert most_in_any_window(allowed, window) <= 20 * window + 100 + tolerance + 1
    # A refused frame is answered locally until its retry_after has passed:
    # 10,000 frames cost a few calls per token that comes back (each node
    # asks when its retry_after ends; one gets the token, the other is
    # refused again), not one per frame.
    assert len(shared.calls) < len(frames) / 10
    await a.close()
    await b.close()


async def test_a_user_later_on_another_node_gets_no_more_than_one_share_extra() -> None:
    """The worst case of the tolerance: shares held on both nodes, the budget
    spent, then frames on both."""
    clock = Clock()
    shared = SharedGcra(clock)
    a, b = Node(shared), Node(shared)
    # 40/s for 2 s, within the burst: each node ramps up to full shares.
    frames = await flood([a, b], clock, 2.0, 0.025)
    assert all(ok for _, ok in frames)
    assert a._shares["alice"].granted == b._shares["alice"].granted == a.max_share
    held = a._shares["alice"].tokens + b._shares["alice"].tokens
    assert 0 < held <= 2 * (a.max_share - 1)
    clock.now += 60  # the Redis budget is full again; the nodes still hold what is left
    burst = await flood([a, b], clock, 0.2, 0.0001)  # 2,000 frames in 0.2 s
    allowed = sum(ok for _, ok in burst)
    assert 100 + 4 + held - 1 <= allowed <= 100 + 4 + held + 1


async def test_a_steady_sender_asks_redis_once_per_share() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    a = Node(shared)
    frames = await flood([a], clock, 20.0, 1 / 19)  # below the rate of 20/s
    assert all(ok for _, ok in frames)
    # Shares ramp 1, 2, 4 and then cover 0.25 s of frames (5 at 19/s).
    assert shared.calls[:4] == [1, 2, 4, 5]
    assert len(shared.calls) <= len(frames) / 5 + 4
    await a.close()


async def test_a_slow_sender_is_judged_frame_by_frame() -> None:
    """One frame a second: every call asks for one token, nothing is held
    (no tolerance is used where it would not save a round trip)."""
    clock = Clock()
    shared = SharedGcra(clock)
    a, b = Node(shared, rate=1.0, burst=200.0), Node(shared, rate=1.0, burst=200.0)
    frames = await flood([a, b], clock, 30.0, 1.0)
    assert all(ok for _, ok in frames)
    assert shared.calls == [1] * len(frames)
    assert a._shares["alice"].tokens == b._shares["alice"].tokens == 0


async def test_small_bursts_keep_the_exact_limit() -> None:
    """Below a burst of 40 a share is one token: one call per frame, the
    exact shared limit of one budget (the node integration tests use 3)."""
    clock = Clock()
    shared = SharedGcra(clock)
    a, b = Node(shared, rate=2.0, burst=3.0), Node(shared, rate=2.0, burst=3.0)
    got = [await (a if i % 2 else b).acquire("alice") for i in range(5)]
    assert got[:3] == [0.0] * 3
    assert got[3] == pytest.approx(0.5) and got[4] == pytest.approx(0.5)
    clock.now += 0.5
    assert await a.acquire("alice") == 0.0
    assert await b.acquire("alice") == pytest.approx(0.5)
    assert await a.acquire("bob") == 0.0  # per user


async def test_idle_users_cost_nothing_and_are_forgotten() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    a = Node(shared)
    await flood([a], clock, 2.0, 0.02)
    calls = len(shared.calls)
    assert a._shares["alice"].tokens > 0  # held, unspent
    clock.now += IDLE_AFTER / 2
    a.forget_idle()
    assert "alice" in a._shares  # still sending, as far as this node knows
    clock.now += IDLE_AFTER
    a.forget_idle()
    assert a._shares == {}
    clock.now += 3600
    a.forget_idle()
    assert len(shared.calls) == calls  # nothing is reconciled in the background
    # Back after an hour: judged afresh, one token first.
    assert await a.acquire("alice") == 0.0
    assert shared.calls[-1] == 1


async def test_a_refusal_is_remembered_until_its_retry_after() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    # 8/s: a token every 0.125 s, which the float clock adds exactly.
    a, b = Node(shared, rate=8.0, burst=16.0), Node(shared, rate=8.0, burst=16.0)
    shared.tat[a.key("alice")] = int(clock.now * 1e6) + 16 * 125_000  # budget spent
    wait = await a.acquire("alice")
    assert wait == 0.125
    calls = len(shared.calls)
    clock.now += 0.0625
    assert await a.acquire("alice") == 0.0625  # not asked again
    assert len(shared.calls) == calls
    assert await b.acquire("alice") == 0.0625  # b asks once for itself
    assert len(shared.calls) == calls + 1
    clock.now += 0.0625
    assert await a.acquire("alice") == 0.0
    assert await b.acquire("alice") > 0  # a took the one token that came back


async def test_devices_of_one_user_on_one_node_share_one_request() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    a = Node(shared, rate=10.0, burst=2.0)
    shared.hold = asyncio.Event()
    first = asyncio.create_task(a.acquire("alice"))
    await asyncio.sleep(0)
    others = [asyncio.create_task(a.acquire("alice")) for _ in range(2)]
    await asyncio.sleep(0)
    assert shared.calls == [1]  # the others wait for the answer to the first
    shared.hold.set()
    # The first gets its token; the next asks again and gets the last of the
    # burst; the third is refused, from Redis' answer, once.
    assert await first == 0.0
    assert sorted(await asyncio.gather(*others)) == [0.0, pytest.approx(0.1)]
    assert len(shared.calls) == 3


async def test_a_cancelled_frame_does_not_strand_the_others() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    a = Node(shared)
    shared.hold = asyncio.Event()
    first = asyncio.create_task(a.acquire("alice"))
    await asyncio.sleep(0)
    second = asyncio.create_task(a.acquire("alice"))
    await asyncio.sleep(0)
    first.cancel()  # its connection closed while Redis was being asked
    await asyncio.sleep(0)
    shared.hold.set()
    assert await asyncio.wait_for(second, 1.0) == 0.0
    assert a._shares["alice"].pending is None


async def test_redis_down_spends_the_share_then_the_local_bucket() -> None:
    clock = Clock()
    shared = SharedGcra(clock)
    fallbacks: list[int] = []
    a = Node(shared, rate=100.0, burst=100.0, fallbacks=fallbacks)
    await flood([a], clock, 1.0, 0.01)
    held = a._shares["alice"].tokens
    assert held > 0
    shared.down = True
    calls = len(shared.calls)
    for _ in range(held):
        assert await a.acquire("alice") == 0.0  # already granted: no call
    assert len(shared.calls) == calls and not fallbacks
    # Then one bounded attempt, and the local bucket (full: burst 100) for
    # the rest of the breaker's pause, without asking again.
    got = [await a.acquire("alice") for _ in range(101)]
    assert len(shared.calls) == calls + 1
    assert got[:100] == [0.0] * 100 and got[100] > 0
    assert len(fallbacks) == 101 and a.breaker.down
    # After the pause Redis is asked again and answers: shared once more.
    shared.down = False
    clock.now += a.breaker.pause
    assert await a.acquire("alice") == 0.0
    assert not a.breaker.down and len(shared.calls) == calls + 2


def test_a_share_is_a_twentieth_of_the_burst_at_most() -> None:
    shared = SharedGcra(Clock())
    assert Node(shared, burst=100.0).max_share == 5
    assert Node(shared, burst=39.0).max_share == 1
    assert Node(shared, rate=1e6, burst=1e6).max_share == 50_000
    # Above 1,000,000/s the interval is still 1 us, not 0 (no division by 0 in Lua).
    assert Node(shared, rate=1e7, burst=1e7).interval_us == 1
    assert math.isclose(Node(shared, rate=3.0).interval_us, 333_333)
