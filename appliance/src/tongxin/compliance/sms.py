"""Second factor by SMS: one-time codes through an operator's gateway.

The appliance does not talk to an SMS carrier itself. ``compliance.sms_provider``
picks how a code leaves it:

* ``command`` — runs ``compliance.sms_command`` (split like a shell would, run
  without one). ``{phone}`` and ``{code}`` in an argument are replaced; the
  environment holds only ``PATH``, ``LANG``/``LC_ALL``/``TZ``/``HOME`` when set,
  and ``TONGXIN_SMS_PHONE``, ``TONGXIN_SMS_CODE``, ``TONGXIN_SMS_TEXT``,
  ``TONGXIN_SMS_USER`` (the environment keeps the code out of ``ps``; the
  node's own secrets are not passed on). Exit status 0 means sent.
* ``webhook`` — POSTs JSON ``{"phone", "code", "text", "user", "ttl_seconds"}``
  to ``compliance.sms_webhook_url`` with ``Authorization: Bearer <secret>``
  when a secret is set. Any 2xx means sent; redirects are not followed.

Neither the code, the secret nor the URL's path or credentials reach a log
line or an error message: failures name the provider, the host and a status.

Codes are 6 random digits, valid ``compliance.sms_code_ttl`` seconds, used
once, and stored only as HMAC-SM3 (key derived from ``secrets/totp.key``) over
the user id, the time it was made and the code. One code is outstanding per
account; a new one replaces it. Sends are rate-limited per account
(``sms_send_interval``, ``sms_max_per_hour``); a code is void after
``MAX_ATTEMPTS`` wrong tries, and every wrong code also counts towards the
account lockout (the admin API does that, as for TOTP). Phone numbers are
stored SM4-GCM encrypted like TOTP secrets.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import os
import re
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from tongxin.auth.tokens import load_or_create_key
from tongxin.clock import now_ms
from tongxin.compliance.ports import ComplianceStore, SmsCode, SmsPhone
from tongxin.config import ComplianceConfig
from tongxin.crypto import hkdf_sm3, hmac_sm3, sm4_gcm_decrypt, sm4_gcm_encrypt
from tongxin.crypto.errors import DecryptionError

DIGITS = 6
MAX_ATTEMPTS = 5
PENDING_SETTING = "sms.pending."  # + user id: a number waiting for its confirmation code
ENROLL_PURPOSE = "enroll"
PHONE_RE = re.compile(r"^\+?[0-9]{6,15}$")
_ENV_PASSED = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


class SmsError(Exception):
    """The provider did not accept the message (the text names no secret)."""


class SmsRateLimited(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"an SMS code was sent recently; retry in {retry_after_ms // 1000 + 1} s")
        self.retry_after_ms = retry_after_ms


class SmsUnavailable(Exception):
    """No provider is configured, or the account has no phone number enrolled."""


class SmsResult(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    NO_CODE = "no code sent"
    NOT_ENROLLED = "not_enrolled"
    DISABLED = "sms disabled"


def normalize_phone(phone: str) -> str:
    """Digits with an optional leading +; spaces, dashes, dots and brackets dropped."""
    cleaned = re.sub(r"[\s\-().]", "", phone)
    if not PHONE_RE.match(cleaned):
        raise ValueError("a phone number is 6 to 15 digits, optionally with a leading +")
    return cleaned


def mask_phone(phone: str) -> str:
    """What screens and audit records show: 138****5678."""
    if len(phone) <= 7:
        return phone[:2] + "*" * (len(phone) - 2)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def message_text(code: str, ttl: float) -> str:
    minutes = max(1, round(ttl / 60))
    return f"【Tongxin】您的验证码是 {code}，{minutes} 分钟内有效。Verification code {code}."


class SmsProvider(Protocol):
    name: str

    async def send(self, phone: str, code: str, text: str, user: str) -> None:
        """Hand one message to the gateway; raise SmsError if it was not accepted."""
        ...


def _redact(text: str, *secret_values: str) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text.strip().replace("\n", " ")[:200]


class CommandProvider:
    name = "command"

    def __init__(self, command: str, timeout: float) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("compliance.sms_command is empty")
        self.timeout = timeout

    async def send(self, phone: str, code: str, text: str, user: str) -> None:
        argv = [a.replace("{phone}", phone).replace("{code}", code) for a in self.argv]
        env = {k: os.environ[k] for k in _ENV_PASSED if k in os.environ}
        env.update(TONGXIN_SMS_PHONE=phone, TONGXIN_SMS_CODE=code, TONGXIN_SMS_TEXT=text,
                   TONGXIN_SMS_USER=user)
        program = os.path.basename(self.argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            raise SmsError(f"SMS command {program} could not be started: {exc.strerror}") from None
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SmsError(f"SMS command {program} did not finish within {self.timeout:g} s"
                           ) from None
        if proc.returncode != 0:
            detail = _redact(err.decode("utf-8", "replace"), code, phone)
            raise SmsError(f"SMS command {program} exited with status {proc.returncode}"
                           + (f": {detail}" if detail else ""))


class WebhookProvider:
    name = "webhook"

    def __init__(self, url: str, secret: str, timeout: float, ttl: float) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.ttl = ttl
        parts = urlsplit(url)
        # What errors may show: never the path, query or credentials.
        self.where = f"{parts.scheme}://{parts.hostname or ''}" + (
            f":{parts.port}" if parts.port else "")

    async def send(self, phone: str, code: str, text: str, user: str) -> None:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        body = {"phone": phone, "code": code, "text": text, "user": user,
                "ttl_seconds": int(self.ttl)}
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as http, http.post(
                    self.url, json=body, headers=headers, allow_redirects=False) as r:
                status = r.status
        except TimeoutError:
            raise SmsError(f"SMS webhook {self.where} did not answer within {self.timeout:g} s"
                           ) from None
        except aiohttp.ClientError as exc:
            raise SmsError(f"SMS webhook {self.where} failed: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise SmsError(f"SMS webhook {self.where} answered HTTP {status}")


def make_provider(cfg: ComplianceConfig) -> SmsProvider | None:
    if cfg.sms_provider == "command":
        return CommandProvider(cfg.sms_command, cfg.sms_timeout)
    if cfg.sms_provider == "webhook":
        secret = cfg.sms_webhook_secret or os.environ.get("TONGXIN_SMS_WEBHOOK_SECRET", "")
        return WebhookProvider(cfg.sms_webhook_url, secret, cfg.sms_timeout, cfg.sms_code_ttl)
    return None


def sms_keys_from(master: bytes) -> tuple[bytes, bytes]:
    """(SM4 key for phone numbers, HMAC-SM3 key for codes), both from the contents of
    secrets/totp.key (loaded sealed at rest by Compliance.open)."""
    return (hkdf_sm3(master, 16, info=b"tongxin sms phones v1"),
            hkdf_sm3(master, 32, info=b"tongxin sms codes v1"))


def sms_keys(home: Path) -> tuple[bytes, bytes]:
    """:func:`sms_keys_from` a plaintext secrets/totp.key (tests, tools without a keyring)."""
    return sms_keys_from(load_or_create_key(home / "secrets" / "totp.key"))


@dataclass(frozen=True, slots=True)
class Sent:
    phone_masked: str
    expires_at: int


class SmsFactor:
    def __init__(self, store: ComplianceStore, cfg: ComplianceConfig, keys: tuple[bytes, bytes],
                 provider: SmsProvider | None) -> None:
        self.store = store
        self.cfg = cfg
        self._enc_key, self._mac_key = keys
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    # ---- enrolment -------------------------------------------------------------

    def _seal_phone(self, user_id: str, phone: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + sm4_gcm_encrypt(self._enc_key, nonce, phone.encode(), user_id.encode())

    async def enroll(self, user_id: str, phone: str, by: str) -> str:
        """Store the (normalised) number at once, unconfirmed; returns it masked.
        Raises ValueError. The admin API and the CLI use :meth:`start_enrollment`
        and :meth:`confirm_enrollment` instead, which prove the number reaches
        the person first."""
        phone = normalize_phone(phone)
        await self.store.put_sms_phone(SmsPhone(user_id, self._seal_phone(user_id, phone),
                                                now_ms(), by))
        return mask_phone(phone)

    async def start_enrollment(self, user_id: str, username: str, phone: str, by: str,
                               now: int | None = None) -> Sent:
        """Send a confirmation code to ``phone``; the number is enrolled only when
        :meth:`confirm_enrollment` gets that code back.

        The pending number (encrypted) is kept in the settings under
        ``sms.pending.<user id>``; the code is the user's one outstanding code
        (a later login code replaces it, and the enrolment must start again).
        Its MAC is bound to the purpose, so an enrolment code never passes as a
        login code, nor the reverse. Raises ValueError (the number),
        SmsUnavailable, SmsRateLimited or SmsError.
        """
        phone = normalize_phone(phone)
        if self.provider is None:
            raise SmsUnavailable("SMS is not configured (compliance.sms_provider: none): a "
                                 "number cannot be confirmed")
        now = now_ms() if now is None else now
        wait = await self.store.reserve_sms_send(
            user_id, now, int(self.cfg.sms_send_interval * 1000), self.cfg.sms_max_per_hour)
        if wait:
            raise SmsRateLimited(wait)
        code = f"{secrets.randbelow(10 ** DIGITS):0{DIGITS}d}"
        expires = now + int(self.cfg.sms_code_ttl * 1000)
        mac = self._mac(user_id, now, code, ENROLL_PURPOSE)
        await self.store.set_setting(PENDING_SETTING + user_id, {
            "phone_enc": self._seal_phone(user_id, phone).hex(), "created_at": now, "by": by},
            now, by)
        await self.store.put_sms_code(SmsCode(user_id, mac, now, expires))
        try:
            await self.provider.send(phone, code, message_text(code, self.cfg.sms_code_ttl),
                                     username)
        except SmsError:
            await self.store.put_sms_code(SmsCode(user_id, mac, now, now))  # never valid
            raise
        return Sent(mask_phone(phone), expires)

    async def confirm_enrollment(self, user_id: str, code: str, by: str,
                                 now: int | None = None) -> tuple[SmsResult, str]:
        """(result, masked number): on OK the pending number is now the enrolled one."""
        if self.provider is None:
            return SmsResult.DISABLED, ""
        pending = await self.store.get_setting(PENDING_SETTING + user_id)
        row = await self.store.get_sms_code(user_id)
        if (not isinstance(pending, dict) or row is None
                or row.created_at != pending.get("created_at")):
            return SmsResult.NO_CODE, ""
        now = now_ms() if now is None else now
        result = await self._check(user_id, row, code, now, ENROLL_PURPOSE)
        if result is not SmsResult.OK:
            return result, ""
        sealed = bytes.fromhex(str(pending["phone_enc"]))
        phone = sm4_gcm_decrypt(self._enc_key, sealed[:12], sealed[12:], user_id.encode()).decode()
        await self.store.put_sms_phone(SmsPhone(user_id, sealed, now, str(pending.get("by", by))))
        await self.store.set_setting(PENDING_SETTING + user_id, None, now, by)
        return SmsResult.OK, mask_phone(phone)

    async def remove(self, user_id: str) -> bool:
        return await self.store.delete_sms_phone(user_id)

    async def phone(self, user_id: str) -> str | None:
        row = await self.store.get_sms_phone(user_id)
        if row is None:
            return None
        data = row.phone_enc
        try:
            return sm4_gcm_decrypt(self._enc_key, data[:12], data[12:], user_id.encode()).decode()
        except DecryptionError:
            return None

    async def enrolled(self, user_id: str) -> bool:
        return await self.store.get_sms_phone(user_id) is not None

    # ---- codes -------------------------------------------------------------------

    def _mac(self, user_id: str, created_at: int, code: str, purpose: str = "") -> str:
        # A login code's MAC input is unchanged from before purposes existed.
        prefix = f"{purpose}\x00" if purpose else ""
        return hmac_sm3(self._mac_key,
                        f"{prefix}{user_id}\x00{created_at}\x00{code}".encode()).hex()

    async def send(self, user_id: str, username: str, now: int | None = None) -> Sent:
        """Make a code, store its MAC, send it. Raises SmsUnavailable,
        SmsRateLimited or SmsError (then the code is void)."""
        if self.provider is None:
            raise SmsUnavailable("SMS is not configured (compliance.sms_provider: none)")
        phone = await self.phone(user_id)
        if phone is None:
            raise SmsUnavailable("no phone number is enrolled for this account")
        now = now_ms() if now is None else now
        wait = await self.store.reserve_sms_send(
            user_id, now, int(self.cfg.sms_send_interval * 1000), self.cfg.sms_max_per_hour)
        if wait:
            raise SmsRateLimited(wait)
        code = f"{secrets.randbelow(10 ** DIGITS):0{DIGITS}d}"
        expires = now + int(self.cfg.sms_code_ttl * 1000)
        mac = self._mac(user_id, now, code)
        await self.store.put_sms_code(SmsCode(user_id, mac, now, expires))
        try:
            await self.provider.send(phone, code, message_text(code, self.cfg.sms_code_ttl),
                                     username)
        except SmsError:
            await self.store.put_sms_code(SmsCode(user_id, mac, now, now))  # never valid
            raise
        return Sent(mask_phone(phone), expires)

    async def verify(self, user_id: str, code: str, now: int | None = None) -> SmsResult:
        if self.provider is None:
            return SmsResult.DISABLED
        if not await self.enrolled(user_id):
            return SmsResult.NOT_ENROLLED
        row = await self.store.get_sms_code(user_id)
        if row is None:
            return SmsResult.NO_CODE
        return await self._check(user_id, row, code, now_ms() if now is None else now, "")

    async def _check(self, user_id: str, row: SmsCode, code: str, now: int,
                     purpose: str) -> SmsResult:
        """Compare, count a wrong try, refuse replays and expired codes, spend the code."""
        code = code.strip().replace(" ", "")
        good = (len(code) == DIGITS and code.isdigit()
                and hmac.compare_digest(self._mac(user_id, row.created_at, code, purpose),
                                        row.code_mac))
        if not good:
            if not row.used_at:
                await self.store.sms_code_failed(user_id, row.created_at)
            return SmsResult.WRONG
        if row.used_at:
            return SmsResult.REPLAYED
        # Too many wrong tries void a code as its expiry does.
        if row.attempts >= MAX_ATTEMPTS or now >= row.expires_at:
            return SmsResult.EXPIRED
        if not await self.store.use_sms_code(user_id, row.created_at, now):
            return SmsResult.REPLAYED
        return SmsResult.OK
