"""An end-to-end encrypted round trip under the organisation's compliance escrow, through
a running node, with the tongxin SDK as a client host runs it: the SDK trusts the escrow
key the node announces only because the organisation root installed on the host signed
it (docs/e2ee.md section 10.1). Bob opens the message; the envelope carries a wrap to the
escrow key the operator made. Prints one JSON line; exits non-zero on failure.

    e2ee_escrow_roundtrip.py URL USER_A USER_B ORG_ROOT STATE_DIR ESCROW_KEY_ID
    (passwords on stdin, one per line)
"""

import asyncio
import json
import sys

from tongxin.client import Client, pb
from tongxin.proto import e2ee_pb2 as e2


async def main(url: str, user_a: str, user_b: str, root: str, state: str, want_key: str,
               pw_a: str, pw_b: str) -> dict:
    text = "端到端加密 under the organisation's escrow key"
    async with Client(url, device_id="escrow-a") as a, Client(url, device_id="escrow-b") as b:
        await a.login(user_a, pw_a)
        await b.login(user_b, pw_b)
        ea = await a.e2ee(f"{state}/a", trusted_org_root=root)
        eb = await b.e2ee(f"{state}/b", trusted_org_root=root)
        conv = (await a.direct(user_b)).conversation_id
        ack = await ea.send_text(conv, text)
        while True:
            event = await b.next_event(pb.DELIVER, wait=15.0)
            if event.message.seq >= ack.seq and event.message.kind == pb.CHAT:
                break
        opened = await eb.open(event.message)
        env = e2.Envelope.FromString(event.message.content.encrypted)
        got = opened.payload.text if opened else None
        ok = (got == text and ea.escrow_key_id == want_key and env.escrow.key_id == want_key)
        return {"ok": ok, "escrow_key_id": ea.escrow_key_id, "wrapped_to": env.escrow.key_id,
                "org_root": ea.org_root_fingerprint, "opened": got}


if __name__ == "__main__":
    pw_a, pw_b = sys.stdin.read().splitlines()[:2]
    result = asyncio.run(main(*sys.argv[1:7], pw_a, pw_b))
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result["ok"] else 1)
