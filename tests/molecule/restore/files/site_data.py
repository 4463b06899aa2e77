"""What users of a site see, before a backup and after its restore, through the
tongxin SDK against the running node.

    site_data.py fill  URL   -> writes messages and a file; prints what it wrote (JSON)
    site_data.py check URL   <- reads the JSON of fill on stdin after the passwords;
                                logs in, reads the history and the file; prints the result

Passwords of alice and bob on the first two lines of stdin. Exits 1 when
something differs.
"""

import asyncio
import hashlib
import json
import os
import sys

from tongxin.client import Client

TEXTS = ["备份之前的第一条消息", "second message before the backup", "第三条 third"]


async def fill(url: str, pw_a: str, pw_b: str) -> dict:
    data = os.urandom(300_000) + "文件结尾".encode()
    async with Client(url, device_id="drill-a") as a, Client(url, device_id="drill-b") as b:
        await a.login("alice", pw_a)
        await b.login("bob", pw_b)
        conv = (await a.direct("bob")).conversation_id
        seqs = [(await a.send_text(conv, t)).seq for t in TEXTS]
        info = await a.upload_file(conv, data, name="季度报告.bin")
        return {"ok": True, "conversation": conv, "seqs": seqs, "texts": TEXTS,
                "file_id": info.file_id, "file_sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data)}


async def check(url: str, pw_a: str, pw_b: str, before: dict) -> dict:
    async with Client(url, device_id="drill-c") as a, Client(url, device_id="drill-d") as b:
        await a.login("alice", pw_a)
        await b.login("bob", pw_b)
        history = await b.sync_all(before["conversation"])
        texts = [m.content.text for m in history if m.content.text]
        got = await b.download_file(before["file_id"])
        # The restored site takes new messages after the restored ones.
        ack = await a.send_text(before["conversation"], "恢复之后的新消息")
    sha = hashlib.sha256(got).hexdigest()
    ok = (texts == before["texts"] and sha == before["file_sha256"]
          and ack.seq > max(before["seqs"]))
    return {"ok": ok, "history": texts, "file_sha256": sha, "file_size": len(got),
            "new_seq": ack.seq}


if __name__ == "__main__":
    lines = sys.stdin.read().splitlines()
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "fill":
        result = asyncio.run(fill(url, lines[0], lines[1]))
    else:
        result = asyncio.run(check(url, lines[0], lines[1], json.loads(lines[2])))
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result["ok"] else 1)
