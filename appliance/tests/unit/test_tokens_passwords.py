"""Login tokens (HMAC-SM3) and password hashes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from gm_references import gmssl_hmac_sm3

from tongxin.auth.passwords import check_policy, hash_password, verify_password
from tongxin.auth.tokens import Claims, TokenError, TokenSigner, load_or_create_key

KEY = bytes(range(32))
CLAIMS = Claims("tid1", "u_1", "dev1", 1_000, 2_000)


def test_token_round_trip() -> None:
    signer = TokenSigner(KEY)
    assert signer.verify(signer.sign(CLAIMS), now_ms=1_500) == CLAIMS


def test_mac_is_hmac_sm3_as_gmssl_computes_it() -> None:
    # The standard library's HMAC over the pure-Python gmssl SM3: a second, independent
    # SM3/HMAC implementation.
    token = TokenSigner(KEY).sign(CLAIMS)
    prefix, body, mac = token.split(".")
    want = gmssl_hmac_sm3(KEY, f"{prefix}.{body}".encode())
    assert base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)) == want


def test_expired_token_is_refused() -> None:
    signer = TokenSigner(KEY)
    with pytest.raises(TokenError) as info:
        signer.verify(signer.sign(CLAIMS), now_ms=2_000)
    assert info.value.expired


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],  # MAC byte changed
    lambda t: t.replace(".", ".e30", 1),  # claims changed
    lambda t: "v2" + t[2:],
    lambda t: t.rsplit(".", 1)[0],
    lambda t: "",
])
def test_forged_tokens_are_refused(mangle: object) -> None:
    signer = TokenSigner(KEY)
    with pytest.raises(TokenError):
        signer.verify(mangle(signer.sign(CLAIMS)), now_ms=1_500)  # type: ignore[operator]


def test_token_from_another_key_is_refused() -> None:
    other = TokenSigner(bytes(32)).sign(CLAIMS)
    with pytest.raises(TokenError, match="signature"):
        TokenSigner(KEY).verify(other, now_ms=1_500)


def test_key_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        load_or_create_key(path)


def test_password_hash_verifies_only_the_right_password() -> None:
    stored = hash_password("correct horse", n=1024)
    assert stored.startswith("scrypt$1024$8$1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert hash_password("correct horse", n=1024) != stored  # salted
    assert not verify_password("x", "garbage")
    assert not verify_password("x", "bcrypt$1$2$3$4$5")


def test_password_policy() -> None:
    assert check_policy("short", 8) == "password must be at least 8 characters"
    assert check_policy("long enough", 8) is None
