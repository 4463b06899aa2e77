"""The node's effective configuration as the console's 配置 page shows it (GET
/api/v1/admin/config): every key, its value, its default and whether it differs,
with every secret redacted to "set" / "not set".

Secrets never leave the node. A key is redacted when it holds a secret
(:data:`SECRET_KEYS`: credentials, the DSN that may carry the database password,
commands and a webhook URL that may carry an API key) or points at one (the files
of private keys); any other string value that carries a password in a URL
(``scheme://user:password@host``) is redacted too, whatever its key. The
environment variables the node reads secrets from (:data:`SECRET_ENV`) are listed
the same way: set or not, never their value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from tongxin.config import Config, documented_keys

# key -> the environment variable the node falls back to when the key is empty ("" if none).
SECRET_KEYS: dict[str, str] = {
    "storage.mysql_dsn": "TONGXIN_MYSQL_PASSWORD",  # mysql://USER:PASSWORD@...
    "files.s3_access_key": "TONGXIN_S3_ACCESS_KEY",
    "files.s3_secret_key": "TONGXIN_S3_SECRET_KEY",
    "compliance.sms_webhook_secret": "TONGXIN_SMS_WEBHOOK_SECRET",
    "compliance.sms_webhook_url": "",  # a provider's URL may carry its token in the query
    "compliance.sms_command": "",  # argv of an SMS gateway client: may name an API key
    "keys.kms_command": "",  # the KMS hook's argv: may carry a credential
    "keys.master_key_file": "",  # the KEK
    "server.tls.key_file": "",  # the TLS private key
    "e2ee.escrow_private_key_file": "",
    "e2ee.escrow_sealed_key_file": "",
}

# Secrets the node reads from its environment only (tongxin.env, written 0640 by role appliance).
SECRET_ENV: tuple[str, ...] = (
    "TONGXIN_MYSQL_PASSWORD", "TONGXIN_REDIS_PASSWORD", "TONGXIN_S3_ACCESS_KEY",
    "TONGXIN_S3_SECRET_KEY", "TONGXIN_SMS_WEBHOOK_SECRET",
)


def _has_url_password(value: str) -> bool:
    for part in value.replace(";", ",").split(","):
        part = part.strip()
        if "://" not in part:
            continue
        try:
            if urlsplit(part).password:
                return True
        except ValueError:
            return True  # cannot tell: keep it in
    return False


def is_secret(key: str, value: Any) -> bool:
    """Whether ``key``'s value must not leave the node."""
    return key in SECRET_KEYS or (isinstance(value, str) and _has_url_password(value))


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def effective_config(cfg: Config, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"keys": [...], "environment": [...]}`` for the admin API.

    Each key: ``key`` (section.key), ``section``, ``value`` and ``default`` (None when
    redacted), ``differs`` (from the default), ``redacted`` and, when redacted,
    ``set`` (a value is configured, here or in the fallback environment variable)."""
    env = os.environ if environ is None else environ
    out: list[dict[str, Any]] = []
    for key, default, _doc in documented_keys():
        value = _get(cfg, key)
        section = key.rsplit(".", 1)[0] if "." in key else ""
        row: dict[str, Any] = {"key": key, "section": section, "differs": value != default}
        if is_secret(key, value) or is_secret(key, default):
            fallback = SECRET_KEYS.get(key, "")
            row.update(value=None, default=None, redacted=True,
                       set=bool(value) or bool(fallback and env.get(fallback)))
        else:
            row.update(value=value, default=default, redacted=False)
        out.append(row)
    environment = [{"name": name, "set": bool(env.get(name))} for name in SECRET_ENV]
    return {"keys": out, "environment": environment}
