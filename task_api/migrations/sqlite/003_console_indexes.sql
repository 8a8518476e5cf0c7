-- The console's task list filtered by workflow and status, newest first, a page at a time:
-- (status, seq) and (workflow, seq) each leave the other condition to a filter, which reads
-- every row of the smaller side when the pair is rare (no echo task PROCESSING among 1M).
CREATE INDEX tasks_workflow_status_seq ON tasks (workflow, status, seq);
