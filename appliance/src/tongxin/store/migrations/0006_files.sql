-- Schema version 6: files in the shared database (storage.backend mysql).
--
-- uploads, upload_parts, files: the FileMetaStore (files/mysql_meta.py), the
-- same tables as the SQLite default, so an upload started through a node of
-- one site is resumed, completed and downloaded through any node of either.
-- No foreign keys (TiDB does not enforce them): a part row is deleted with
-- its upload in the same transaction.
--
-- file_blob*: the blob store of files.backend database (files/db_blobs.py).
-- Bytes are written once into file_blob_chunks under a random content id, in
-- rows of 256 KiB (TiDB refuses entries over 6 MiB); a key
-- (file_blobs) names its bytes through file_blob_segments, so a finished
-- file refers to its parts' contents instead of copying them. A content
-- being written, or no longer named by any key, has a row in
-- file_blob_pending until its chunks are gone; that is how a write cut off
-- half-way, or a delete interrupted by a crash, is cleaned up later.
--
-- New tables only, so every statement can run again.

CREATE TABLE IF NOT EXISTS uploads (
    id VARBINARY(64) NOT NULL,
    owner_id VARBINARY(255) NOT NULL,
    conversation_id VARBINARY(255) NOT NULL,
    name VARCHAR(1024) NOT NULL,
    size BIGINT NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    sha256 VARBINARY(64) NOT NULL,
    sm3 VARBINARY(64) NOT NULL,
    part_size BIGINT NOT NULL,
    part_count INT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    file_id VARBINARY(64) NOT NULL DEFAULT '',
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */,
    KEY uploads_by_expiry (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id VARBINARY(64) NOT NULL,
    n INT NOT NULL,
    size BIGINT NOT NULL,
    sha256 VARBINARY(64) NOT NULL,
    blob_key VARBINARY(255) NOT NULL,
    PRIMARY KEY (upload_id, n) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS files (
    id VARBINARY(64) NOT NULL,
    conversation_id VARBINARY(255) NOT NULL,
    owner_id VARBINARY(255) NOT NULL,
    name VARCHAR(1024) NOT NULL,
    size BIGINT NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    sha256 VARBINARY(64) NOT NULL,
    sm3 VARBINARY(64) NOT NULL,
    blob_key VARBINARY(255) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */,
    KEY files_by_conversation (conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS file_blobs (
    blob_key VARBINARY(255) NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blob_key) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS file_blob_segments (
    blob_key VARBINARY(255) NOT NULL,
    n INT NOT NULL,
    content_id VARBINARY(32) NOT NULL,
    blob_pos BIGINT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (blob_key, n) /*T![clustered_index] CLUSTERED */,
    KEY file_blob_segments_by_content (content_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS file_blob_chunks (
    content_id VARBINARY(32) NOT NULL,
    pos BIGINT NOT NULL,
    data MEDIUMBLOB NOT NULL,
    PRIMARY KEY (content_id, pos) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS file_blob_pending (
    content_id VARBINARY(32) NOT NULL,
    touched_at BIGINT NOT NULL,
    PRIMARY KEY (content_id) /*T![clustered_index] CLUSTERED */,
    KEY file_blob_pending_by_age (touched_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
