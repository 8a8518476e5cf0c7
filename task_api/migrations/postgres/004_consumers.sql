-- The consumer registry: each consumer's last report of itself and its model servers (the
-- report's JSON as sent), one row per consumer, rewritten at most once per report interval.
-- A consumer whose last_seen is older than the API's TTL is no longer listed.
CREATE TABLE consumers (
    consumer_id TEXT PRIMARY KEY,
    host TEXT,
    report TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);
CREATE INDEX consumers_last_seen ON consumers (last_seen);
