-- Per-producer create rates (CONTRACT §9): one token bucket per rate-limited producer, shared by
-- every API replica, so the limit is the fleet's. Filled at the producer's rate up to one second's
-- worth; each created task takes one token.
CREATE TABLE producer_buckets (
    producer TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
