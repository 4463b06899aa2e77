-- Schema version 1: accounts, login tokens, conversations, members, the log.
--
-- Written in the SQL subset that MySQL 8, MariaDB 10.6+ and TiDB 7+ all run.
-- Identifiers and the idempotency key are VARBINARY, so comparisons and
-- ordering are byte-exact as in SQLite: no collation, no trailing-space
-- padding (utf8mb4_bin pads on MariaDB and TiDB alike). Text people read
-- (names, display names) is utf8mb4.
--
-- /*T![clustered_index] CLUSTERED */ is TiDB's own comment syntax: TiDB makes
-- those primary keys clustered (a conversation's history is one contiguous
-- key range, so SYNC is a range scan); MySQL and MariaDB read a comment.
-- No table has an integer surrogate key, so AUTO_RANDOM does not apply
-- (docs/architecture.md, "TiDB").
--
-- A statement preceded by a line `-- only: tidb` (or `-- only: mysql`) runs
-- only on that kind of server.

CREATE TABLE IF NOT EXISTS users (
    id VARBINARY(255) NOT NULL,
    username VARBINARY(255) NOT NULL,
    display_name VARCHAR(1024) NOT NULL,
    password_hash VARCHAR(1024) NOT NULL,
    role VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    failed_logins INT NOT NULL DEFAULT 0,
    first_failure_at BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    disabled TINYINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */,
    UNIQUE KEY users_by_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS tokens (
    id VARBINARY(255) NOT NULL,
    user_id VARBINARY(255) NOT NULL,
    device_id VARBINARY(255) NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */,
    KEY tokens_by_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS conversations (
    id VARBINARY(255) NOT NULL,
    kind INT NOT NULL,
    name VARCHAR(1024) NOT NULL,
    created_at BIGINT NOT NULL,
    created_by VARBINARY(255) NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0,
    member_count INT NOT NULL DEFAULT 0,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS members (
    conversation_id VARBINARY(255) NOT NULL,
    user_id VARBINARY(255) NOT NULL,
    role INT NOT NULL,
    joined_seq BIGINT NOT NULL,
    read_seq BIGINT NOT NULL DEFAULT 0,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id) /*T![clustered_index] CLUSTERED */,
    KEY members_by_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS messages (
    conversation_id VARBINARY(255) NOT NULL,
    seq BIGINT NOT NULL,
    sender_id VARBINARY(255) NOT NULL,
    sender_device VARBINARY(255) NOT NULL,
    client_msg_id VARBINARY(255) NOT NULL,
    sent_at BIGINT NOT NULL,
    kind INT NOT NULL,
    content MEDIUMBLOB NOT NULL,
    target_seq BIGINT NOT NULL DEFAULT 0,
    `system` MEDIUMBLOB NOT NULL,
    recalled TINYINT NOT NULL DEFAULT 0,
    edited_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, seq) /*T![clustered_index] CLUSTERED */,
    UNIQUE KEY messages_by_client_id (conversation_id, sender_id, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
