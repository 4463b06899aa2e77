-- Schema version 2: password history (and the time of each change) for the
-- password policy, and the last use of each login token for the session idle
-- timeout. New tables only, so every statement can run again.

CREATE TABLE IF NOT EXISTS password_history (
    user_id VARBINARY(255) NOT NULL,
    changed_at BIGINT NOT NULL,
    password_hash VARCHAR(1024) NOT NULL,
    PRIMARY KEY (user_id, changed_at) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS token_activity (
    token_id VARBINARY(255) NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (token_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
