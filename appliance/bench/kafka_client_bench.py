#!/usr/bin/env python3
"""aiokafka against confluent-kafka (librdkafka) for the node's Kafka traffic.

    flock /tmp/tongxin-engines.lock .venv/bin/python appliance/bench/kafka_client_bench.py

Each client, in turn and alternating, on a topic of its own (12 partitions,
as the deliveries topic):

* ``produce``: ``--records`` records of ``--size`` bytes, ``--window`` of them
  in flight, each awaited on its own as ``KafkaBus.publish`` awaits its ack
  (idempotent, acks=all, linger 2 ms: the node's producer settings);
* ``consume``: the same records read back in batches, as the router does.

Printed: records/s and the CPU of this process per record (all threads:
librdkafka does its work in threads of its own, which the event loop's CPU
alone would miss). confluent-kafka is in the ``dev`` extra only, not a
dependency of the node. The Kafka comes from services.sh (started if it is
not running, and then stopped again).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
BOOTSTRAP = "127.0.0.1:9092"
PARTITIONS = 12


def cpu() -> float:
    return time.process_time()  # every thread of the process


async def measure(fn: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    c0, t0 = cpu(), time.perf_counter()
    n = await fn()
    return time.perf_counter() - t0, cpu() - c0, n


async def make_topic(name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


async def drop_topics(names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def windowed(n: int, window: int, send: Callable[[int], Awaitable[None]]) -> int:
    """n sends, ``window`` workers each awaiting one ack at a time."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await send(i)

    await asyncio.gather(*(worker() for _ in range(window)))
    return n


# ---- aiokafka -------------------------------------------------------------------------


async def aiokafka_produce(topic: str, n: int, window: int, value: bytes) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True,
                                acks="all", linger_ms=2)
    await producer.start()
    try:
        async def send(i: int) -> None:
            await producer.send_and_wait(topic, value, key=str(i % 100).encode())

        return await windowed(n, window, send)
    finally:
        await producer.stop()


async def aiokafka_consume(topic: str, n: int) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=f"g-{topic}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got = 0
    try:
        while got < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            got += sum(len(v) for v in batch.values())
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


# ---- confluent-kafka ------------------------------------------------------------------


class Poller:
    """librdkafka calls delivery callbacks from poll(): a thread polls, the loop is woken."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.client.poll(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


async def confluent_produce(topic: str, n: int, window: int, value: bytes) -> int:
    from confluent_kafka import KafkaException, Producer

    loop = asyncio.get_running_loop()
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 2})
    poller = Poller(producer)
    try:
        async def send(i: int) -> None:
            done: asyncio.Future[None] = loop.create_future()

            def on_delivery(err: Any, _msg: Any) -> None:
                if err is not None:
                    loop.call_soon_threadsafe(done.set_exception, KafkaException(err))
                else:
                    loop.call_soon_threadsafe(done.set_result, None)

            producer.produce(topic, value, key=str(i % 100).encode(), on_delivery=on_delivery)
            await done

        return await windowed(n, window, send)
    finally:
        producer.flush(10)
        poller.close()


async def confluent_consume(topic: str, n: int) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = 0
    try:
        while got < n:
            # consume() blocks: off the loop, as the node would have to run it.
            batch = await asyncio.to_thread(consumer.consume, 500, 0.5)
            got += sum(1 for m in batch if m.error() is None)
            if batch:
                await asyncio.to_thread(consumer.commit, asynchronous=False)
    finally:
        consumer.close()
    return got


# ---- main -----------------------------------------------------------------------------

CLIENTS: dict[str, tuple[Callable[..., Awaitable[int]], Callable[..., Awaitable[int]]]] = {
    "aiokafka": (aiokafka_produce, aiokafka_consume),
    "confluent-kafka": (confluent_produce, confluent_consume),
}


async def one_run(client: str, args: argparse.Namespace) -> dict[str, float]:
    produce, consume = CLIENTS[client]
    topic = f"txk-{uuid.uuid4().hex[:8]}"
    await make_topic(topic)
    await asyncio.sleep(2)  # the new topic's leaders, before the first send asks for them
    value = b"x" * args.size
    try:
        wall, used, n = await measure(lambda: produce(topic, args.records, args.window, value))
        cwall, cused, cn = await measure(lambda: consume(topic, args.records))
    finally:
        await drop_topics([topic])
    return {"produce_per_s": n / wall, "produce_cpu_us": 1e6 * used / n,
            "consume_per_s": cn / cwall, "consume_cpu_us": 1e6 * cused / cn}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--window", type=int, default=400, help="records in flight (default 400)")
    p.add_argument("--size", type=int, default=250, help="record bytes (default 250)")
    p.add_argument("--repeat", type=int, default=2, help="runs per client, alternating")
    args = p.parse_args(argv)
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("confluent-kafka is not installed: make setup (the dev extra has it)")
        return 2
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    started = subprocess.run(["bash", str(SERVICES), "status", "kafka"],
                             capture_output=True, check=False).returncode != 0
    if started:
        subprocess.run(["bash", str(SERVICES), "start", "kafka"], check=True, capture_output=True)
    try:
        rows: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
        for _ in range(args.repeat):
            for client in CLIENTS:
                rows[client].append(asyncio.run(one_run(client, args)))
    finally:
        if started:
            subprocess.run(["bash", str(SERVICES), "stop", "kafka"], check=False,
                           capture_output=True)
    load = Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]
    print(f"records {args.records} x {args.size} B, window {args.window}, "
          f"{PARTITIONS} partitions, loadavg {load}")
    print(f"{'client':<16}{'produce/s':>12}{'cpu us/rec':>12}{'consume/s':>12}{'cpu us/rec':>12}")
    for client, runs in rows.items():
        for r in runs:
            print(f"{client:<16}{r['produce_per_s']:>12.0f}{r['produce_cpu_us']:>12.1f}"
                  f"{r['consume_per_s']:>12.0f}{r['consume_cpu_us']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
