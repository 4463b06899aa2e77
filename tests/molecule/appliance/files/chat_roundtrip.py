"""A real chat round trip through a running Tongxin node, with the tongxin SDK:
two users log in, one opens a direct conversation and sends a message, the
other receives it as a DELIVER push with the same text, and both see it in
the conversation's history. Prints one JSON line; exits non-zero on failure.

    chat_roundtrip.py URL USER_A USER_B   (passwords on stdin, one per line)
"""

import asyncio
import json
import sys
import time

from tongxin.client import Client, pb


async def main(url: str, user_a: str, user_b: str, pw_a: str, pw_b: str) -> dict:
    text = f"你好 from {user_a} at {time.time():.3f}"
    async with Client(url, device_id="verify-a") as a, Client(url, device_id="verify-b") as b:
        await a.login(user_a, pw_a)
        await b.login(user_b, pw_b)
        conv = await a.direct(user_b)
        started = time.monotonic()
        ack = await a.send_text(conv.conversation_id, text)
        # Pushes arrive in order: the conversation's system entry first, then ours.
        while True:
            event = await b.next_event(pb.DELIVER, wait=15.0)
            if event.message.seq >= ack.seq:
                break
        elapsed_ms = (time.monotonic() - started) * 1000
        got = event.message.content.text
        history = await b.sync_all(conv.conversation_id)  # what a device that was offline gets
        ok = (got == text and event.message.conversation_id == conv.conversation_id
              and ack.seq == event.message.seq
              and any(m.content.text == text for m in history))
        return {"ok": ok, "conversation": conv.conversation_id, "seq": ack.seq,
                "sent": text, "received": got, "history": len(history),
                "round_trip_ms": round(elapsed_ms, 1)}


if __name__ == "__main__":
    pw_a, pw_b = sys.stdin.read().splitlines()[:2]
    result = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], pw_a, pw_b))
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result["ok"] else 1)
