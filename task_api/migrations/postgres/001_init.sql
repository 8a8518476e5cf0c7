-- Tasks, their lease history and pending webhook deliveries. Times are epoch seconds.
CREATE TABLE tasks (
    seq BIGSERIAL PRIMARY KEY,                    -- insertion order: ties in priority run oldest first
    id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    progress TEXT NOT NULL DEFAULT '{"percent": 0, "message": ""}',
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout_s DOUBLE PRECISION NOT NULL,
    webhook_url TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    notify_done INTEGER NOT NULL DEFAULT 0,
    consumer_id TEXT,
    lease_id TEXT,
    lease_expires_at DOUBLE PRECISION,
    deadline_at DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);
-- Only claimable rows live in the hot index: finished tasks never slow a claim down, and
-- VACUUM has little to chase there.
CREATE INDEX tasks_pending ON tasks (priority DESC, seq) WHERE status = 'PENDING';
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'PROCESSING';
CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status = 'PROCESSING';
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_status_seq ON tasks (status, seq);
CREATE INDEX tasks_workflow_seq ON tasks (workflow, seq);

CREATE TABLE attempts (
    lease_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    consumer_id TEXT,
    host TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    outcome TEXT,
    error TEXT
);
CREATE INDEX attempts_task ON attempts (task_id, started_at);

CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX webhooks_due ON webhook_deliveries (next_at) WHERE status = 'pending';

-- Wake-ups for every API replica: a task became claimable (payload: workflow), or a task a
-- synchronous caller waits on finished (payload: id). NOTIFY is only an optimisation; the
-- API re-checks on a timer, so a lost notification delays work but never loses it.
CREATE FUNCTION taskfleet_notify() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'PENDING' THEN
        PERFORM pg_notify('taskfleet_pending', NEW.workflow);
    ELSIF NEW.notify_done = 1 AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
        PERFORM pg_notify('taskfleet_done', NEW.id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OF status ON tasks
    FOR EACH ROW EXECUTE FUNCTION taskfleet_notify();
