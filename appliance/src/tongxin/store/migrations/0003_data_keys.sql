-- Schema version 3: data-encryption keys of encryption at rest (tongxin.atrest). Each row
-- is one DEK wrapped by a key-encryption key that stays with the master key provider; ids
-- are random 32-bit numbers named in every ciphertext header. Message content written
-- before this version stays plaintext and is told apart by its first byte, so no data
-- migration runs here. New table only, so the statement can run again.

CREATE TABLE IF NOT EXISTS data_keys (
    id BIGINT NOT NULL,
    suite VARCHAR(32) NOT NULL,
    kek_id VARCHAR(255) NOT NULL,
    wrapped VARBINARY(1024) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
