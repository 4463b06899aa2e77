"""Configuration: dataclasses with documented defaults, loaded from strict YAML.

Every key, its default and its meaning live in the ``doc`` metadata below;
docs/operations.md carries the same table and a test keeps the two equal.
Unknown keys and values of the wrong type are rejected with a message naming
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import yaml


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass
class TlsConfig:
    cert_file: str = _f("", "PEM certificate chain; with key_file the node serves HTTPS and wss:// "
                        "with TLS 1.3 only (empty: plain HTTP, e.g. behind the TLCP front proxy)")
    key_file: str = _f("", "PEM private key of cert_file; refused if every user may read it")
    client_ca_file: str = _f("", "PEM CA bundle; when set, clients must present a certificate "
                             "it signed (mutual TLS)")


@dataclass
class ServerConfig:
    listen: str = _f("127.0.0.1:8080", "HOST:PORT the HTTP and WebSocket listener binds")
    max_frame_payload: int = _f(65536, "largest payload of one frame; larger messages are fragmented")
    max_message_size: int = _f(8388608, "largest reassembled (and decompressed) message payload")
    compression_threshold: int = _f(1024, "payloads of at least this many bytes are zstd-compressed")
    fragment_timeout: float = _f(30.0, "seconds a fragmented message may take to complete")
    max_unauthenticated_message: int = _f(65536, "largest fragmented message accepted before "
                                          "AUTH_OK (an unauthenticated peer holds no more)")
    fragment_budget: int = _f(268435456, "bytes of unfinished fragmented messages all connections "
                              "of a node may hold together; past it a new fragment is refused")
    auth_timeout: float = _f(10.0, "seconds a new connection has to authenticate")
    auth_concurrency: int = _f(32, "AUTHs and REGISTERs a node works on at once; later ones "
                               "wait their turn in order (a reconnect storm), and a connection "
                               "waiting for its turn is not closed by auth_timeout")
    http_idle_timeout: float = _f(15.0, "seconds an HTTP connection may go without a complete "
                                  "request head, first or next (a WebSocket in use is not idle)")
    heartbeat_interval: float = _f(30.0, "seconds between client pings (jittered +-20%)")
    idle_timeout_factor: float = _f(3.0, "a connection silent this many heartbeat intervals is closed")
    send_queue_frames: int = _f(2048, "frames queued to one slow connection before it is dropped")
    send_queue_bytes: int = _f(16777216, "bytes queued to one slow connection before it is dropped")
    max_unauthenticated_errors: int = _f(5, "frames before AUTH tolerated before the connection closes")
    gc_freeze: bool = _f(True, "freeze start-up objects out of the cyclic GC (shorter pauses)")
    gc_freeze_interval: float = _f(2.0, "seconds between checks of the objects the cyclic GC "
                                   "holds beyond the frozen ones; past gc_freeze_threshold they "
                                   "are collected and frozen (held connections), and after a "
                                   "mass disconnect the heap is trimmed; 0: start-up freeze only")
    gc_freeze_threshold: int = _f(20000, "generation-2 objects (not frozen) that start a "
                                  "collect-and-freeze")
    loop_lag_interval: float = _f(0.25, "seconds between the event-loop lag probe's timers "
                                  "(tongxin_event_loop_lag_seconds); 0: no probe")
    web_client: bool = _f(True, "serve the web client at /")
    metrics_listen: str = _f("127.0.0.1:9464", "HOST:PORT of the Prometheus /metrics listener, "
                             "apart from the public one (worker N of server.workers binds "
                             "PORT+N); empty: none")
    public_metrics: bool = _f(False, "also answer /metrics on server.listen (the public "
                              "listener); off, it answers 404 there")
    client_endpoints: str = _f("", "comma-separated public ws:// or wss:// URLs of the "
                               "installation's entries (one per site), in the order clients try "
                               "them; GET /api/v1/info lists them; empty: only the entry the "
                               "client came through")
    workers: int = _f(1, "node processes sharing the port (SO_REUSEPORT); >1 needs kafka and redis")
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass
class StorageConfig:
    backend: str = _f("sqlite", "history and accounts backend: sqlite, or mysql (TiDB, MySQL, MariaDB)")
    sqlite_path: str = _f("", "SQLite file; empty means <data_dir>/tongxin.db")
    sqlite_synchronous: str = _f("full", "SQLite synchronous mode: full (fsync per batch) or normal")
    batch_max: int = _f(256, "SQLite writes committed together in one transaction (group commit)")
    mysql_dsn: str = _f("mysql://tongxin@127.0.0.1:4000/tongxin",
                        "mysql backend: mysql://USER[:PASSWORD]@HOST:PORT[,HOST:PORT...]/DATABASE; "
                        "several endpoints in order of preference (the first that answers is "
                        "used, the next after a failure, the first again later); without a "
                        "password in it, $TONGXIN_MYSQL_PASSWORD is used")
    mysql_pool_size: int = _f(32, "mysql backend: connections kept at most (transactions in flight)")
    mysql_timeout: float = _f(10.0, "mysql backend: seconds a connect, statement or lock wait may "
                              "take before the request fails with UNAVAILABLE")
    encryption: bool = _f(True, "encrypt message content, file blobs and server secrets at rest "
                          "(on/off); off writes plaintext but still reads what was encrypted")
    allow_unsealed_reads: bool = _f(False, "with encryption on, serve message rows stored "
                                    "without the at-rest seal (written while encryption was off) "
                                    "instead of withholding them; every such read is audited "
                                    "(atrest.unsealed_read); for a migration only, then off")


@dataclass
class AccountsConfig:
    self_registration: bool = _f(False, "allow REGISTER frames and POST /api/v1/register")
    token_ttl: float = _f(604800.0, "seconds a login token stays valid")
    lockout_threshold: int = _f(5, "failed logins within lockout_window that lock the account")
    lockout_window: float = _f(900.0, "seconds over which failed logins are counted")
    lockout_duration: float = _f(900.0, "seconds an account stays locked")
    password_min_length: int = _f(8, "shortest password accepted")
    password_min_classes: int = _f(1, "character classes (lower case, upper case, digits, others) "
                                   "a password must mix, 1-4; 1 means no rule")
    password_history: int = _f(0, "last passwords (the current one included) a new password may "
                               "not repeat; 0 turns the check off")
    password_max_age_days: float = _f(0.0, "days after which a password expires and must be "
                                      "changed before the next login; 0 never expires")
    session_idle_timeout: float = _f(0.0, "seconds a login token may go unused before a resume is "
                                     "refused (TOKEN_EXPIRED); 0 turns it off")
    scrypt_n: int = _f(16384, "scrypt cost parameter N for password hashes (power of two)")


@dataclass
class ChatConfig:
    recall_window: float = _f(120.0, "seconds after sending during which a message can be recalled")
    edit_window: float = _f(86400.0, "seconds after sending during which a message can be edited")
    max_group_members: int = _f(10000, "members a group may hold")
    max_members_per_change: int = _f(1000, "users one MEMBERS request may add or remove")
    sync_page_max: int = _f(200, "entries one SYNC answer returns at most")
    max_text_length: int = _f(16384, "characters one text message may hold")
    max_content_size: int = _f(4194304, "bytes one message's content may take (text, encrypted "
                               "envelope or file reference, as stored); larger SEND and EDIT "
                               "requests are refused with PAYLOAD_TOO_LARGE. TiDB stores at most "
                               "6 MiB per row (txn-entry-size-limit): raise that first")
    rate_limit_per_second: float = _f(20.0, "sustained frames per second one user may send")
    rate_limit_burst: float = _f(100.0, "burst of frames one user may send above the rate")
    rate_limit_backend: str = _f("auto", "where per-user rate limits are counted: memory (this node), "
                                 "redis (shared by all nodes), or auto (redis when presence.backend "
                                 "is redis)")
    receipt_fanout_limit: int = _f(500, "groups larger than this send receipts only to own devices")
    typing_fanout_limit: int = _f(500, "groups larger than this do not relay typing")


@dataclass
class DeliveryConfig:
    backend: str = _f("inprocess", "delivery between nodes: inprocess (one node) or kafka")


@dataclass
class KafkaConfig:
    bootstrap_servers: str = _f("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
    topic_prefix: str = _f("tongxin", "prefix of the per-node topics (<prefix>.node.<node_id>)")
    deliveries_topic: str = _f("tongxin.deliveries", "conversation-keyed deliveries topic")
    partitions: int = _f(12, "partitions of the deliveries topic when it is created")
    replication_factor: int = _f(1, "replicas of each topic when created (3 in production)")
    min_insync_replicas: int = _f(1, "min.insync.replicas of the deliveries topic (2 in production)")
    retention_days: float = _f(7.0, "retention of the deliveries topic (the offline queue)")
    node_topic_retention: float = _f(3600.0, "seconds routed records stay on a node's topic")
    router_group: str = _f("tongxin-router", "consumer group shared by all nodes for routing")
    linger_ms: int = _f(2, "producer linger: batching versus latency")
    send_timeout: float = _f(10.0, "seconds to wait for the broker before a send fails")
    start_timeout: float = _f(60.0, "seconds the node's start waits for Kafka (its topics, the "
                              "producer's id, the consumers' offsets) before it exits to be "
                              "started again; past a broker that went away half-way through, "
                              "the Kafka client would wait for ever")
    max_in_flight: int = _f(10000, "deliveries awaiting broker acks before sends are refused")
    mirrored_from: str = _f("", "site aliases, comma-separated, whose deliveries MirrorMaker 2 "
                                "copies here as <alias>.<deliveries_topic>; routers read them too")
    security_protocol: str = _f("PLAINTEXT", "how every Kafka client of the node connects: "
                                "PLAINTEXT, SSL (TLS, the brokers' certificates and addresses "
                                "verified against ssl_ca_file) or SASL_SSL (TLS and a password: "
                                "role kafka's kafka_security sasl_ssl)")
    sasl_mechanism: str = _f("PLAIN", "SASL mechanism with SASL_SSL: PLAIN (role kafka's), "
                             "SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str = _f("tongxin", "SASL user with SASL_SSL; the password is "
                            "$TONGXIN_KAFKA_PASSWORD (role kafka's kafka_client_password), never "
                            "this file")
    ssl_ca_file: str = _f("", "PEM CA file the brokers' certificates are verified against; "
                          "required with SSL and SASL_SSL (role pki's CA)")

    def mirrored_topics(self) -> list[str]:
        """The mirrored deliveries topics MirrorMaker 2 (DefaultReplicationPolicy) names."""
        aliases = (a.strip() for a in self.mirrored_from.split(","))
        return [f"{a}.{self.deliveries_topic}" for a in dict.fromkeys(aliases) if a]


@dataclass
class PresenceConfig:
    backend: str = _f("memory", "presence and routing: memory (one node) or redis")
    redis_nodes: str = _f("127.0.0.1:7000", "Redis Cluster startup nodes, comma-separated; "
                          "the password (this and the remote sites' clusters) is "
                          "$TONGXIN_REDIS_PASSWORD")
    key_prefix: str = _f("tx", "prefix of every Redis key")
    node_ttl: float = _f(15.0, "seconds without a heartbeat after which a node counts as dead")
    remote_redis_nodes: str = _f("", "other serving sites' Redis Clusters, ';' between sites, "
                                     "',' between startup nodes: presence shown to users merges "
                                     "them (routing stays local)")
    visibility: str = _f("shared", "whose presence and last-seen a user may see: shared (their "
                         "own and of people who share a conversation with them) or all")
    redis_tls_ca_file: str = _f("", "PEM CA file; when set, every Redis client of the node (this "
                                "site's cluster, the remote sites', rate limits, revocations) "
                                "speaks TLS and verifies the server's certificate and its "
                                "address against it (role redis's redis_tls); empty: plaintext")

    def remote_sites(self) -> list[str]:
        """One startup-node list per other site."""
        return [site.strip() for site in self.remote_redis_nodes.split(";") if site.strip()]


@dataclass
class FilesConfig:
    backend: str = _f("local", "where file contents live: local (<data_dir>/files), s3, or database "
                      "(the storage.backend mysql database: files replicate with it)")
    local_path: str = _f("", "local directory for file bytes (s3: its spool); empty means <data_dir>/files")
    max_file_size: int = _f(2147483648, "largest file one upload may declare (bytes)")
    part_size: int = _f(8388608, "upload part size; at least 65536, and at least 5 MiB with s3")
    max_parts: int = _f(10000, "parts one upload may have; part_size grows for files that need more")
    upload_expiry: float = _f(86400.0, "seconds an unfinished upload is kept after its last part")
    s3_endpoint: str = _f("", "S3 endpoint URL, e.g. https://s3.example.internal:9000")
    s3_bucket: str = _f("", "S3 bucket that holds the files (must exist)")
    s3_region: str = _f("us-east-1", "S3 region name used for request signing")
    s3_access_key: str = _f("", "S3 access key; empty means $TONGXIN_S3_ACCESS_KEY")
    s3_secret_key: str = _f("", "S3 secret key; empty means $TONGXIN_S3_SECRET_KEY")


@dataclass
class LoggingConfig:
    level: str = _f("info", "log level: debug, info, warning, error")
    json: bool = _f(True, "structured JSON lines on stderr (false: plain text)")


@dataclass
class ComplianceConfig:
    audit_sign_interval: float = _f(300.0, "seconds between SM2 signatures of the audit chain head")
    audit_hot_days: float = _f(30.0, "days audit records stay in the compliance store (compliance.db, "
                               "or the shared database) before they are archived")
    audit_retention_days: float = _f(180.0, "days audit records are kept, archives included; at least "
                                     "180 (网络安全法) unless audit_retention_override")
    audit_retention_override: bool = _f(False, "allow audit_retention_days below 180 "
                                        "(audited at every start)")
    audit_archive_dir: str = _f("", "audit archive directory; empty means <data_dir>/audit-archive "
                                "(with audit_archive_backend s3: only its lock file)")
    audit_archive_backend: str = _f("local", "where archive segments and manifests are written: local "
                                    "(audit_archive_dir), s3 (files.s3_endpoint and credentials) "
                                    "or database (the storage.backend mysql database)")
    audit_archive_bucket: str = _f("", "s3 archive: bucket (must exist); empty means files.s3_bucket")
    audit_archive_name: str = _f("", "s3 archive: objects go under audit-archive/<name>/, one name per "
                                 "chain (letters, digits, . _ -); empty means the database name with "
                                 "storage.backend mysql (one chain for all nodes), else node_id or "
                                 "hostname:port with : as _")
    audit_trusted_keys: str = _f("", "audit public keys verification trusts, comma-separated: SM3 "
                                 "fingerprints (64 hex digits, as `tongxin audit verify` prints) "
                                 "or paths of PEM files; a key found in audit-keys/ or the "
                                 "database and not listed is reported, not trusted; empty: "
                                 "nothing verifies")
    audit_anchor_dir: str = _f("", "directory, ideally on another host, where each signed audit "
                               "head is also written (audit-anchor-<name>.json) besides the "
                               "archive's anchor.json; verify fails when the chain falls short "
                               "of an anchor; empty: only the archive")
    step_up_window: float = _f(300.0, "seconds a verified TOTP code counts as a fresh second factor")
    message_retention_days: float = _f(0.0, "days messages are kept before `tongxin retention run` "
                                       "deletes them; 0 keeps them forever")
    retention_batch: int = _f(500, "messages the retention job deletes per transaction")
    sms_provider: str = _f("none", "SMS second factor for administrators: none, command or webhook")
    sms_command: str = _f("", "command provider: argv (split like a shell, but run without one); "
                          "{phone} and {code} in it are replaced, and $TONGXIN_SMS_PHONE, "
                          "$TONGXIN_SMS_CODE, $TONGXIN_SMS_TEXT are set")
    sms_webhook_url: str = _f("", "webhook provider: URL that receives a JSON POST per code")
    sms_webhook_secret: str = _f("", "webhook provider: sent as Authorization: Bearer; empty means "
                                 "$TONGXIN_SMS_WEBHOOK_SECRET (none if unset)")
    sms_timeout: float = _f(10.0, "seconds the SMS command or webhook may take")
    sms_code_ttl: float = _f(300.0, "seconds an SMS code stays valid (used once)")
    sms_send_interval: float = _f(60.0, "seconds between two SMS codes to one account")
    sms_max_per_hour: int = _f(5, "SMS codes one account may be sent per hour")


@dataclass
class CryptoConfig:
    suite: str = _f("gm", "crypto suite: gm (SM2/SM3/SM4) or international (Ed25519, X25519, "
                    "SHA-256, AES-256-GCM); new data keys at rest use its cipher, and "
                    "end-to-end encryption uses it")


@dataclass
class E2eeConfig:
    required: bool = _f(False, "refuse plaintext CHAT content (SEND, EDIT): only end-to-end "
                        "encrypted envelopes are accepted (docs/e2ee.md)")
    escrow_public_key_file: str = _f("", "compliance escrow: KEM public key of crypto.suite (SPKI "
                                     "DER or PEM); set, every envelope must carry a wrap to it; "
                                     "empty: escrow off")
    escrow_private_key_file: str = _f("", "compliance escrow: its PKCS#8 private key (DER or PEM, "
                                      "mode 0600), read only by the audited escrow decryption")
    escrow_sealed_key_file: str = _f("", "compliance escrow: its private key sealed and split "
                                     "k-of-n (`tongxin keys escrow-split`); opened only in memory "
                                     "by a two-person escrow request")
    escrow_statement_file: str = _f("", "compliance escrow: the organisation root's statement "
                                    "for the escrow key (`tongxin keys escrow-sign`), sent in "
                                    "AUTH_OK; without it clients refuse to encrypt")
    org_root_public_key_file: str = _f("", "the organisation root's public key (role pki); set, "
                                       "the node refuses to start with an escrow statement "
                                       "the root did not sign, and names the key in GET "
                                       "/api/v1/info for web clients to pin")


@dataclass
class KeysConfig:
    master_key_file: str = _f("", "file provider: KEK file (mode 0600), made on first start; "
                              "empty means <data_dir>/secrets/master.key")
    kms_command: str = _f("", "KMS hook: command that wraps and unwraps data keys (JSON on "
                          "stdin/stdout, docs/security.md); set, it replaces master_key_file")


@dataclass
class SiteConfig:
    name: str = _f("", "this node's site (dc1, dc2, dr), shown in /readyz and the heartbeat; "
                   "empty: a single-site install")
    role: str = _f("active", "active: serves users; standby: a warm standby (the DR site until "
                   "promotion) that refuses users, writes nothing and reports replication lag; "
                   "promote by setting active and restarting")
    heartbeat_interval: float = _f(1.0, "seconds between an active node's heartbeat writes "
                                   "(mysql backend) and a standby's reads of them")
    standby_status_urls: str = _f("", "comma-separated base URLs (http:// or https://HOST:PORT) "
                                  "of the standby site's nodes; an active node reads their "
                                  "/readyz for the console's site panel (GET /api/v1/admin/site: "
                                  "how far behind the DR copy is); https is verified against "
                                  "the system's CAs; empty: no standby shown")


@dataclass
class Config:
    data_dir: str = _f("", "state directory; empty means $TONGXIN_HOME, else ./var")
    node_id: str = _f("", "name of this node in logs and routing; empty means hostname:port")
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig)
    crypto: CryptoConfig = field(default_factory=CryptoConfig)
    e2ee: E2eeConfig = field(default_factory=E2eeConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    site: SiteConfig = field(default_factory=SiteConfig)

    @property
    def home(self) -> Path:
        return Path(self.data_dir or os.environ.get("TONGXIN_HOME") or "var")

    @property
    def files_dir(self) -> Path:
        return Path(self.files.local_path) if self.files.local_path else self.home / "files"

    @property
    def master_key_file(self) -> Path:
        k = self.keys.master_key_file
        return Path(k) if k else self.home / "secrets" / "master.key"

    @property
    def sqlite_file(self) -> Path:
        return Path(self.storage.sqlite_path) if self.storage.sqlite_path else self.home / "tongxin.db"

    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


def client_endpoint_list(value: str) -> list[str]:
    """``server.client_endpoints`` as a list, in order, without blanks or repeats."""
    return list(dict.fromkeys(u.strip() for u in value.split(",") if u.strip()))


def standby_url_list(value: str) -> list[str]:
    """``site.standby_status_urls`` as a list, in order, without blanks, repeats or a
    trailing slash; a value that is not an http:// or https:// base URL raises ConfigError."""
    out: list[str] = []
    for raw in value.split(","):
        url = raw.strip().rstrip("/")
        if not url:
            continue
        try:
            parts = urlsplit(url)
            port = parts.port  # ValueError when not a number in 0-65535
        except ValueError:  # also "http://[::1" (an unclosed IPv6 address)
            parts, port = urlsplit(""), 0
        if (parts.scheme not in ("http", "https") or not parts.hostname or port == 0
                or parts.path or parts.query or parts.fragment or parts.username
                or "://" not in url):
            raise ConfigError(f"site.standby_status_urls: {raw.strip()!r} is not an http:// or "
                              "https:// base URL (scheme://HOST[:PORT], no path: /readyz is "
                              "added)")
        if url not in out:
            out.append(url)
    return out


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"server.listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_CHOICES = {
    "storage.backend": ("sqlite", "mysql"),
    "storage.sqlite_synchronous": ("full", "normal"),
    "files.backend": ("local", "s3", "database"),
    "logging.level": ("debug", "info", "warning", "error"),
    "delivery.backend": ("inprocess", "kafka"),
    "kafka.security_protocol": ("PLAINTEXT", "SSL", "SASL_SSL"),
    "kafka.sasl_mechanism": ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    "presence.backend": ("memory", "redis"),
    "presence.visibility": ("shared", "all"),
    "chat.rate_limit_backend": ("auto", "memory", "redis"),
    "compliance.sms_provider": ("none", "command", "webhook"),
    "compliance.audit_archive_backend": ("local", "s3", "database"),
    "crypto.suite": ("gm", "international"),
    "site.role": ("active", "standby"),
}


