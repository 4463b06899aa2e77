-- Schema version 7: organisation units (组织机构) and who is in which.
--
-- org_units: the tree the system administrator keeps (tongxin.org.units holds
-- the rules: names unique among siblings, depth, no cycles, no deleting a unit
-- that is not empty). parent_id is '' for a top-level unit. The unique key on
-- (parent_id, name) backs the sibling rule up when two nodes create the same
-- name at once; names are trimmed and NFC-normalised before they get here, and
-- utf8mb4_bin compares them byte for byte as SQLite does.
--
-- org_members: one row per user in a unit; the primary key is what keeps a
-- user in at most one unit. No foreign keys (TiDB does not enforce them): the
-- store refuses to delete a unit that still has rows here.
--
-- conversations_by_kind: the system administrator's group list walks group
-- conversations by id (WHERE kind = 2 AND id > ? ORDER BY id), a range of this
-- index instead of a scan past every direct chat. MySQL 8 has no CREATE INDEX
-- IF NOT EXISTS; the migration runner treats "duplicate key name" (1061) as
-- done, and the tables are IF NOT EXISTS, so every statement can run again.

CREATE TABLE IF NOT EXISTS org_units (
    id VARBINARY(64) NOT NULL,
    parent_id VARBINARY(64) NOT NULL DEFAULT '',
    name VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id) /*T![clustered_index] CLUSTERED */,
    UNIQUE KEY org_units_by_parent_name (parent_id, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS org_members (
    user_id VARBINARY(255) NOT NULL,
    unit_id VARBINARY(64) NOT NULL,
    assigned_at BIGINT NOT NULL,
    PRIMARY KEY (user_id) /*T![clustered_index] CLUSTERED */,
    KEY org_members_by_unit (unit_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE INDEX conversations_by_kind ON conversations (kind, id);
