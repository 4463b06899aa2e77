"""The gated Redis client turns the transport errors redis-py 8.1.0 leaks into ConnectionError.

In a reconnect storm of 5,000 clients, token checks failed with
AttributeError / RuntimeError from a Redis connection closed under the call
(redis/redis-py#4287): not RedisErrors, so no fallback caught them and 1,235
logins were answered INTERNAL. No Redis is needed: the client is never
connected, the calls are the test's own.
"""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tongxin.redis_gate import GatedRedisCluster
from tongxin.redisutil import FAILURES


@pytest.mark.parametrize("leaked", [
    AttributeError("'NoneType' object has no attribute 'writelines'"),
    RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                 "the handler is closed"),
    TypeError("'NoneType' object is not callable"),
], ids=["attribute", "uvloop-runtime", "type"])
async def test_a_leaked_transport_error_is_a_connection_error(leaked: Exception) -> None:
    client = GatedRedisCluster(host="127.0.0.1", port=1)

    async def call() -> None:
        raise leaked

    with pytest.raises(RedisConnectionError) as info:
        await client.in_turn(call)
    assert info.value.__cause__ is leaked
    assert isinstance(info.value, FAILURES)  # what the fallbacks catch
    assert not client.gate.locked()  # the turn is given back


async def test_other_errors_pass_unchanged() -> None:
    client = GatedRedisCluster(host="127.0.0.1", port=1)

    async def call() -> None:
        raise KeyError("not the driver's transport")

    with pytest.raises(KeyError):
        await client.in_turn(call)
