"""How every Kafka client of the node connects (kafka.security_protocol).

``client_kwargs`` is the one place the aiokafka producers, consumers and
admin clients of the node (tongxin.delivery.kafka_bus) take their security
settings from, as redis_presence.tls_kwargs is for Redis:

* PLAINTEXT (the default): no arguments at all, so the clients are built
  exactly as before.
* SSL: TLS, the brokers' certificates verified against kafka.ssl_ca_file
  and their names against the address connected to (role pki puts the
  broker's IP address in its certificate's SANs).
* SASL_SSL: the same TLS and a SASL login (kafka.sasl_mechanism, PLAIN for
  role kafka's ``kafka_security: sasl_ssl``) as kafka.sasl_username with the
  password from $TONGXIN_KAFKA_PASSWORD (role appliance writes it to
  tongxin.env from kafka_client_password); never from the file.

A wrong or missing password, or a certificate the CA file does not verify,
is this node's configuration, not an outage: ``diagnose`` turns it into one
ConfigError naming what to fix (the start of the node exits 2 with it).
aiokafka itself only says "Unable to bootstrap from ..." and logs the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from typing import Any

from tongxin.config import ConfigError, KafkaConfig
from tongxin.tls_errors import cert_verify_reason

#: The environment variable holding the SASL password (one per installation).
PASSWORD_ENV = "TONGXIN_KAFKA_PASSWORD"

#: The configuration key of the CA the brokers' certificates are verified against.
CA_FIELD = "kafka.ssl_ca_file"

#: How long ``diagnose`` waits for one bootstrap server.
DIAGNOSE_TIMEOUT = 10.0


def kafka_password() -> str | None:
    """The SASL password every Kafka client of this node logs in with, if set."""
    return os.environ.get(PASSWORD_ENV) or None


def ssl_context(ca_file: str) -> ssl.SSLContext:
    """A client context trusting ``ca_file``: certificate and hostname (the
    address connected to, an IP address SAN) verified. create_default_context
    also loads the system's CAs, as redis-py does for Redis; the minimum is
    TLS 1.2, which Kafka's PEM ECDSA listeners speak (and 1.3)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka keyword arguments (AIOKafkaProducer, AIOKafkaConsumer,
    AIOKafkaAdminClient, create_conn) for ``cfg.security_protocol``; empty
    for PLAINTEXT. Raises ConfigError when SASL has no password in the
    environment: one line at start, before any connection is tried."""
    protocol = cfg.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol,
                              "ssl_context": ssl_context(cfg.ssl_ca_file)}
    if protocol.startswith("SASL_"):
        password = kafka_password()
        if password is None:
            raise ConfigError(f"kafka.security_protocol {protocol}: ${PASSWORD_ENV} is not set "
                              f"(the password of Kafka user {cfg.sasl_username!r}; role "
                              "appliance writes it to tongxin.env from kafka_client_password)")
        kwargs.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                      sasl_plain_password=password)
    return kwargs


def misconfigured(exc: BaseException, cfg: KafkaConfig) -> ConfigError | None:
    """A clear configuration error when ``exc`` (or what caused it) is the
    broker refusing this node's login, or its certificate failing verification
    against kafka.ssl_ca_file (or not naming the address); None otherwise (an
    outage, a plaintext broker: those stay errors of their own)."""
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError

    servers = cfg.bootstrap_servers
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, SaslAuthenticationFailed):
            # The broker's text ("Authentication failed: Invalid username or
            # password"), never the password.
            reason = (str(seen.args[0]) if seen.args else "").strip() or "SASL authentication failed"
            return ConfigError(f"kafka.sasl_username/${PASSWORD_ENV}: Kafka ({servers}) refused "
                               f"user {cfg.sasl_username!r} with the password in ${PASSWORD_ENV} "
                               f"({reason}): it must be role kafka's kafka_client_password")
        if isinstance(seen, UnsupportedSaslMechanismError):
            return ConfigError(f"kafka.sasl_mechanism: Kafka ({servers}) does not offer "
                               f"{cfg.sasl_mechanism} ({text}): role kafka's is PLAIN")
        unverified = cert_verify_reason(seen)
        if unverified is not None:
            return ConfigError(f"{CA_FIELD}: the certificate of Kafka ({servers}) is not verified "
                               f"by {cfg.ssl_ca_file} ({unverified}): it must be the CA that signed "
                               "the brokers' certificates (role pki's), and each certificate "
                               "must name the address in kafka.bootstrap_servers and the one "
                               "the broker advertises")
        seen = seen.__cause__ or seen.__context__
    return None


async def diagnose(cfg: KafkaConfig, wait: float = DIAGNOSE_TIMEOUT) -> ConfigError | None:
    """Why the brokers refuse this node, if it is its configuration: one
    connection (TLS and SASL as the clients make them) to each bootstrap
    server in turn; the first misconfigured() answer, or None when every
    server is down, answers (then something else failed) or fails otherwise.
    Plaintext has nothing to diagnose."""
    if cfg.security_protocol == "PLAINTEXT":
        return None
    from aiokafka.conn import create_conn

    kwargs = client_kwargs(cfg)
    for server in cfg.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), client_id="tongxin-diagnose",
                            request_timeout_ms=int(wait * 1000), **kwargs), wait)
        except Exception as exc:  # any failure: classified, or the next server
            refused = misconfigured(exc, cfg)
            if refused is not None:
                return refused
            continue
        with contextlib.suppress(Exception):
            conn.close()
    return None
