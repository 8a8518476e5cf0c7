"""Every statement the queue runs, SQLite and Postgres side by side.

Two invariants hold across all of them:
- **No task under two live leases.** A claim only takes PENDING rows and gives each a fresh
  ``lease_id``; every consumer write is fenced on ``id AND lease_id AND status = 'PROCESSING'
  AND lease_expires_at > now``, so a stale holder's write matches no row and changes nothing.
- **No accepted task is lost.** A create is one committed INSERT before the 2xx; no statement
  deletes a task that is not finished; an expired lease puts the task back to PENDING (or
  FAILED past ``max_attempts``), never nowhere.

Parameters are written ``:name`` for both dialects; ``postgres()`` rewrites them to ``$n``.
SQLite runs on one connection in the API's event loop thread, so each multi-statement
operation there is one ``BEGIN IMMEDIATE`` transaction; Postgres gets single statements with
data-modifying CTEs, one round trip each. A ``_SQLITE`` / ``_POSTGRES`` pair is run by
``sqlite.py`` / ``postgres.py``; a statement without a suffix serves both.
"""

from __future__ import annotations

import functools
import re

from taskfleet.states import TERMINAL as TERMINAL_STATUSES
from taskfleet.states import TaskStatus

# The terminal statuses as an SQL list, in the enum's order: ('COMPLETED', 'FAILED', 'CANCELLED').
TERMINAL = "(" + ", ".join(f"'{status}'" for status in TaskStatus if status in TERMINAL_STATUSES) + ")"
TASK_COLUMNS = (
    "seq, id, workflow, status, input, output, error, progress, priority, attempts, max_attempts, "
    "timeout_s, webhook_url, metadata, idempotency_key, request_hash, consumer_id, lease_id, "
    "lease_expires_at, cancel_requested, created_at, updated_at, started_at, finished_at, "
    "parent_id, stage, item_index, producer, pending_ttl_s, expires_at, rerun_of, compute_s, usage_by_stage"
)
# A pipeline task's own columns, beside TASK_COLUMNS where the pipeline is advanced.
PIPELINE_COLUMNS = "pipeline_def, stages_started"

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


# asyncpg prepares statements without seeing values, so parameters Postgres cannot infer
# (``$1 + $2``, ``$1 IS NULL``) get explicit types.
PG_TYPES = {
    "now": "float8", "lease_s": "float8", "not_before": "float8", "cutoff": "float8",
    "inflight_s": "float8", "next_at": "float8", "timeout_s": "float8", "limit": "int", "cursor": "bigint",
    "retryable": "boolean", "any_workflow": "boolean", "give_up": "boolean", "in_pipeline": "boolean",
    "workflows": "text[]", "ids": "text[]", "since": "float8",
    "pending_ttl_s": "float8", "rerun_of": "text", "compute_s": "float8", "priority": "int", "until": "float8",
    "since_short": "float8", "since_long": "float8", "status": "text", "workflow": "text", "producer": "text", "outcome": "text",
    "output": "text", "error": "text", "progress": "text",
    # INSERT_TASKS_POSTGRES's columns, one array each
    "id_list": "text[]", "workflow_list": "text[]", "input_list": "text[]", "priority_list": "int[]",
    "max_attempts_list": "int[]", "timeout_s_list": "float8[]", "webhook_url_list": "text[]",
    "metadata_list": "text[]", "idempotency_key_list": "text[]", "request_hash_list": "text[]",
    "notify_done_list": "int[]", "producer_list": "text[]", "pending_ttl_s_list": "float8[]", "rerun_of_list": "text[]",
    "fair_step_list": "float8[]", "fair_step": "float8",
    # COMPLETE_MANY_POSTGRES's items
    "lease_id_list": "text[]", "output_list": "text[]", "compute_s_list": "float8[]",
    # INSERT_STAGE_TASKS_POSTGRES's extra columns
    "parent_id_list": "text[]", "stage_list": "text[]", "item_index_list": "int[]",
    # TAKE_CREATE_TOKENS
    "rate": "float8", "capacity": "float8", "n": "float8",
}


