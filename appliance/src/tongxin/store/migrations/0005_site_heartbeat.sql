-- Schema version 5: the replication heartbeat of multi-site installs (tongxin.site).
-- Every active node rewrites its own row every site.heartbeat_interval; a standby
-- node reads the newest beat from its replica, so now - beat_ms is the replication
-- lag end to end, whatever carries the rows (Galera then an async replica, TiCDC).
-- One row per node: nodes never write the same row, so they never conflict.
-- New table only, so the statement can run again.

CREATE TABLE IF NOT EXISTS site_heartbeat (
    node_id VARBINARY(255) NOT NULL,
    site VARBINARY(64) NOT NULL,
    beat_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
