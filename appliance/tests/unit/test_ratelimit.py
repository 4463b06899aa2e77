"""Token-bucket rate limiter with an injected clock."""

from __future__ import annotations

from tongxin.server.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [rl.take("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.take("u")
    assert 0.49 < wait <= 0.5
    now[0] += 0.5
    assert rl.take("u") == 0.0
    assert rl.take("other") == 0.0  # buckets are per key


def test_idle_buckets_are_forgotten() -> None:
    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=2.0, clock=lambda: now[0])
    rl.take("u")
    now[0] += 10
    rl.forget_idle()
    assert rl._buckets == {}


def test_zero_rate_disables_limit() -> None:
    rl = RateLimiter(rate=0, burst=0)
    assert all(rl.take("u") == 0.0 for _ in range(1000))
