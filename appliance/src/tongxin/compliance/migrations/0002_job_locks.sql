-- Compliance schema version 2: one row per installation-wide job (retention,
-- audit-archive) for ComplianceStore.exclusive on TiDB. The job's node holds
-- the row's lock (SELECT ... FOR UPDATE NOWAIT in a pessimistic transaction
-- kept open on one connection) for as long as the job runs, and a node that
-- finds it locked skips its turn. MySQL and MariaDB use GET_LOCK instead;
-- TiDB before 6.1 has no GET_LOCK (only a no-op), and TiDB's own GET_LOCK
-- (6.1 and later) is such a lock on a row of its mysql schema.
-- New table only, so the statement can run again.

CREATE TABLE IF NOT EXISTS compliance_job_locks (
    name VARBINARY(255) NOT NULL,
    PRIMARY KEY (name) /*T![clustered_index] CLUSTERED */
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
