-- Tasks, their lease history and pending webhook deliveries. Times are epoch seconds (REAL).
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,        -- insertion order: ties in priority run oldest first
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
    timeout_s REAL NOT NULL,
    webhook_url TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    notify_done INTEGER NOT NULL DEFAULT 0,      -- a synchronous /process caller waits on it
    consumer_id TEXT,
    lease_id TEXT,
    lease_expires_at REAL,
    deadline_at REAL,                             -- this attempt's timeout_s runs out
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,           -- retry backoff
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
-- Only claimable rows live in the hot index, so finished tasks never slow a claim down.
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
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT,
    error TEXT
);
CREATE INDEX attempts_task ON attempts (task_id, started_at);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX webhooks_due ON webhook_deliveries (next_at) WHERE status = 'pending';
