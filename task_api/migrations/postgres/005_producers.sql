-- Producers (CONTRACT §9): each task names the producer whose token created it, and carries
-- its fair-share key: its place in line among the waiting tasks of its priority, so that
-- producers take turns (task_api/store/sql.py, "fair share", says how it is computed).
ALTER TABLE tasks ADD COLUMN producer TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tasks ADD COLUMN fair_key DOUBLE PRECISION NOT NULL DEFAULT 0;
-- The claim's order: priority, then fair-share key, then age; only claimable rows, as before.
DROP INDEX tasks_pending;
CREATE INDEX tasks_pending_fair ON tasks (priority DESC, fair_key, seq) WHERE status = 'PENDING';
-- A producer's last key in each priority (where its next task goes) and its pending count
-- (its quota), read at each create.
CREATE INDEX tasks_producer_pending ON tasks (producer, priority, fair_key) WHERE status = 'PENDING';
-- GET /api/tasks?producer=, newest first, alone and with status (the other filters' indexes
-- serve the combinations with workflow, the producer checked on their rows).
CREATE INDEX tasks_producer_seq ON tasks (producer, seq);
CREATE INDEX tasks_producer_status_seq ON tasks (producer, status, seq);
