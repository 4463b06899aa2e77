"""SMS second factor: the command and webhook providers for real (a script, a
loopback aiohttp server), codes stored hashed, single use, expiry, rate limit."""

from __future__ import annotations

import json
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import free_port, make_config  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.compliance.service import Compliance
from tongxin.compliance.sms import (
    MAX_ATTEMPTS,
    CommandProvider,
    SmsError,
    SmsRateLimited,
    SmsResult,
    SmsUnavailable,
    WebhookProvider,
    mask_phone,
    normalize_phone,
)

PHONE = "+8613800138000"


def _stored_bytes(db: Path) -> bytes:
    """The database file and its WAL: a recent write is in the WAL until a checkpoint."""
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def sms_script(tmp_path: Path, exit_status: int = 0) -> Path:
    """A gateway stand-in: writes argv and the environment it got to a file."""
    script = tmp_path / "send-sms"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(tmp_path / "sent.jsonl")!r}, "a") as fh:
    env = {{k: v for k, v in os.environ.items() if k.startswith(("TONGXIN_", "SECRET_"))}}
    fh.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
if {exit_status}:
    print("gateway refused " + os.environ["TONGXIN_SMS_CODE"], file=sys.stderr)
sys.exit({exit_status})
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def sent(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "sent.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
async def comp(tmp_path: Path) -> AsyncIterator[Compliance]:
    script = sms_script(tmp_path)
    c = Compliance(make_config(tmp_path / "home", compliance={
        "sms_provider": "command", "sms_command": f"{script} --to {{phone}} --text 'code {{code}}'",
        "sms_send_interval": 0.0, "sms_max_per_hour": 100}))
    await c.open()
    yield c
    await c.close()


def test_phone_numbers_are_normalised_and_masked() -> None:
    assert normalize_phone("+86 138-0013-8000") == PHONE
    assert mask_phone(PHONE) == "+86*******8000"
    assert mask_phone("13800138000") == "138****8000"
    for bad in ("", "12345", "+86 138 0013 8000 1234 5", "138x0013800"):
        with pytest.raises(ValueError):
            normalize_phone(bad)


async def test_command_provider_gets_phone_and_code_without_a_shell(
        comp: Compliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_OF_THE_NODE", "must-not-leak")
    assert await comp.sms.enroll("u_1", "+86 138 0013 8000", "test") == "+86*******8000"
    out = await comp.sms.send("u_1", "alice")
    assert out.phone_masked == "+86*******8000"
    (msg,) = sent(tmp_path)
    code = msg["env"]["TONGXIN_SMS_CODE"]
    assert len(code) == 6 and code.isdigit()
    # {phone} and {code} replaced inside single arguments; the quotes were not a shell's.
    assert msg["argv"] == ["--to", PHONE, "--text", f"code {code}"]
    assert msg["env"]["TONGXIN_SMS_PHONE"] == PHONE and code in msg["env"]["TONGXIN_SMS_TEXT"]
    assert msg["env"]["TONGXIN_SMS_USER"] == "alice"
    assert "SECRET_OF_THE_NODE" not in msg["env"]  # the node's environment is not passed on
    # Stored as an HMAC only: neither the code nor the number is in compliance.db.
    db = _stored_bytes(comp.cfg.home / "compliance.db")
    assert code.encode() not in db and PHONE.encode() not in db and b"13800138000" not in db

    assert await comp.sms.verify("u_1", "000000" if code != "000000" else "111111") is \
        SmsResult.WRONG
    assert await comp.sms.verify("u_1", code) is SmsResult.OK
    assert await comp.sms.verify("u_1", code) is SmsResult.REPLAYED
    # A new code replaces the old one.
    await comp.sms.send("u_1", "alice")
    code2 = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    if code2 != code:
        assert await comp.sms.verify("u_1", code) is SmsResult.WRONG
    assert await comp.sms.verify("u_1", code2) is SmsResult.OK


async def test_expiry_attempt_limit_and_no_code(comp: Compliance, tmp_path: Path) -> None:
    await comp.sms.enroll("u_1", PHONE, "test")
    assert await comp.sms.verify("u_1", "123456") is SmsResult.NO_CODE
    assert await comp.sms.verify("u_2", "123456") is SmsResult.NOT_ENROLLED
    t0 = now_ms()
    await comp.sms.send("u_1", "alice", now=t0)
    code = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    ttl_ms = int(comp.cfg.compliance.sms_code_ttl * 1000)
    assert await comp.sms.verify("u_1", code, now=t0 + ttl_ms) is SmsResult.EXPIRED
    # Too many wrong tries void a code even before it expires.
    await comp.sms.send("u_1", "alice", now=t0 + 1)
    code = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(MAX_ATTEMPTS):
        assert await comp.sms.verify("u_1", wrong, now=t0 + 2) is SmsResult.WRONG
    assert await comp.sms.verify("u_1", code, now=t0 + 3) is SmsResult.EXPIRED


async def test_rate_limit(tmp_path: Path) -> None:
    script = sms_script(tmp_path)
    c = Compliance(make_config(tmp_path / "home", compliance={
        "sms_provider": "command", "sms_command": str(script), "sms_send_interval": 60.0,
        "sms_max_per_hour": 3}))
    await c.open()
    try:
        await c.sms.enroll("u_1", PHONE, "test")
        t0 = now_ms()
        await c.sms.send("u_1", "alice", now=t0)
        with pytest.raises(SmsRateLimited) as info:
            await c.sms.send("u_1", "alice", now=t0 + 10_000)
        assert info.value.retry_after_ms == 50_000
        await c.sms.send("u_1", "alice", now=t0 + 60_000)
        await c.sms.send("u_1", "alice", now=t0 + 120_000)
        with pytest.raises(SmsRateLimited) as info:  # the fourth within the hour
            await c.sms.send("u_1", "alice", now=t0 + 180_000)
        assert info.value.retry_after_ms == 3_600_000 - 180_000
        await c.sms.send("u_1", "alice", now=t0 + 3_600_001)
        assert len(sent(tmp_path)) == 4
    finally:
        await c.close()


async def test_failing_command_voids_the_code_and_hides_it(tmp_path: Path) -> None:
    script = sms_script(tmp_path, exit_status=3)
    c = Compliance(make_config(tmp_path / "home", compliance={
        "sms_provider": "command", "sms_command": str(script), "sms_send_interval": 0.0}))
    await c.open()
    try:
        await c.sms.enroll("u_1", PHONE, "test")
        with pytest.raises(SmsError) as info:
            await c.sms.send("u_1", "alice")
        code = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
        assert "exited with status 3" in str(info.value)
        assert code not in str(info.value) and "***" in str(info.value)
        assert await c.sms.verify("u_1", code) is SmsResult.EXPIRED
        with pytest.raises(SmsError, match="could not be started"):
            await CommandProvider(str(tmp_path / "absent"), 5.0).send(PHONE, "123456", "t", "a")
    finally:
        await c.close()


async def test_no_provider_or_no_number(tmp_path: Path) -> None:
    c = Compliance(make_config(tmp_path / "home"))
    await c.open()
    try:
        assert not c.sms.enabled
        await c.sms.enroll("u_1", PHONE, "test")
        with pytest.raises(SmsUnavailable):
            await c.sms.send("u_1", "alice")
        assert await c.sms.verify("u_1", "123456") is SmsResult.DISABLED
    finally:
        await c.close()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, int]]]:
    """A loopback webhook: records each POST; ``control["status"]`` is the answer."""
    got: list[dict[str, Any]] = []
    control = {"status": 200, "delay": 0}

    async def hook(request: web.Request) -> web.Response:
        import asyncio

        got.append({"auth": request.headers.get("Authorization", ""), "json": await request.json(),
                    "path": request.path_qs})
        if control["delay"]:
            await asyncio.sleep(control["delay"])
        return web.json_response({"ok": control["status"] == 200}, status=control["status"])

    app = web.Application()
    app.router.add_post("/sms/send", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", got, control
    await runner.cleanup()


async def test_webhook_provider(tmp_path: Path,
                                gateway: tuple[str, list[dict[str, Any]], dict[str, int]]) -> None:
    base, got, control = gateway
    url = f"{base}/sms/send?apikey=k-123"
    c = Compliance(make_config(tmp_path / "home", compliance={
        "sms_provider": "webhook", "sms_webhook_url": url, "sms_webhook_secret": "s3cret-token",
        "sms_timeout": 1.0, "sms_send_interval": 0.0, "sms_max_per_hour": 100}))
    await c.open()
    try:
        await c.sms.enroll("u_1", PHONE, "test")
        await c.sms.send("u_1", "alice")
        (req,) = got
        body = req["json"]
        assert req["auth"] == "Bearer s3cret-token" and req["path"] == "/sms/send?apikey=k-123"
        assert body["phone"] == PHONE and body["user"] == "alice" and body["ttl_seconds"] == 300
        assert body["code"] in body["text"]
        assert await c.sms.verify("u_1", body["code"]) is SmsResult.OK
        # Failures name the host and a status, never the path, query or secret.
        control["status"] = 500
        with pytest.raises(SmsError) as info:
            await c.sms.send("u_1", "alice")
        text = str(info.value)
        assert text == f"SMS webhook {base} answered HTTP 500"
        assert "apikey" not in text and "s3cret" not in text and got[-1]["json"]["code"] not in text
        control["status"], control["delay"] = 200, 3
        with pytest.raises(SmsError, match="did not answer within 1 s"):
            await c.sms.send("u_1", "alice")
        with pytest.raises(SmsError, match="failed: Client"):
            await WebhookProvider(f"http://127.0.0.1:{free_port()}/x?key=secret", "", 1.0,
                                  300).send(PHONE, "123456", "t", "a")
        # The configuration snapshot kept for config.change masks the secret and the query.
        await c.record_config()
        conn = sqlite3.connect(c.cfg.home / "compliance.db")
        rows = " ".join(r[0] for r in conn.execute("SELECT value FROM settings UNION ALL "
                                                   "SELECT body FROM audit"))
        conn.close()
        assert "sms_webhook_url" in rows
        assert "s3cret-token" not in rows and "k-123" not in rows
    finally:
        await c.close()


# ---- number confirmation at enrolment ---------------------------------------------


def other_than(code: str) -> str:
    return "000000" if code != "000000" else "111111"


async def test_a_number_is_enrolled_only_after_its_code_comes_back(
        comp: Compliance, tmp_path: Path) -> None:
    out = await comp.sms.start_enrollment("u_1", "alice", "+86 138 0013 8000", "u_sec")
    assert out.phone_masked == "+86*******8000"
    (msg,) = sent(tmp_path)
    assert msg["env"]["TONGXIN_SMS_PHONE"] == PHONE  # the code goes to the new number
    code = msg["env"]["TONGXIN_SMS_CODE"]
    assert not await comp.sms.enrolled("u_1")
    assert await comp.sms.verify("u_1", code) is SmsResult.NOT_ENROLLED  # not a login factor yet
    # Neither the pending number nor the code is stored in the clear.
    db = _stored_bytes(comp.cfg.home / "compliance.db")
    assert PHONE.encode() not in db and b"13800138000" not in db and code.encode() not in db

    assert await comp.sms.confirm_enrollment("u_1", other_than(code), "u_sec") == (
        SmsResult.WRONG, "")
    assert not await comp.sms.enrolled("u_1")
    assert await comp.sms.confirm_enrollment("u_1", code, "u_sec") == (SmsResult.OK,
                                                                       "+86*******8000")
    assert await comp.sms.phone("u_1") == PHONE
    row = await comp.store.get_sms_phone("u_1")
    assert row is not None and row.enrolled_by == "u_sec"
    # Once: the pending enrolment is gone.
    assert (await comp.sms.confirm_enrollment("u_1", code, "u_sec"))[0] is SmsResult.NO_CODE


async def test_enrolment_and_login_codes_do_not_stand_in_for_each_other(
        comp: Compliance, tmp_path: Path) -> None:
    await comp.sms.enroll("u_1", PHONE, "test")  # the old number
    await comp.sms.start_enrollment("u_1", "alice", "+8613900139000", "u_sec")
    change = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    # Whoever holds the new number cannot sign in with the confirmation code.
    assert await comp.sms.verify("u_1", change) is SmsResult.WRONG
    assert await comp.sms.phone("u_1") == PHONE  # unchanged until confirmed
    # A login code sent meanwhile replaces the confirmation code: it cannot confirm.
    await comp.sms.send("u_1", "alice")
    login = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    assert (await comp.sms.confirm_enrollment("u_1", login, "u_sec"))[0] is SmsResult.NO_CODE
    assert (await comp.sms.confirm_enrollment("u_1", change, "u_sec"))[0] is SmsResult.NO_CODE
    assert await comp.sms.phone("u_1") == PHONE
    assert await comp.sms.verify("u_1", login) is SmsResult.OK


async def test_enrolment_confirmation_expires_and_counts_wrong_tries(
        comp: Compliance, tmp_path: Path) -> None:
    t0 = now_ms()
    await comp.sms.start_enrollment("u_1", "alice", PHONE, "u_sec", now=t0)
    code = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    ttl_ms = int(comp.cfg.compliance.sms_code_ttl * 1000)
    assert (await comp.sms.confirm_enrollment("u_1", code, "u_sec", now=t0 + ttl_ms))[0] is \
        SmsResult.EXPIRED
    await comp.sms.start_enrollment("u_1", "alice", PHONE, "u_sec", now=t0 + 1)
    code = sent(tmp_path)[-1]["env"]["TONGXIN_SMS_CODE"]
    for _ in range(MAX_ATTEMPTS):
        assert (await comp.sms.confirm_enrollment("u_1", other_than(code), "u_sec",
                                                  now=t0 + 2))[0] is SmsResult.WRONG
    assert (await comp.sms.confirm_enrollment("u_1", code, "u_sec", now=t0 + 3))[0] is \
        SmsResult.EXPIRED
    assert not await comp.sms.enrolled("u_1")


async def test_enrolment_refused_without_a_provider_or_a_valid_number(
        comp: Compliance, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await comp.sms.start_enrollment("u_1", "alice", "12x45", "u_sec")
    assert sent(tmp_path) == [] and await comp.store.get_setting("sms.pending.u_1") is None
    c = Compliance(make_config(tmp_path / "home2"))  # sms_provider: none
    await c.open()
    try:
        with pytest.raises(SmsUnavailable, match="cannot be confirmed"):
            await c.sms.start_enrollment("u_1", "alice", PHONE, "u_sec")
        assert not await c.sms.enrolled("u_1")
        assert await c.store.get_setting("sms.pending.u_1") is None
    finally:
        await c.close()
