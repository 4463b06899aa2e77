-- Compliance schema version 1: the audit chain, signed heads and the audit
-- public keys, second factors, admin sessions, settings, legal holds and
-- message retention, shared by every node of an installation.
--
-- Same conventions as the message store (tongxin/store/migrations): MySQL 8,
-- MariaDB 10.6+ and TiDB 7+; identifiers VARBINARY (byte-exact, as in
-- SQLite); text people read utf8mb4_bin; every statement re-runnable.
-- Table names do not collide with the message store's, which lives in the
-- same database.

CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    event VARCHAR(255) NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome VARCHAR(64) NOT NULL,
    body MEDIUMTEXT NOT NULL,
    hash CHAR(64) NOT NULL,
    PRIMARY KEY (seq) /*T![clustered_index] CLUSTERED */,
    KEY audit_records_by_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row, the chain head: every append locks it (SELECT ... FOR UPDATE), so
-- appends from all nodes form one chain. Created here so that the lock
-- always has a row to take (no gap locks, no first-append race).
CREATE TABLE IF NOT EXISTS audit_state (
    id TINYINT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_hash CHAR(64) NOT NULL,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO audit_state (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000')
ON DUPLICATE KEY UPDATE id = id;

CREATE TABLE IF NOT EXISTS audit_heads (
    id BIGINT NOT NULL AUTO_INCREMENT,
    seq BIGINT NOT NULL,
    hash CHAR(64) NOT NULL,
    ts BIGINT NOT NULL,
    node VARCHAR(255) NOT NULL,
    key_fp CHAR(64) NOT NULL,
    signature VARCHAR(512) NOT NULL,
    PRIMARY KEY (id),
    KEY audit_heads_by_seq (seq, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Public audit keys of every node (each node signs heads with its own key).
CREATE TABLE IF NOT EXISTS audit_keys (
    key_fp CHAR(64) NOT NULL,
    pem TEXT NOT NULL,
    node VARCHAR(255) NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (key_fp) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS totp (
    user_id VARBINARY(255) NOT NULL,
    secret_enc VARBINARY(1024) NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_step BIGINT NOT NULL DEFAULT 0,
    enrolled_by VARBINARY(255) NOT NULL DEFAULT '',
    PRIMARY KEY (user_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sms_phones (
    user_id VARBINARY(255) NOT NULL,
    phone_enc VARBINARY(1024) NOT NULL,
    enrolled_at BIGINT NOT NULL,
    enrolled_by VARBINARY(255) NOT NULL DEFAULT '',
    PRIMARY KEY (user_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sms_codes (
    user_id VARBINARY(255) NOT NULL,
    code_mac CHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0,
    attempts INT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sms_sends (
    id BIGINT NOT NULL AUTO_INCREMENT,
    user_id VARBINARY(255) NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (id),
    KEY sms_sends_by_user (user_id, at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per user that ever asked for an SMS: the rate-limit check locks it
-- (an upsert takes the row lock at once), so racing sends take turns.
CREATE TABLE IF NOT EXISTS sms_send_locks (
    user_id VARBINARY(255) NOT NULL,
    sends BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS admin_sessions (
    token_id VARBINARY(255) NOT NULL,
    user_id VARBINARY(255) NOT NULL,
    role VARCHAR(64) NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    factor_at BIGINT NOT NULL,
    PRIMARY KEY (token_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS compliance_settings (
    name VARBINARY(255) NOT NULL,
    value MEDIUMTEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by VARBINARY(255) NOT NULL,
    PRIMARY KEY (name) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS legal_holds (
    id BIGINT NOT NULL AUTO_INCREMENT,
    kind VARCHAR(32) NOT NULL,
    target VARBINARY(255) NOT NULL,
    reason TEXT NOT NULL,
    created_by VARBINARY(255) NOT NULL,
    created_at BIGINT NOT NULL,
    released_at BIGINT NOT NULL DEFAULT 0,
    released_by VARBINARY(255) NOT NULL DEFAULT '',
    PRIMARY KEY (id),
    KEY legal_holds_active (released_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS retention_policies (
    scope VARBINARY(255) NOT NULL,
    days DOUBLE NOT NULL,
    PRIMARY KEY (scope) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS retention_runs (
    id BIGINT NOT NULL AUTO_INCREMENT,
    started_at BIGINT NOT NULL,
    started_by VARBINARY(255) NOT NULL,
    cutoffs MEDIUMTEXT NOT NULL,
    run_cursor VARBINARY(255) NOT NULL DEFAULT '',
    deleted BIGINT NOT NULL DEFAULT 0,
    finished_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