#: Secrets that are never read from the file: the key someone may try, and
#: the environment variable that holds it instead.
_SECRETS = {"kafka.sasl_password": "TONGXIN_KAFKA_PASSWORD",
            "kafka.sasl_plain_password": "TONGXIN_KAFKA_PASSWORD",
            "kafka.password": "TONGXIN_KAFKA_PASSWORD"}


def _build(cls: type[Any], data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields and where in _SECRETS:
            raise ConfigError(f"{where}: not read from the configuration file; set "
                              f"${_SECRETS[where]} in the environment (tongxin.env)")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown configuration key {where!r}{hint}")
        want = hints[key]
        if dataclasses.is_dataclass(want):
            kwargs[key] = _build(want, value, where)  # type: ignore[arg-type]
            continue
        kwargs[key] = _coerce(want, value, where)
    obj = cls(**kwargs)
    _validate(obj, path)
    return obj


def _coerce(want: Any, value: Any, where: str) -> Any:
    # bool is a subclass of int in Python; YAML "yes" must not become 1.
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif want is str and isinstance(value, str):
        return value
    name = getattr(want, "__name__", str(want))
    raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


def _validate(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        choices = _CHOICES.get(where)
        if choices and value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
    if isinstance(obj, ServerConfig):
        parse_listen(obj.listen)
        if obj.auth_concurrency < 1:
            raise ConfigError("server.auth_concurrency: must be at least 1")
        if obj.max_frame_payload < 1024:
            raise ConfigError("server.max_frame_payload: must be at least 1024")
        if obj.max_message_size < obj.max_frame_payload:
            raise ConfigError("server.max_message_size: must be at least server.max_frame_payload")
        for url in client_endpoint_list(obj.client_endpoints):
            if not url.startswith(("ws://", "wss://")) or len(url) < 8:
                raise ConfigError(f"server.client_endpoints: {url!r} is not a ws:// or wss:// "
                                  "URL")
    if isinstance(obj, FilesConfig):
        _validate_files(obj)
    if isinstance(obj, TlsConfig) and bool(obj.cert_file) != bool(obj.key_file):
        raise ConfigError("server.tls.cert_file and server.tls.key_file: give both or neither")
    if isinstance(obj, TlsConfig) and obj.client_ca_file and not obj.cert_file:
        raise ConfigError("server.tls.client_ca_file: needs server.tls.cert_file and key_file")
    if isinstance(obj, KafkaConfig):
        for alias in obj.mirrored_from.split(","):
            # A dot would make "<alias>.<topic>" ambiguous (MirrorMaker 2's separator).
            if alias.strip() and not re.fullmatch(r"[A-Za-z0-9_-]+", alias.strip()):
                raise ConfigError(f"kafka.mirrored_from: {alias.strip()!r} is not a site alias "
                                  "(letters, digits, '_' and '-')")
        if obj.security_protocol == "PLAINTEXT":
            if obj.ssl_ca_file:
                # Nothing would use it: TLS is chosen by security_protocol, not by the file.
                raise ConfigError("kafka.ssl_ca_file: set, but kafka.security_protocol is "
                                  "PLAINTEXT: set security_protocol SASL_SSL (or SSL) or "
                                  "remove it")
        elif not obj.ssl_ca_file:
            raise ConfigError(f"kafka.ssl_ca_file: required with kafka.security_protocol "
                              f"{obj.security_protocol} (the PEM CA that signed the brokers' "
                              "certificates)")
        else:
            _check_ca_file("kafka.ssl_ca_file", obj.ssl_ca_file)
        if obj.security_protocol.startswith("SASL_") and not obj.sasl_username.strip():
            raise ConfigError("kafka.sasl_username: required with kafka.security_protocol "
                              f"{obj.security_protocol}")
    if isinstance(obj, PresenceConfig):
        for site in obj.remote_sites():
            for addr in site.split(","):
                _host, sep, port = addr.strip().rpartition(":")
                if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
                    raise ConfigError(f"presence.remote_redis_nodes: expected HOST:PORT, got "
                                      f"{addr.strip()!r}")
        if obj.redis_tls_ca_file:
            _check_ca_file("presence.redis_tls_ca_file", obj.redis_tls_ca_file)
    if isinstance(obj, KeysConfig):
        try:
            shlex.split(obj.kms_command)
        except ValueError as exc:
            raise ConfigError(f"keys.kms_command: {exc}") from None
    if isinstance(obj, Config):
        if (obj.presence.redis_tls_ca_file and obj.presence.backend != "redis"
                and obj.chat.rate_limit_backend != "redis"):
            # Nothing would use it: a file set for a Redis the node never talks to
            # is a mistake (the wrong section or a forgotten presence.backend).
            raise ConfigError("presence.redis_tls_ca_file: set, but this node uses no Redis "
                              "(presence.backend is memory): set presence.backend redis or "
                              "remove it")
        comp, files = obj.compliance, obj.files
        if comp.audit_archive_backend == "s3" and not (
                files.s3_endpoint and (comp.audit_archive_bucket or files.s3_bucket)):
            raise ConfigError("compliance.audit_archive_backend s3: files.s3_endpoint and a bucket "
                              "(compliance.audit_archive_bucket or files.s3_bucket) are required")
        for key, value in (("files.backend", files.backend),
                           ("compliance.audit_archive_backend", comp.audit_archive_backend)):
            if value == "database" and obj.storage.backend != "mysql":
                raise ConfigError(f"{key} database: needs storage.backend mysql (the bytes go "
                                  "into that database)")
    if isinstance(obj, StorageConfig):
        from tongxin.store.dsn import parse_dsn

        try:
            parse_dsn(obj.mysql_dsn)
        except ValueError as exc:
            raise ConfigError(f"storage.mysql_dsn: {exc}") from None
        if obj.mysql_pool_size < 1:
            raise ConfigError("storage.mysql_pool_size: must be at least 1")
        if obj.mysql_timeout <= 0:
            raise ConfigError("storage.mysql_timeout: must be positive")
    if isinstance(obj, KafkaConfig) and obj.start_timeout <= 0:
        raise ConfigError("kafka.start_timeout: must be positive")
    if isinstance(obj, SiteConfig) and obj.heartbeat_interval <= 0:
        raise ConfigError("site.heartbeat_interval: must be positive")
    if isinstance(obj, SiteConfig):
        standby_url_list(obj.standby_status_urls)
    if isinstance(obj, ChatConfig) and obj.max_content_size < 1024:
        raise ConfigError("chat.max_content_size: must be at least 1024")
    if isinstance(obj, AccountsConfig) and obj.scrypt_n & (obj.scrypt_n - 1):
        raise ConfigError("accounts.scrypt_n: must be a power of two")
    if isinstance(obj, AccountsConfig) and not 1 <= obj.password_min_classes <= 4:
        raise ConfigError("accounts.password_min_classes: must be 1, 2, 3 or 4")
    if isinstance(obj, ComplianceConfig):
        if obj.sms_provider == "command" and not obj.sms_command.strip():
            raise ConfigError("compliance.sms_command: required with sms_provider: command")
        try:
            shlex.split(obj.sms_command)
        except ValueError as exc:
            raise ConfigError(f"compliance.sms_command: {exc}") from None
        if obj.sms_provider == "webhook" and not obj.sms_webhook_url.startswith(
                ("http://", "https://")):
            raise ConfigError("compliance.sms_webhook_url: an http:// or https:// URL is required "
                              "with sms_provider: webhook")
    if isinstance(obj, ComplianceConfig):
        for pin in obj.audit_trusted_keys.split(","):
            pin = pin.strip()
            # A fingerprint cut short or mistyped must not pass for a (missing) file name.
            if pin and not re.fullmatch(r"[0-9a-fA-F]{64}", pin) and "/" not in pin:
                raise ConfigError(f"compliance.audit_trusted_keys: {pin!r} is neither an SM3 "
                                  "fingerprint (64 hex digits) nor a path to a PEM file")
    if isinstance(obj, ComplianceConfig) and obj.audit_archive_name and not re.fullmatch(
            r"[A-Za-z0-9_.-]+", obj.audit_archive_name):
        raise ConfigError("compliance.audit_archive_name: letters, digits, '.', '_' and '-' only")
    if (isinstance(obj, ComplianceConfig) and obj.audit_retention_days < 180
            and not obj.audit_retention_override):
        raise ConfigError("compliance.audit_retention_days: the legal minimum is 180 days "
                          "(网络安全法); set compliance.audit_retention_override to go below it")


FILES_MIN_PART_SIZE = 65536
S3_MIN_PART_SIZE = 5 * 1024 * 1024  # S3 refuses smaller parts (but the last) in a multipart copy


def _validate_files(f: FilesConfig) -> None:
    if f.part_size < FILES_MIN_PART_SIZE:
        raise ConfigError(f"files.part_size: must be at least {FILES_MIN_PART_SIZE}")
    if f.max_parts < 1:
        raise ConfigError("files.max_parts: must be at least 1")
    if f.backend == "s3":
        if f.part_size < S3_MIN_PART_SIZE:
            raise ConfigError(f"files.part_size: must be at least {S3_MIN_PART_SIZE} with the s3 backend")
        if f.max_parts > 10000:
            raise ConfigError("files.max_parts: S3 allows at most 10000 parts")
        if not f.s3_endpoint or not f.s3_bucket:
            raise ConfigError("files.s3_endpoint and files.s3_bucket: required with the s3 backend")


def _check_ca_file(where: str, path: str) -> None:
    """``path`` is a readable file with at least one PEM certificate that TLS can load."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{where}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{where}: {path} is not a PEM CA certificate TLS can use: {exc}") \
            from None


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    cfg: Config = _build(Config, data, "")
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        target = getattr(cfg, section) if key else cfg
        setattr(target, key or section, value)
    return cfg


def documented_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every key, in declaration order."""
    out: list[tuple[str, Any, str]] = []

    def walk(cls: type[Any], prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out.append((prefix + f.name, f.default, f.metadata["doc"]))

    walk(Config, "")
    return out
