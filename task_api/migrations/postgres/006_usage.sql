-- Issue 18, part B: pending TTL, reruns and compute accounting.
-- pending_ttl_s: the task's expires_in_s as asked (or the API's default); kept so a retry, a
-- rerun and a pipeline's stage tasks measure it again from their own start.
-- expires_at: when a task still PENDING ends FAILED `expired` (NULL: never).
ALTER TABLE tasks ADD COLUMN pending_ttl_s DOUBLE PRECISION;
ALTER TABLE tasks ADD COLUMN expires_at DOUBLE PRECISION;
-- rerun_of: the finished task a POST /api/tasks/{id}/rerun copied.
ALTER TABLE tasks ADD COLUMN rerun_of TEXT;
-- compute_s: model-server slot seconds of all the task's attempts (a pipeline: of its stage
-- tasks); usage_by_stage: a pipeline's seconds by stage name, JSON.
ALTER TABLE tasks ADD COLUMN compute_s DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_by_stage TEXT;
-- Each attempt's own seconds: GET /api/usage sums them by when the attempt ended.
ALTER TABLE attempts ADD COLUMN compute_s DOUBLE PRECISION NOT NULL DEFAULT 0;
-- The expiry pass reads only PENDING tasks that have a deadline: tasks without one (the
-- default) never enter this index, so they cost it nothing.
CREATE INDEX tasks_expiring ON tasks (expires_at) WHERE status = 'PENDING' AND expires_at IS NOT NULL;
-- GET /api/usage reads the attempts that used compute, by end time; an attempt that used none
-- (echo, a release) never enters it.
CREATE INDEX attempts_usage ON attempts (ended_at) WHERE compute_s > 0;
