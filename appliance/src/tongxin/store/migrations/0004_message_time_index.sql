-- Schema version 4: an index on messages (conversation_id, sent_at), for the
-- compliance jobs that walk a conversation by time: retention deletes what
-- is older than a cutoff, an export reads a time range.
--
-- MySQL 8 has no CREATE INDEX IF NOT EXISTS; the migration runner treats
-- "duplicate key name" (1061) as done, so this statement can run again.

CREATE INDEX messages_by_time ON messages (conversation_id, sent_at);