@functools.lru_cache(maxsize=None)
def postgres(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` placeholders → typed ``$n`` for asyncpg, and the parameter names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        cast = PG_TYPES.get(name)
        return f"${names.index(name) + 1}" + (f"::{cast}" if cast else "")

    return _PARAM.sub(number, sql), tuple(names)


# -- fair share ---------------------------------------------------------------------------
# Within one priority, producers take turns (CONTRACT §9). Each task gets a fair-share key at
# insert and the claim takes PENDING tasks by (priority DESC, fair_key, seq): still one
# index-ordered statement (tasks_pending_fair), still SKIP LOCKED. A producer's next task takes
# the later of
#   - one step (1/weight) after its own last waiting task at that priority (its backlog runs in
#     order, one step apart), and
#   - the head of the line: the smallest key of a task claimable now at that priority; where
#     none is (all running, or in backoff), the largest waiting key; where none waits, 0.
# So a producer with 10k waiting holds keys h … h+9999, and another's new task gets h, right
# behind the backlog's head (ties run by seq): one task of each producer ahead of it runs
# before it, not the backlog. A producer that went idle comes back at the head, neither with
# credit saved up (a burst that would starve the others) nor behind its old keys. Keys never
# run backwards past a waiting task (the head is one), and
# a task that comes back to PENDING keeps its key, so it is in line where it was. Two creates
# of one producer at once on two Postgres replicas may take the same key: the tie runs by seq,
# and the producer is ahead by that one task for a moment. Each lookup is one probe of a
# partial index on PENDING rows (tasks_producer_pending, tasks_pending_fair).
def _fair_key(producer: str, priority: str, step: str, dialect: str) -> str:
    own = f"(SELECT max(fair_key) FROM tasks WHERE status = 'PENDING' AND producer = {producer} AND priority = {priority})"
    head = f"""COALESCE(
        (SELECT fair_key FROM tasks WHERE status = 'PENDING' AND priority = {priority} AND not_before <= :now
         ORDER BY fair_key LIMIT 1),
        (SELECT max(fair_key) FROM tasks WHERE status = 'PENDING' AND priority = {priority}), 0)"""
    if dialect == "postgres":
        return f"GREATEST({own} + {step}, {head})"  # GREATEST skips NULL: no own task waiting
    return f"max(COALESCE({own} + {step}, -1e308), {head})"


FAIR_KEY_SQLITE = _fair_key(":producer", ":priority", ":fair_step", "sqlite")
FAIR_KEY_POSTGRES = _fair_key(":producer", ":priority", ":fair_step", "postgres")


# -- producers' limits ------------------------------------------------------------------
# A rate-limited producer's create takes :n tokens from its bucket, refilled at :rate per second
# up to :capacity, in one statement that every replica runs against the same row: the
# read-refill-take is atomic (the row's lock on Postgres, the single writer on SQLite), so
# replicas never both spend the same token. Refused (no row returned) unless the bucket holds
# :n tokens, or is full: a batch bigger than the burst passes only from a full bucket and leaves
# it in debt, so the long-run rate still holds. The first create of a producer makes its row.
def _take_create_tokens(least: str, greatest: str) -> str:
    refilled = f"{least}(:capacity, producer_buckets.tokens + {greatest}(0, :now - producer_buckets.updated_at) * :rate)"
    return f"""
INSERT INTO producer_buckets (producer, tokens, updated_at) VALUES (:producer, :capacity - :n, :now)
ON CONFLICT (producer) DO UPDATE
SET tokens = {refilled} - :n, updated_at = {greatest}(:now, producer_buckets.updated_at)
WHERE {refilled} >= {least}(:n, :capacity)
RETURNING tokens
"""


TAKE_CREATE_TOKENS_SQLITE = _take_create_tokens("min", "max")
TAKE_CREATE_TOKENS_POSTGRES = _take_create_tokens("LEAST", "GREATEST")
# After a refusal: the tokens the bucket holds now, for the answer's Retry-After.
CREATE_TOKENS_NOW_SQLITE = (
    "SELECT min(:capacity, tokens + max(0, :now - updated_at) * :rate) FROM producer_buckets WHERE producer = :producer"
)
CREATE_TOKENS_NOW_POSTGRES = (
    "SELECT LEAST(:capacity, tokens + GREATEST(0, :now - updated_at) * :rate) FROM producer_buckets WHERE producer = :producer"
)
# A producer's pending quota is checked and its tasks inserted in one transaction that first
# takes this lock, so two replicas' creates for one producer cannot both pass on the same
# count (SQLite's BEGIN IMMEDIATE already runs one writer at a time).
LOCK_PRODUCER_POSTGRES = "SELECT pg_advisory_xact_lock(hashtext('taskfleet.producer.' || :producer))"
COUNT_PRODUCER_PENDING = "SELECT count(*) FROM tasks WHERE status = 'PENDING' AND producer = :producer"


# -- create -------------------------------------------------------------------------------
# One committed INSERT: once it returns, the task survives any crash. A repeated
# idempotency key inserts nothing and the caller reads the existing row instead. expires_at
# is :now + :pending_ttl_s, NULL (never) where no TTL applies, in every insert below.
_INSERT_TASK = """
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, webhook_url,
                   metadata, idempotency_key, request_hash, notify_done, not_before,
                   created_at, updated_at, producer, pending_ttl_s, expires_at, rerun_of, fair_key)
VALUES (:id, :workflow, 'PENDING', :input, :priority, :max_attempts, :timeout_s, :webhook_url,
        :metadata, :idempotency_key, :request_hash, :notify_done, :now, :now, :now, :producer,
        :pending_ttl_s, :now + :pending_ttl_s, :rerun_of, {fair_key})
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {columns}
"""
INSERT_TASK_SQLITE = _INSERT_TASK.format(fair_key=FAIR_KEY_SQLITE, columns=TASK_COLUMNS)
INSERT_TASK_POSTGRES = _INSERT_TASK.format(fair_key=FAIR_KEY_POSTGRES, columns=TASK_COLUMNS)

# A lone create handed straight to a parked fetch (queue.Queue._insert_one): the task goes in
# already leased to that fetch's consumer, as a claim would have left it. On SQLite the
# attempt row follows in the same transaction (INSERT_ATTEMPT_SQLITE); on Postgres a CTE adds it.
# It takes its fair-share key as a create would, for the time it may come back to PENDING.
_INSERT_LEASED = """
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, webhook_url,
                   metadata, idempotency_key, request_hash, notify_done, not_before,
                   created_at, updated_at, lease_id, consumer_id, lease_expires_at, deadline_at,
                   started_at, producer, pending_ttl_s, expires_at, rerun_of, fair_key)
VALUES (:id, :workflow, 'PROCESSING', :input, :priority, :max_attempts, :timeout_s, :webhook_url,
        :metadata, :idempotency_key, :request_hash, :notify_done, :now, :now, :now,
        :lease_id, :consumer_id, :now + :lease_s, :now + :timeout_s, :now, :producer,
        :pending_ttl_s, :now + :pending_ttl_s, :rerun_of, {fair_key})
ON CONFLICT (idempotency_key) DO NOTHING
"""
INSERT_LEASED_TASK_SQLITE = f"{_INSERT_LEASED.format(fair_key=FAIR_KEY_SQLITE)} RETURNING {TASK_COLUMNS}"
INSERT_LEASED_TASK_POSTGRES = f"""
WITH no_flush_wait AS (
    -- Visible to the consumer it is handed to before its WAL flush; the create answers its
    -- producer only after FLUSH_WAL_POSTGRES, so the accepted task is as durable as ever.
    SELECT set_config('synchronous_commit', 'off', true) AS setting
), task AS ({_INSERT_LEASED.format(fair_key=FAIR_KEY_POSTGRES)} RETURNING *
), history AS (
    INSERT INTO attempts (lease_id, task_id, consumer_id, host, started_at)
    SELECT lease_id, id, consumer_id, :host, :now FROM task
)
SELECT {TASK_COLUMNS} FROM task, no_flush_wait  -- named here, or Postgres never runs it
"""

# Postgres: a transaction that commits with a WAL flush, and so flushes every commit before it
# (WAL is one sequence). It must write WAL of its own, or its commit skips the flush (an xid
# alone is not enough): a transactional logical-decoding message is the smallest such write,
# open to every role, and read by nobody unless a logical decoding slot asks for the prefix.
# Makes a hand-off's insert durable before its create answers.
FLUSH_WAL_POSTGRES = "SELECT pg_logical_emit_message(true, 'taskfleet.flush', '')"

# Postgres: many tasks in one statement, one round trip and one commit (the batch route, and
# creates that arrive while another is being written). Rows go in the order given, so seq keeps
# submission order; a row whose idempotency key is taken, in the table or earlier in the same
# list, is skipped and missing from RETURNING.
INSERT_TASKS_COLUMNS = (
    "id", "workflow", "input", "priority", "max_attempts", "timeout_s", "webhook_url",
    "metadata", "idempotency_key", "request_hash", "notify_done", "producer", "pending_ttl_s", "rerun_of", "fair_step",
)
# Fair-share keys: each (producer, priority) of the list looks up its base once (as
# FAIR_KEY_POSTGRES), and its rows take the steps after it in list order.
INSERT_TASKS_POSTGRES = f"""
WITH r AS (
    SELECT u.*, row_number() OVER (PARTITION BY u.producer, u.priority ORDER BY u.ord) AS nth
    FROM unnest(:id_list, :workflow_list, :input_list, :priority_list, :max_attempts_list,
                :timeout_s_list, :webhook_url_list, :metadata_list, :idempotency_key_list,
                :request_hash_list, :notify_done_list, :producer_list, :pending_ttl_s_list, :rerun_of_list,
                :fair_step_list) WITH ORDINALITY
         AS u(id, workflow, input, priority, max_attempts, timeout_s, webhook_url,
              metadata, idempotency_key, request_hash, notify_done, producer, pending_ttl_s, rerun_of, fair_step, ord)
), lanes AS (
    SELECT l.producer, l.priority, {_fair_key('l.producer', 'l.priority', 'l.fair_step', 'postgres')} AS first
    FROM (SELECT DISTINCT producer, priority, fair_step FROM r) AS l
)
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, webhook_url,
                   metadata, idempotency_key, request_hash, notify_done, not_before,
                   created_at, updated_at, producer, pending_ttl_s, expires_at, rerun_of, fair_key)
SELECT r.id, r.workflow, 'PENDING', r.input, r.priority, r.max_attempts, r.timeout_s, r.webhook_url,
       r.metadata, r.idempotency_key, r.request_hash, r.notify_done, :now, :now, :now, r.producer,
       r.pending_ttl_s, :now + r.pending_ttl_s, r.rerun_of, lanes.first + (r.nth - 1) * r.fair_step
FROM r JOIN lanes ON lanes.producer = r.producer AND lanes.priority = r.priority
ORDER BY r.ord
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {TASK_COLUMNS}
"""

SELECT_BY_IDEMPOTENCY_KEY = f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = :key"
SELECT_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"
SELECT_ATTEMPTS = """
SELECT lease_id, consumer_id, host, started_at, ended_at, outcome, error
FROM attempts WHERE task_id = :id ORDER BY started_at, lease_id
"""

# Newest first; the cursor is the last seen seq.
def _list_tasks(status: bool, workflow: bool, cursor: bool, producer: bool = False) -> str:
    conditions = [c for c, on in (("status = :status", status), ("workflow = :workflow", workflow),
                                  ("producer = :producer", producer), ("seq < :cursor", cursor)) if on]  # fmt: skip
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return f"SELECT {TASK_COLUMNS} FROM tasks {where}ORDER BY seq DESC LIMIT :limit"


# The task list, newest first, one statement per combination of filters given (status,
# workflow, producer, cursor), each answered in order by an index: the primary key (seq),
# (status, seq), (workflow, seq), (workflow, status, seq), (producer, seq), (producer, status,
# seq); with both workflow and producer, the workflow's index, the producer checked on its rows
# (a producer usually sends few workflows). Run with PLAN_EACH_CALL on Postgres: a prepared
# statement's generic plan does not know which values it filters on, and for `workflow = $1
# AND status = $2` it picks the primary key and filters, reading all 1M rows for a pair with
# no task (100 ms per 300k rows), where the (workflow, status, seq) index reads none.
LIST_TASKS = {
    (s, w, c, p): _list_tasks(s, w, c, p)
    for s in (False, True) for w in (False, True) for c in (False, True) for p in (False, True)
}
PLAN_EACH_CALL = "SET LOCAL plan_cache_mode = force_custom_plan"

# -- claim --------------------------------------------------------------------------------
# Only PENDING rows whose backoff has passed are taken, by priority and then in fair-share
# order (see FAIR_KEY_*; one producer alone: oldest first), each gets its own fresh lease id, and
# the lease is recorded in the history in the same transaction. Postgres' SKIP LOCKED lets
# concurrent claimers (many fetches, several API replicas) pass over each other's rows
# instead of queueing on them; SQLite's single writer makes the UPDATE atomic by itself.
CLAIM_SQLITE = f"""
UPDATE tasks SET
    status = 'PROCESSING', lease_id = lower(hex(randomblob(16))), consumer_id = :consumer_id,
    lease_expires_at = :now + :lease_s, deadline_at = :now + timeout_s, cancel_requested = 0,
    started_at = :now, updated_at = :now
WHERE seq IN (
    SELECT seq FROM tasks
    WHERE status = 'PENDING' AND not_before <= :now
      AND (:any_workflow OR workflow IN (SELECT value FROM json_each(:workflows)))
    ORDER BY priority DESC, fair_key, seq LIMIT :limit)
RETURNING {TASK_COLUMNS}
"""
INSERT_ATTEMPT_SQLITE = """
INSERT INTO attempts (lease_id, task_id, consumer_id, host, started_at)
VALUES (:lease_id, :task_id, :consumer_id, :host, :now)
"""

CLAIM_POSTGRES = f"""
WITH picked AS (
    SELECT seq FROM tasks
    WHERE status = 'PENDING' AND not_before <= :now
      AND (:any_workflow OR workflow = ANY(:workflows))
    ORDER BY priority DESC, fair_key, seq LIMIT :limit
    FOR UPDATE SKIP LOCKED
), no_flush_wait AS (
    -- This claim's commit does not wait for its WAL flush (about 0.4 ms of every pickup). Only
    -- a crash of Postgres itself in the next few hundred ms can undo a claim: the task is then
    -- PENDING again, the holder's next write is fenced (409), and it runs once more. A create,
    -- complete or fail still waits for its flush, and flushing it flushes every claim before it.
    SELECT set_config('synchronous_commit', 'off', true) AS setting
), leased AS (
    UPDATE tasks t SET
        status = 'PROCESSING', lease_id = md5(random()::text || t.id || clock_timestamp()::text),
        consumer_id = :consumer_id, lease_expires_at = :now + :lease_s,
        deadline_at = :now + t.timeout_s, cancel_requested = 0, started_at = :now, updated_at = :now
    FROM picked, no_flush_wait WHERE t.seq = picked.seq
    RETURNING t.*
), history AS (
    INSERT INTO attempts (lease_id, task_id, consumer_id, host, started_at)
    SELECT lease_id, id, :consumer_id, :host, :now FROM leased
)
SELECT {TASK_COLUMNS} FROM leased ORDER BY priority DESC, fair_key, seq
"""

# Is anything claimable right now? (the fallback wake-up check; cheap on the partial index)
READY_WORKFLOWS = """
SELECT DISTINCT workflow FROM (
    SELECT workflow FROM tasks WHERE status = 'PENDING' AND not_before <= :now
    ORDER BY priority DESC, fair_key, seq LIMIT 64) AS ready
"""
NEXT_NOT_BEFORE = "SELECT min(not_before) FROM tasks WHERE status = 'PENDING' AND not_before > :now"

# -- the fence ----------------------------------------------------------------------------
# Every consumer write carries this condition: only the current, unexpired lease may act.
FENCE = (
    "id = :id AND lease_id = :lease_id AND status = 'PROCESSING' "
    "AND lease_expires_at > :now AND deadline_at > :now"
)

# A pipeline's stage task changes state only inside its pipeline's transaction (queue.py,
# ``_in_pipeline``), where the change and the pipeline's advancement commit together. The
# statements below that can end a task therefore skip stage tasks unless :in_pipeline says the
# caller holds that transaction; a miss sends the caller there.
OUTSIDE_PIPELINE = "(parent_id IS NULL OR :in_pipeline)"

# Extends the lease and records progress. Returns cancel_requested so the holder learns of a
# cancel at its next heartbeat.
HEARTBEAT = f"""
UPDATE tasks SET lease_expires_at = :now + :lease_s, progress = COALESCE(:progress, progress),
                 updated_at = :now
WHERE {FENCE}
RETURNING lease_expires_at, cancel_requested, workflow
"""

# Ends the lease: the attempt counts (complete, fail, cancel). :status is decided by the caller
# for complete/cancel; for fail it is computed here so the attempts check sees the row's own
# current count (SET expressions read the old values on both backends).
FINISH_COLUMNS = """
    attempts = attempts + 1,
    status = CASE
        WHEN :outcome = 'failed' AND :retryable AND attempts + 1 < max_attempts THEN 'PENDING'
        ELSE :status END,
    output = :output, error = :error, compute_s = compute_s + :compute_s,
    not_before = :not_before, lease_id = NULL, lease_expires_at = NULL, deadline_at = NULL,
    updated_at = :now,
    progress = CASE WHEN :status = 'COMPLETED' THEN '{"percent": 100, "message": "done"}' ELSE progress END
"""
# finished_at from the status the row takes (the same CASE as status above).
FINISHED_AT = f"""
    finished_at = CASE
        WHEN :outcome = 'failed' AND :retryable AND attempts + 1 < max_attempts THEN NULL
        WHEN :status IN {TERMINAL} THEN :now ELSE NULL END
"""
FINISH_SQLITE = f"""
UPDATE tasks SET {FINISH_COLUMNS}, {FINISHED_AT}
WHERE {FENCE} AND {OUTSIDE_PIPELINE}
RETURNING {TASK_COLUMNS}
"""
END_ATTEMPT_SQLITE = """
UPDATE attempts SET ended_at = :now, outcome = :outcome, error = :error WHERE lease_id = :lease_id
"""
# A finished attempt (complete, fail, cancel at heartbeat) keeps the compute seconds its
# consumer reported: GET /api/usage sums them by ended_at.
END_FINISHED_ATTEMPT_SQLITE = """
UPDATE attempts SET ended_at = :now, outcome = :outcome, error = :error, compute_s = :compute_s
WHERE lease_id = :lease_id
"""
ENQUEUE_WEBHOOK = f"""
INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
SELECT id, webhook_url, :now, :now FROM tasks
WHERE id = :id AND webhook_url IS NOT NULL AND status IN {TERMINAL}
"""

FINISH_POSTGRES = f"""
WITH done AS (
    UPDATE tasks SET {FINISH_COLUMNS}, {FINISHED_AT}
    WHERE {FENCE} AND {OUTSIDE_PIPELINE}
    RETURNING *
), ended AS (
    UPDATE attempts SET ended_at = :now, outcome = :outcome, error = :error, compute_s = :compute_s
    WHERE lease_id = :lease_id AND EXISTS (SELECT 1 FROM done)
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM done
    WHERE webhook_url IS NOT NULL AND status IN {TERMINAL}
)
SELECT {TASK_COLUMNS} FROM done
"""

# Postgres: many completions in one statement, each item under the same fence as FENCE (its
# own id, lease and unexpired deadlines). Stage tasks are left to their pipeline's transaction. An item whose fence fails matches no row and is
# missing from RETURNING; ``fenced_lease_id`` names the lease each returned row ended.
COMPLETE_MANY_POSTGRES = f"""
WITH items AS (
    SELECT * FROM unnest(:id_list, :lease_id_list, :output_list, :compute_s_list) AS i(id, lease_id, output, compute_s)
), done AS (
    UPDATE tasks t SET
        attempts = t.attempts + 1, status = 'COMPLETED', output = i.output, error = NULL,
        compute_s = t.compute_s + i.compute_s,
        not_before = :now, lease_id = NULL, lease_expires_at = NULL, deadline_at = NULL,
        updated_at = :now, progress = '{{"percent": 100, "message": "done"}}', finished_at = :now
    FROM items i
    WHERE t.id = i.id AND t.lease_id = i.lease_id AND t.status = 'PROCESSING'
      AND t.lease_expires_at > :now AND t.deadline_at > :now AND t.parent_id IS NULL
    RETURNING t.*, i.lease_id AS fenced_lease_id, i.compute_s AS attempt_compute_s
), ended AS (
    UPDATE attempts a SET ended_at = :now, outcome = 'completed', error = NULL, compute_s = done.attempt_compute_s
    FROM done WHERE a.lease_id = done.fenced_lease_id
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM done WHERE webhook_url IS NOT NULL
)
SELECT {TASK_COLUMNS}, fenced_lease_id FROM done
"""

# -- expiry -------------------------------------------------------------------------------
# A lease not heartbeated in time, or an attempt past its timeout_s, ends here: the attempt
# counts; the task goes back to PENDING, or FAILED past max_attempts, or CANCELLED when a
# cancel was waiting for it. Run by every API replica; on Postgres the row lock makes a
# second replica's UPDATE re-check the WHERE and skip rows the first one already moved.
EXPIRE_COLUMNS = """
    attempts = attempts + 1,
    status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED'
                  WHEN attempts + 1 >= max_attempts THEN 'FAILED' ELSE 'PENDING' END,
    error = CASE WHEN cancel_requested = 1 THEN '{"code": "cancelled", "message": "cancelled while running"}'
                 WHEN deadline_at <= :now THEN '{"code": "timed_out", "message": "attempt ran past timeout_s"}'
                 ELSE '{"code": "lease_expired", "message": "lease expired without a heartbeat"}' END,
    finished_at = CASE WHEN cancel_requested = 1 OR attempts + 1 >= max_attempts THEN :now ELSE NULL END,
    not_before = :now, lease_id = NULL, lease_expires_at = NULL, deadline_at = NULL, updated_at = :now
"""
EXPIRABLE = "status = 'PROCESSING' AND (lease_expires_at <= :now OR deadline_at <= :now)"

SELECT_EXPIRED_SQLITE = f"""
SELECT id, lease_id, CASE WHEN deadline_at <= :now THEN 'timed_out' ELSE 'lease_expired' END AS outcome
FROM tasks WHERE {EXPIRABLE} AND parent_id IS NULL LIMIT 500
"""
EXPIRE_ONE_SQLITE = f"""
UPDATE tasks SET {EXPIRE_COLUMNS}
WHERE id = :id AND lease_id = :lease_id AND {EXPIRABLE}
RETURNING id, workflow, status, error
"""

EXPIRE_POSTGRES = f"""
WITH due AS (
    SELECT seq, lease_id, CASE WHEN deadline_at <= :now THEN 'timed_out' ELSE 'lease_expired' END AS outcome
    FROM tasks WHERE {EXPIRABLE} AND parent_id IS NULL LIMIT 500 FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE tasks t SET {EXPIRE_COLUMNS}
    FROM due WHERE t.seq = due.seq
    RETURNING t.id, t.workflow, t.status, t.error, t.webhook_url, due.lease_id, due.outcome
), ended AS (
    UPDATE attempts a SET ended_at = :now, outcome = expired.outcome, error = expired.error
    FROM expired WHERE a.lease_id = expired.lease_id
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM expired
    WHERE webhook_url IS NOT NULL AND status IN {TERMINAL}
)
SELECT id, workflow, status, error FROM expired
"""

# Expired stage tasks: each is moved on its own, inside its pipeline's transaction
# (EXPIRE_ONE_SQLITE / EXPIRE_ONE_POSTGRES, which re-check that it is still expirable).
SELECT_EXPIRED_STAGE_TASKS = f"""
SELECT id, lease_id, CASE WHEN deadline_at <= :now THEN 'timed_out' ELSE 'lease_expired' END AS outcome
FROM tasks WHERE {EXPIRABLE} AND parent_id IS NOT NULL LIMIT 500
"""
EXPIRE_ONE_POSTGRES = f"""
WITH expired AS (
    UPDATE tasks SET {EXPIRE_COLUMNS}
    WHERE id = :id AND lease_id = :lease_id AND {EXPIRABLE}
    RETURNING id, workflow, status, error
), ended AS (
    UPDATE attempts a SET ended_at = :now, outcome = :outcome, error = expired.error
    FROM expired WHERE a.lease_id = :lease_id
)
SELECT id, workflow, status, error FROM expired
"""

# -- pending TTL --------------------------------------------------------------------------
# A task still PENDING at its expires_at ends FAILED `expired` without running (its backoff
# after a failed attempt included: the deadline counts from the create, or the last retry).
# Only PENDING rows match, so a task claimed meanwhile runs on; on Postgres the row lock and
# SKIP LOCKED let every replica run the pass at once: a row one replica moved is locked or no
# longer PENDING for the others, so no task ends twice. Stage tasks end inside their
# pipeline's transaction instead (SELECT_EXPIRED_PENDING_STAGE_TASKS, EXPIRE_PENDING_ONE).
EXPIRED_ERROR = '{"code": "expired", "message": "still PENDING when its expires_in_s ran out", "retryable": false}'
EXPIRE_PENDING_COLUMNS = f"""
    status = 'FAILED', error = '{EXPIRED_ERROR}', finished_at = :now, updated_at = :now,
    not_before = :now
"""
EXPIRING = "status = 'PENDING' AND expires_at IS NOT NULL AND expires_at <= :now"
EXPIRE_PENDING_SQLITE = f"""
UPDATE tasks SET {EXPIRE_PENDING_COLUMNS}
WHERE seq IN (SELECT seq FROM tasks WHERE {EXPIRING} AND parent_id IS NULL LIMIT 500)
RETURNING {TASK_COLUMNS}
"""
EXPIRE_PENDING_POSTGRES = f"""
WITH due AS (
    SELECT seq FROM tasks WHERE {EXPIRING} AND parent_id IS NULL LIMIT 500 FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE tasks t SET {EXPIRE_PENDING_COLUMNS} FROM due WHERE t.seq = due.seq RETURNING t.*
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM expired WHERE webhook_url IS NOT NULL
)
SELECT {TASK_COLUMNS} FROM expired
"""
SELECT_EXPIRED_PENDING_STAGE_TASKS = f"SELECT id FROM tasks WHERE {EXPIRING} AND parent_id IS NOT NULL LIMIT 500"
# One stage task, in its pipeline's transaction: re-checked, as a claim may have taken it.
EXPIRE_PENDING_ONE = f"""
UPDATE tasks SET {EXPIRE_PENDING_COLUMNS} WHERE id = :id AND {EXPIRING} RETURNING {TASK_COLUMNS}
"""

# -- release ------------------------------------------------------------------------------
# Back to PENDING at once without counting the attempt (shutdown, model server down); a
# cancel that was waiting for the holder ends the task instead.
RELEASE_COLUMNS = """
    status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED' ELSE 'PENDING' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now ELSE NULL END,
    error = CASE WHEN cancel_requested = 1 THEN '{"code": "cancelled", "message": "cancelled while running"}' ELSE error END,
    not_before = :now, lease_id = NULL, lease_expires_at = NULL, deadline_at = NULL, updated_at = :now
"""
RELEASE_SQLITE = f"""
UPDATE tasks SET {RELEASE_COLUMNS} WHERE {FENCE} AND {OUTSIDE_PIPELINE} RETURNING {TASK_COLUMNS}
"""
RELEASE_POSTGRES = f"""
WITH released AS (
    UPDATE tasks SET {RELEASE_COLUMNS} WHERE {FENCE} AND {OUTSIDE_PIPELINE} RETURNING *
), ended AS (
    UPDATE attempts SET ended_at = :now, outcome = 'released'
    WHERE lease_id = :lease_id AND EXISTS (SELECT 1 FROM released)
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM released
    WHERE webhook_url IS NOT NULL AND status IN {TERMINAL}
)
SELECT {TASK_COLUMNS} FROM released
"""

# -- producer-side state changes ------------------------------------------------------------
# PENDING → CANCELLED at once; PROCESSING → cancel requested (the holder learns at its next
# heartbeat). Terminal tasks match nothing, and neither does a pipeline task (its cancel is
# CANCEL_STAGE_TASKS and END_PIPELINE in its own transaction).
CANCEL_COLUMNS = """
    status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END,
    finished_at = CASE WHEN status = 'PENDING' THEN :now ELSE finished_at END,
    error = CASE WHEN status = 'PENDING' THEN '{"code": "cancelled", "message": "cancelled before it ran"}' ELSE error END,
    cancel_requested = CASE WHEN status = 'PROCESSING' THEN 1 ELSE cancel_requested END,
    updated_at = :now
"""
CANCEL_SQLITE = f"""
UPDATE tasks SET {CANCEL_COLUMNS} WHERE id = :id AND status IN ('PENDING', 'PROCESSING')
    AND pipeline_def IS NULL AND {OUTSIDE_PIPELINE}
RETURNING {TASK_COLUMNS}
"""
CANCEL_POSTGRES = f"""
WITH cancelled AS (
    UPDATE tasks SET {CANCEL_COLUMNS} WHERE id = :id AND status IN ('PENDING', 'PROCESSING')
        AND pipeline_def IS NULL AND {OUTSIDE_PIPELINE}
    RETURNING *
), hook AS (
    INSERT INTO webhook_deliveries (task_id, url, next_at, created_at)
    SELECT id, webhook_url, :now, :now FROM cancelled
    WHERE webhook_url IS NOT NULL AND status = 'CANCELLED'
)
SELECT {TASK_COLUMNS} FROM cancelled
"""

# A PENDING task's new priority: the claim orders by the column itself (tasks_pending), so
# the next claim sees it. Any other state matches nothing (the route answers 409); a pipeline
# task is never PENDING.
# A priority change takes the task to the new priority's line, placed as a create of its
# producer would be now (its old fair-share key was a place in another line); the same
# priority again keeps its place.
def _set_priority(fair_key: str) -> str:
    return f"""
UPDATE tasks SET priority = :priority, updated_at = :now,
    fair_key = CASE WHEN priority = :priority THEN fair_key ELSE {fair_key} END
WHERE id = :id AND status = 'PENDING'
RETURNING {TASK_COLUMNS}
"""


SET_PRIORITY_SQLITE = _set_priority(FAIR_KEY_SQLITE)
SET_PRIORITY_POSTGRES = _set_priority(FAIR_KEY_POSTGRES)

# A FAILED or CANCELLED task runs again from scratch; its history stays, and its pending TTL
# counts again from now. Pipelines and their
# stage tasks are retried as a whole (RETRY_PIPELINE).
RETRY = f"""
UPDATE tasks SET status = 'PENDING', attempts = 0, output = NULL, error = NULL,
    progress = '{{"percent": 0, "message": ""}}', cancel_requested = 0, not_before = :now,
    started_at = NULL, finished_at = NULL, updated_at = :now, expires_at = :now + pending_ttl_s
WHERE id = :id AND status IN ('FAILED', 'CANCELLED') AND parent_id IS NULL AND pipeline_def IS NULL
RETURNING {TASK_COLUMNS}
"""

# -- pipelines --------------------------------------------------------------------------------
# A pipeline's state changes (a stage task ending, its next stage starting, the pipeline ending,
# cancel, retry) happen in one transaction that first takes the pipeline's row: every change to
# one pipeline then runs one after another, and each sees the ones before it (on Postgres the
# lock's wait ends with the row as the previous holder committed it, and each later statement of
# READ COMMITTED reads a fresh snapshot). So of concurrent sibling completions, on any number of
# replicas, exactly one sees the stage done and starts the next; tasks_stage_item backs it up.
# Every path takes the pipeline's row before any of its stage tasks' rows: no lock cycle.
_PIPELINE_OF = f"""
SELECT {TASK_COLUMNS}, {PIPELINE_COLUMNS} FROM tasks
WHERE id = COALESCE((SELECT parent_id FROM tasks WHERE id = :id), :id) AND pipeline_def IS NOT NULL
"""
PARENT_OF = "SELECT parent_id FROM tasks WHERE id = :id"
SELECT_PIPELINE = f"SELECT {TASK_COLUMNS}, {PIPELINE_COLUMNS} FROM tasks WHERE id = :id AND pipeline_def IS NOT NULL"
LOCK_PIPELINE_SQLITE = _PIPELINE_OF  # BEGIN IMMEDIATE already holds the only write lock
LOCK_PIPELINE_POSTGRES = f"{_PIPELINE_OF} FOR UPDATE"

# A pipeline task never waits in the queue: it is PROCESSING from its create (its first stage
# tasks go in with it), holds no lease and so is never claimed, leased or expired. Its
# pending_ttl_s is its stage tasks': each may wait that long in the queue from its own create.
INSERT_PIPELINE_TASK = f"""
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, webhook_url,
                   metadata, idempotency_key, request_hash, notify_done, not_before,
                   created_at, updated_at, started_at, pipeline_def, stages_started, producer, pending_ttl_s, rerun_of)
VALUES (:id, :workflow, 'PROCESSING', :input, :priority, :max_attempts, :timeout_s, :webhook_url,
        :metadata, :idempotency_key, :request_hash, :notify_done, :now, :now, :now, :now,
        :pipeline_def, '[]', :producer, :pending_ttl_s, :rerun_of)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {TASK_COLUMNS}, {PIPELINE_COLUMNS}
"""

# A stage's tasks: ordinary PENDING tasks that name their pipeline, stage and item.
# Each takes its fair-share key as any create of its pipeline's producer.
INSERT_STAGE_TASK_SQLITE = f"""
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, metadata,
                   not_before, created_at, updated_at, parent_id, stage, item_index, producer, pending_ttl_s, expires_at,
                   fair_key)
VALUES (:id, :workflow, 'PENDING', :input, :priority, :max_attempts, :timeout_s, :metadata,
        :now, :now, :now, :parent_id, :stage, :item_index, :producer, :pending_ttl_s, :now + :pending_ttl_s,
        {FAIR_KEY_SQLITE})
RETURNING {TASK_COLUMNS}
"""
INSERT_STAGE_TASKS_COLUMNS = (
    "id", "workflow", "input", "priority", "max_attempts", "timeout_s", "metadata", "parent_id", "stage", "item_index",
    "producer", "pending_ttl_s", "fair_step",
)
INSERT_STAGE_TASKS_POSTGRES = f"""
WITH r AS (
    SELECT u.*, row_number() OVER (PARTITION BY u.producer, u.priority ORDER BY u.ord) AS nth
    FROM unnest(:id_list, :workflow_list, :input_list, :priority_list, :max_attempts_list,
                :timeout_s_list, :metadata_list, :parent_id_list, :stage_list, :item_index_list,
                :producer_list, :pending_ttl_s_list, :fair_step_list) WITH ORDINALITY
         AS u(id, workflow, input, priority, max_attempts, timeout_s, metadata, parent_id, stage, item_index,
              producer, pending_ttl_s, fair_step, ord)
), lanes AS (
    SELECT l.producer, l.priority, {_fair_key('l.producer', 'l.priority', 'l.fair_step', 'postgres')} AS first
    FROM (SELECT DISTINCT producer, priority, fair_step FROM r) AS l
)
INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, metadata,
                   not_before, created_at, updated_at, parent_id, stage, item_index, producer, pending_ttl_s, expires_at,
                   fair_key)
SELECT r.id, r.workflow, 'PENDING', r.input, r.priority, r.max_attempts, r.timeout_s, r.metadata,
       :now, :now, :now, r.parent_id, r.stage, r.item_index, r.producer, r.pending_ttl_s, :now + r.pending_ttl_s,
       lanes.first + (r.nth - 1) * r.fair_step
FROM r JOIN lanes ON lanes.producer = r.producer AND lanes.priority = r.priority
ORDER BY r.ord
RETURNING {TASK_COLUMNS}
"""

# How far each started stage is: counts by status.
# With their compute seconds, which the pipeline's usage sums (UPDATE_PIPELINE, END_PIPELINE).
STAGE_COUNTS = """
SELECT stage, status, count(*) AS n, sum(compute_s) AS compute_s FROM tasks WHERE parent_id = :id
GROUP BY stage, status
"""
# The outputs later stages and the pipeline's output read, in item order.
STAGE_OUTPUTS = """
SELECT stage, item_index, output FROM tasks WHERE parent_id = :id AND status = 'COMPLETED'
ORDER BY stage, item_index
"""
# The stage task that ended the pipeline: a failure before a cancel, the first to end first.
FIRST_ENDED_STAGE_TASK = """
SELECT id, stage, status, error FROM tasks WHERE parent_id = :id AND status IN ('FAILED', 'CANCELLED')
ORDER BY CASE status WHEN 'FAILED' THEN 0 ELSE 1 END, finished_at, seq LIMIT 1
"""
# The stages view of GET /api/tasks/{id}.
STAGE_TASKS = """
SELECT id, stage, item_index, status FROM tasks WHERE parent_id = :id ORDER BY stage, item_index, seq
"""

UPDATE_PIPELINE = """
UPDATE tasks SET stages_started = :stages_started, progress = :progress, updated_at = :now,
    compute_s = :compute_s, usage_by_stage = :usage_by_stage
WHERE id = :id
"""
END_PIPELINE = f"""
UPDATE tasks SET status = :status, output = :output, error = :error, progress = :progress,
    stages_started = :stages_started, finished_at = :now, updated_at = :now,
    compute_s = :compute_s, usage_by_stage = :usage_by_stage
WHERE id = :id AND status = 'PROCESSING'
RETURNING {TASK_COLUMNS}
"""
# Cancel a pipeline's unfinished stage tasks, as CANCEL does one task: a running one stops at
# its next heartbeat (and its end, with the pipeline already over, changes nothing).
CANCEL_STAGE_TASKS = f"""
UPDATE tasks SET {CANCEL_COLUMNS} WHERE parent_id = :id AND status IN ('PENDING', 'PROCESSING')
RETURNING id, workflow, status
"""

# Retry: the pipeline runs again; of its stage tasks only those that did not complete (same
# ids, attempts reset, as RETRY), and a stage task still running since a cancel keeps running.
RETRY_PIPELINE = f"""
UPDATE tasks SET status = 'PROCESSING', output = NULL, error = NULL, cancel_requested = 0,
    finished_at = NULL, updated_at = :now
WHERE id = :id AND status IN ('FAILED', 'CANCELLED') AND pipeline_def IS NOT NULL
RETURNING {TASK_COLUMNS}, {PIPELINE_COLUMNS}
"""
RETRY_STAGE_TASKS = """
UPDATE tasks SET status = 'PENDING', attempts = 0, output = NULL, error = NULL,
    progress = '{"percent": 0, "message": ""}', cancel_requested = 0, not_before = :now,
    started_at = NULL, finished_at = NULL, updated_at = :now, expires_at = :now + pending_ttl_s
WHERE parent_id = :id AND status IN ('FAILED', 'CANCELLED')
RETURNING id, workflow
"""
KEEP_STAGE_TASKS_RUNNING = "UPDATE tasks SET cancel_requested = 0 WHERE parent_id = :id AND status = 'PROCESSING'"

# -- housekeeping -----------------------------------------------------------------------------
# Retention only ever touches finished tasks; history and deliveries go with them (CASCADE).
PURGE_FINISHED = f"""
DELETE FROM tasks WHERE seq IN (
    SELECT seq FROM tasks WHERE finished_at IS NOT NULL AND finished_at < :cutoff
      AND status IN {TERMINAL} LIMIT 1000)
"""

# -- operator views ------------------------------------------------------------------------
# A consumer's report: one upsert, one row per consumer (the first report sets started_at).
REPORT_CONSUMER = """
INSERT INTO consumers (consumer_id, host, report, started_at, last_seen)
VALUES (:consumer_id, :host, :report, :now, :now)
ON CONFLICT (consumer_id) DO UPDATE SET host = excluded.host, report = excluded.report, last_seen = excluded.last_seen
"""
LIVE_CONSUMERS = """
SELECT consumer_id, host, report, started_at, last_seen FROM consumers
WHERE last_seen >= :since ORDER BY consumer_id
"""
PURGE_CONSUMERS = "DELETE FROM consumers WHERE last_seen < :cutoff"

# /api/stats: the open tasks through the status index, the finished ones of the last hour
# through the finished_at index; neither reads older finished tasks.
STATS_OPEN = """
SELECT workflow, status, count(*) AS n, min(created_at) AS oldest FROM tasks
WHERE status IN ('PENDING', 'PROCESSING') GROUP BY workflow, status
"""
STATS_FINISHED = """
SELECT workflow,
       sum(CASE WHEN status = 'COMPLETED' AND finished_at >= :since_short THEN 1 ELSE 0 END) AS completed_short,
       sum(CASE WHEN status = 'FAILED' AND finished_at >= :since_short THEN 1 ELSE 0 END) AS failed_short,
       sum(CASE WHEN status = 'COMPLETED' THEN 1 ELSE 0 END) AS completed_long,
       sum(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END) AS failed_long
FROM tasks WHERE finished_at >= :since_long GROUP BY workflow
"""
# The wait and run times behind the percentiles: the newest :limit completions of the window.
STATS_DURATIONS = """
SELECT workflow, started_at - created_at AS wait_s, finished_at - started_at AS run_s FROM tasks
WHERE finished_at >= :since_long AND status = 'COMPLETED' AND started_at IS NOT NULL
ORDER BY finished_at DESC LIMIT :limit
"""

# -- live events ----------------------------------------------------------------------------
# The recheck behind the task event streams (task_api/events.py): each watched task's
# updated_at, and its stage tasks' latest (a pipeline's stages change without touching it).
# By primary key and the parent_id index: one statement per replica per pass, for all streams.
_TASK_VERSIONS = """
SELECT id, updated_at, NULL AS stages_at FROM tasks WHERE id {watched}
UNION ALL
SELECT parent_id, NULL, max(updated_at) FROM tasks WHERE parent_id {watched} GROUP BY parent_id
"""
TASK_VERSIONS_SQLITE = _TASK_VERSIONS.format(watched="IN (SELECT value FROM json_each(:ids))")
TASK_VERSIONS_POSTGRES = _TASK_VERSIONS.format(watched="= ANY(:ids)")

# GET /api/usage: compute seconds of the attempts that ended in [since, until), through
# attempts_usage (only attempts that reported compute are in it), grouped by the task's
# workflow or producer. Stage tasks' attempts count under their own workflow; pipeline tasks
# hold no attempts, so nothing is counted twice.
_USAGE = """
SELECT t.{column} AS key, sum(a.compute_s) AS compute_s, count(*) AS attempts,
       count(DISTINCT a.task_id) AS tasks
FROM attempts a JOIN tasks t ON t.id = a.task_id
WHERE a.compute_s > 0 AND a.ended_at >= :since AND a.ended_at < :until
GROUP BY t.{column} ORDER BY compute_s DESC, key
"""
USAGE_BY = {column: _USAGE.format(column=column) for column in ("producer", "workflow")}

COUNT_BY_WORKFLOW_STATUS = "SELECT workflow, status, count(*) AS n FROM tasks GROUP BY workflow, status"
OLDEST_PENDING_BY_WORKFLOW = (
    "SELECT workflow, min(created_at) AS oldest FROM tasks WHERE status = 'PENDING' GROUP BY workflow"
)

# -- webhooks -------------------------------------------------------------------------------
# Deliveries are rows, so they survive a restart. Claiming one pushes next_at forward: if the
# sender dies mid-send, another sender (or this one after restart) tries again later.
CLAIM_WEBHOOKS_SQLITE = """
UPDATE webhook_deliveries SET next_at = :now + :inflight_s
WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_at <= :now
             ORDER BY next_at LIMIT :limit)
RETURNING id, task_id, url, attempts
"""
CLAIM_WEBHOOKS_POSTGRES = """
UPDATE webhook_deliveries SET next_at = :now + :inflight_s
WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_at <= :now
             ORDER BY next_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING id, task_id, url, attempts
"""
WEBHOOK_DELIVERED = "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1 WHERE id = :id"
WEBHOOK_FAILED = """
UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = :error, next_at = :next_at,
    status = CASE WHEN :give_up THEN 'dead' ELSE 'pending' END
WHERE id = :id
"""
NEXT_WEBHOOK_AT = "SELECT min(next_at) FROM webhook_deliveries WHERE status = 'pending'"
