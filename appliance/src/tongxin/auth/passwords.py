"""Password hashing with scrypt (RFC 7914) from the standard library's OpenSSL.

Stored form: ``scrypt$N$r$p$<salt b64>$<hash b64>`` so that the cost can be
raised later without invalidating existing hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

R, P, DKLEN = 8, 1, 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, n: int = 16384) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=R, p=P, dklen=DKLEN,
                            maxmem=256 * 1024 * 1024)
    return f"scrypt${n}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if algo != "scrypt":
            return False
        salt, want = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        got = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


CLASS_NAMES = ("lower-case letters", "upper-case letters", "digits", "other characters")


def char_classes(password: str) -> set[int]:
    """Which of the four classes (0 lower, 1 upper, 2 digits, 3 others) the password uses.

    Letters without case (汉字) count as "other characters".
    """
    found: set[int] = set()
    for ch in password:
        if ch.islower():
            found.add(0)
        elif ch.isupper():
            found.add(1)
        elif ch.isdigit():
            found.add(2)
        else:
            found.add(3)
    return found


def check_policy(password: str, min_length: int, min_classes: int = 1) -> str | None:
    """Return why the password is refused, or None."""
    if len(password) < min_length:
        return f"password must be at least {min_length} characters"
    if len(password) > 1024:
        return "password must be at most 1024 characters"
    if len(char_classes(password)) < min_classes:
        return (f"password must mix at least {min_classes} of: {', '.join(CLASS_NAMES)}")
    return None
