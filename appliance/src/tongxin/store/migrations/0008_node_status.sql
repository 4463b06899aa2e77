-- Schema version 8: what the console's node list shows of every active node
-- (GET /api/v1/admin/nodes), carried by the replication heartbeat row each node
-- already rewrites every site.heartbeat_interval (tongxin.site.heartbeat): its
-- release, its address (server.listen), its open WebSocket connections and when
-- its process started.
--
-- Columns of site_heartbeat rather than a table of their own: the beat stays one
-- statement (one upsert of the node's own row) per interval, the row whose age
-- tells a standby the replication lag is the one that tells the console a node is
-- alive, and nothing else is written or replicated to dr. Nullable: a node of an
-- earlier release still running during a rolling upgrade keeps writing node_id,
-- site and beat_ms only, and the console shows the rest as unknown.
--
-- MySQL 8 has no ADD COLUMN IF NOT EXISTS: one column per statement, and the
-- migration runner counts "duplicate column name" (1060) as done, so each
-- statement can run again (an interrupted migration; TiDB nodes without named
-- locks migrating side by side).

ALTER TABLE site_heartbeat ADD COLUMN node_version VARCHAR(64) NULL;

ALTER TABLE site_heartbeat ADD COLUMN address VARCHAR(255) NULL;

ALTER TABLE site_heartbeat ADD COLUMN connections INT NULL;

ALTER TABLE site_heartbeat ADD COLUMN started_ms BIGINT NULL;
