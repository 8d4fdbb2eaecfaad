-- Every SQL statement of the project, by name. Parameters use SQLAlchemy's :name style.
-- Loaded by app/db/sql.py; each entry starts with "-- name --" and a one-line purpose.

-- insert_memory --
-- A new memory at version 1, with its vector's embedder and its text for full-text search.
INSERT INTO memories (user_id, content, embedding, embedder, metadata, importance, content_hash,
                      search_config, content_tsv)
VALUES (:user_id, :content, CAST(:embedding AS vector), :embedder, CAST(:metadata AS jsonb),
        :importance, :content_hash, CAST(:ts_config AS regconfig),
        to_tsvector(CAST(:ts_config AS regconfig), :content))
RETURNING id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
          created_at, updated_at, deleted_at;

-- insert_outbox --
-- The delivery event of one memory change; commits in the same transaction as the change.
INSERT INTO outbox (memory_id, user_id, memory_version, event_type, traceparent)
VALUES (:memory_id, :user_id, :memory_version, :event_type, :traceparent)
RETURNING id;

-- notify_outbox --
-- Wakes idle relays; Postgres delivers it only if the transaction commits.
SELECT pg_notify(:channel, '');

-- get_memory --
-- One live memory of one user.
SELECT id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
       created_at, updated_at, deleted_at
FROM memories
WHERE id = :id AND user_id = :user_id AND deleted_at IS NULL;

-- get_memories --
-- Live memories of one user among these ids.
SELECT id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
       created_at, updated_at, deleted_at
FROM memories
WHERE id = ANY(CAST(:ids AS uuid[])) AND user_id = :user_id AND deleted_at IS NULL;

-- memory_version_any_state --
-- Current version and deletion state of a memory of one user, to tell 404 from 409.
SELECT version, deleted_at FROM memories WHERE id = :id AND user_id = :user_id;

-- update_memory --
-- Apply a change and bump the version; fenced by an optional expected version.
UPDATE memories
SET content = COALESCE(:content, content),
    embedding = COALESCE(CAST(:embedding AS vector), embedding),
    embedder = COALESCE(:embedder, embedder),
    search_config = COALESCE(CAST(:ts_config AS regconfig), search_config),
    content_tsv = COALESCE(to_tsvector(CAST(:ts_config AS regconfig), :content), content_tsv),
    content_hash = COALESCE(:content_hash, content_hash),
    metadata = COALESCE(CAST(:metadata AS jsonb), metadata),
    importance = COALESCE(:importance, importance),
    version = version + 1,
    updated_at = now()
WHERE id = :id AND user_id = :user_id AND deleted_at IS NULL
  AND (CAST(:expected_version AS bigint) IS NULL OR version = :expected_version)
RETURNING id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
          created_at, updated_at, deleted_at;

-- delete_memory --
-- Tombstone a memory (the row stays until the graph has the delete) and bump the version.
UPDATE memories
SET deleted_at = now(), version = version + 1, updated_at = now()
WHERE id = :id AND user_id = :user_id AND deleted_at IS NULL
  AND (CAST(:expected_version AS bigint) IS NULL OR version = :expected_version)
RETURNING id, user_id, version;

-- record_history --
-- The history entry of these memories' current versions, in the transaction of the change that
-- made them; a delete's entry keeps no content (the earlier entries have it).
INSERT INTO memory_history (memory_id, user_id, version, event, content, metadata, importance,
                            actor, changed_at)
SELECT id, user_id, version, CAST(:event AS text),
       CASE WHEN CAST(:event AS text) <> 'deleted' THEN content END,
       CASE WHEN CAST(:event AS text) <> 'deleted' THEN metadata END,
       CASE WHEN CAST(:event AS text) <> 'deleted' THEN importance END,
       CAST(:actor AS text), now()
FROM memories
WHERE id = ANY(CAST(:ids AS uuid[])) AND user_id = :user_id;

-- memory_history --
-- A page of one user's memory's history, newest version first (keyset on the version).
SELECT memory_id, user_id, version, event, content, metadata, importance, actor, changed_at
FROM memory_history
WHERE memory_id = :memory_id AND user_id = :user_id
  AND (CAST(:before_version AS bigint) IS NULL OR version < :before_version)
ORDER BY version DESC
LIMIT :limit;

-- memory_history_exists --
-- Whether one user's memory has any history (an empty page past the end is not a 404).
SELECT 1 FROM memory_history WHERE memory_id = :memory_id AND user_id = :user_id LIMIT 1;

-- prune_history --
-- Forget a bounded batch of history entries past the retention age, never a memory's latest.
DELETE FROM memory_history
WHERE id IN (SELECT h.id FROM memory_history h
             WHERE h.changed_at < now() - make_interval(secs => :age_seconds)
               AND EXISTS (SELECT 1 FROM memory_history n
                           WHERE n.memory_id = h.memory_id AND n.version > h.version)
             ORDER BY h.changed_at
             LIMIT :limit);

-- list_memories --
-- One page of a user's live memories, newest first, keyset-paginated on (created_at, id).
SELECT id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
       created_at, updated_at, deleted_at
FROM memories
WHERE user_id = :user_id AND deleted_at IS NULL
  AND metadata @> CAST(:metadata AS jsonb)
  AND importance >= :min_importance
  AND (CAST(:after_created AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- search_settings --
-- Let filtered HNSW scans keep going until enough rows pass the filters (pgvector 0.8), and plan
-- each search for its own values: after five runs of the prepared statement Postgres may switch
-- to a generic plan that cannot see the user or the vector and sorts every row exactly
-- (measured at 100k: 8 ms with custom plans, 210-300 ms with the generic one).
SELECT set_config('hnsw.iterative_scan', 'strict_order', true),
       set_config('hnsw.ef_search', CAST(:ef_search AS text), true),
       set_config('plan_cache_mode', 'force_custom_plan', true);

-- memory_stats --
-- Counts of one user's (or every user's) memories.
SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live,
       count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted,
       count(*) FILTER (WHERE deleted_at IS NULL AND extracted_hash IS DISTINCT FROM content_hash)
           AS awaiting_extraction,
       COALESCE(avg(importance) FILTER (WHERE deleted_at IS NULL), 0) AS avg_importance,
       count(DISTINCT user_id) AS users
FROM memories
WHERE CAST(:user_id AS text) IS NULL OR user_id = :user_id;

-- list_users --
-- Users with live memories, in id order (keyset on the id), optionally by id prefix.
SELECT user_id, count(*) AS memories, max(updated_at) AS last_change
FROM memories
WHERE deleted_at IS NULL
  AND (CAST(:after AS text) IS NULL OR user_id > :after)
  AND (CAST(:prefix AS text) IS NULL OR starts_with(user_id, :prefix))
GROUP BY user_id
ORDER BY user_id
LIMIT :limit;

-- embedding_dimension --
-- The dimension of memories.embedding as the database has it.
SELECT atttypmod FROM pg_attribute
WHERE attrelid = to_regclass('memories') AND attname = 'embedding';

-- idempotency_get --
-- A stored answer for an Idempotency-Key of one API key (scope) and user, within retention.
SELECT request_hash, memory_id, memory_ids FROM idempotency_keys
WHERE scope = :scope AND user_id = :user_id AND key = :key;

-- idempotency_put --
-- Remember which memory an Idempotency-Key created; loses the race quietly to a concurrent twin.
INSERT INTO idempotency_keys (scope, user_id, key, request_hash, memory_id, memory_ids)
VALUES (:scope, :user_id, :key, :request_hash, :memory_id, CAST(:memory_ids AS uuid[]))
ON CONFLICT DO NOTHING
RETURNING memory_id;

-- prune_idempotency_keys --
-- Forget a bounded batch of Idempotency-Keys older than the retention age.
DELETE FROM idempotency_keys
WHERE ctid IN (SELECT ctid FROM idempotency_keys
               WHERE created_at < now() - make_interval(secs => :age_seconds)
               ORDER BY created_at LIMIT :limit);

-- idempotency_lock --
-- Serialise concurrent requests with the same Idempotency-Key for the transaction.
-- chr(31) separates the parts: text cannot hold chr(0), and a collision only serialises.
SELECT pg_advisory_xact_lock(hashtextextended(:scope || chr(31) || :user_id || chr(31) || :key,
                                              0));

-- claim_due --
-- Lease a batch of due pending rows to this relay; other relays skip the locked ones. Rows a
-- breaker holds are not due (outbox_pending_due leaves them out).
WITH due AS (
    SELECT id FROM outbox
    WHERE status = 'pending' AND held_by IS NULL AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o
SET status = 'in_flight', lease_expires_at = now() + make_interval(secs => :lease_seconds),
    updated_at = now()
FROM due WHERE o.id = due.id
RETURNING o.id, o.memory_id, o.user_id, o.memory_version, o.event_type;

-- hold_due_needing_extraction --
-- While the extractor's breaker is open: due rows whose memory needs a fresh extraction wait
-- for it (held), so claims pass them by; deleted memories and current caches need only the graph.
WITH due AS (
    SELECT o.id FROM outbox o
    JOIN memories m ON m.id = o.memory_id
    WHERE o.status = 'pending' AND o.held_by IS NULL AND o.next_attempt_at <= now()
      AND m.deleted_at IS NULL
      AND (m.entities IS NULL OR m.extracted_hash IS DISTINCT FROM m.content_hash)
    ORDER BY o.next_attempt_at, o.id
    LIMIT :limit
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox o
SET held_by = :breaker, updated_at = now()
FROM due WHERE o.id = due.id;

-- reclaim_expired --
-- In-flight rows whose lease ran out (worker killed, message lost) count an attempt and go back
-- to pending, or to dead after the last attempt.
WITH expired AS (
    SELECT id FROM outbox
    WHERE status = 'in_flight' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o
SET attempts = o.attempts + 1,
    status = CASE WHEN o.attempts + 1 >= :max_attempts THEN 'dead' ELSE 'pending' END,
    next_attempt_at = now(),
    lease_expires_at = NULL,
    last_error = CAST(:error AS text),
    errors = o.errors || jsonb_build_object('attempt', o.attempts + 1, 'at', now(),
                                            'error', CAST(:error AS text)),
    updated_at = now()
FROM expired WHERE o.id = expired.id
RETURNING o.id, o.status;

-- reclaim_expired_held --
-- In-flight rows whose lease ran out while a dependency's breaker is open: the outage, not the
-- row, is to blame, so they go back without an attempt and wait for the breaker to close.
WITH expired AS (
    SELECT id FROM outbox
    WHERE status = 'in_flight' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o
SET status = 'pending', held_by = :breaker, lease_expires_at = NULL,
    last_error = CAST(:error AS text), updated_at = now()
FROM expired WHERE o.id = expired.id
RETURNING o.id, o.status;

-- outbox_rows_for_work --
-- The rows a worker was sent, with their memory's current state; skips finished rows.
-- (outbox.memory_id cascades on delete, so every row still has its memory.)
SELECT o.id AS outbox_id, o.memory_id, o.user_id, o.memory_version, o.event_type, o.status,
       o.attempts, EXTRACT(EPOCH FROM o.lease_expires_at - now()) AS lease_left, o.traceparent,
       m.content, m.metadata, m.importance, m.version, m.content_hash, m.entities, m.extractor,
       m.extracted_hash, m.deleted_at, m.user_id AS memory_user_id
FROM outbox o
JOIN memories m ON m.id = o.memory_id
WHERE o.id = ANY(:ids) AND o.status IN ('pending', 'in_flight')
ORDER BY o.memory_id;

-- save_extraction --
-- Cache an extraction result (and its entity keys) on the memory, only if the content it was
-- made from is current.
UPDATE memories
SET entities = CAST(:entities AS jsonb), extractor = :extractor, extracted_hash = :content_hash,
    entity_keys = CAST(:entity_keys AS text[])
WHERE id = :id AND content_hash = :content_hash;

-- mark_done --
-- The graph has version :version of the memory: every open row up to that version is done.
UPDATE outbox
SET status = 'done', done_at = now(), lease_expires_at = NULL, updated_at = now()
WHERE memory_id = :memory_id AND memory_version <= :version
  AND status IN ('pending', 'in_flight');

-- record_failure --
-- One failed attempt: count it, keep its error, schedule the retry or declare the row dead.
UPDATE outbox
SET attempts = attempts + 1,
    status = CASE WHEN attempts + 1 >= :max_attempts THEN 'dead' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => :delay_seconds),
    lease_expires_at = NULL,
    held_by = NULL,
    last_error = CAST(:error AS text),
    errors = errors || jsonb_build_object('attempt', attempts + 1, 'at', now(),
                                          'error', CAST(:error AS text)),
    updated_at = now()
WHERE id = :id AND status IN ('pending', 'in_flight')
RETURNING id, status, attempts;

-- release_rows --
-- Back to pending without counting an attempt (a dependency's outage, not the row's fault):
-- held by a breaker until it closes, or (held_by NULL) due again after :delay_seconds.
UPDATE outbox
SET status = 'pending', lease_expires_at = NULL, held_by = CAST(:held_by AS text),
    next_attempt_at = now() + make_interval(secs => :delay_seconds),
    last_error = CAST(:error AS text), updated_at = now()
WHERE id = ANY(:ids) AND status IN ('pending', 'in_flight');

-- release_held --
-- A breaker closed: the rows it held are due at once, oldest first (due at their creation).
UPDATE outbox SET held_by = NULL, next_attempt_at = created_at, updated_at = now()
WHERE held_by = :breaker AND status = 'pending';

-- release_stray_holds --
-- Safety net: rows held by a breaker that is closed (or unknown) are due at once.
UPDATE outbox o SET held_by = NULL, next_attempt_at = o.created_at, updated_at = now()
WHERE o.status = 'pending' AND o.held_by IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM dependency_breakers b
                  WHERE b.name = o.held_by AND b.state <> 'closed');

-- insert_dead_letter --
-- The durable record of a row that ran out of attempts.
INSERT INTO dead_letters (outbox_id, memory_id, user_id, event_type, memory_version, attempts,
                          last_error, errors)
SELECT id, memory_id, user_id, event_type, memory_version, attempts, last_error, errors
FROM outbox WHERE id = ANY(:ids) AND status = 'dead'
RETURNING id, outbox_id;

-- prune_done_outbox --
-- Delete a bounded batch of done rows older than the retention age.
DELETE FROM outbox
WHERE id IN (SELECT id FROM outbox
             WHERE status = 'done' AND done_at < now() - make_interval(secs => :age_seconds)
             ORDER BY done_at LIMIT :limit);

-- prunable_tombstones --
-- Deleted memories past retention with no delivery outstanding: safe to forget everywhere.
SELECT m.id FROM memories m
WHERE m.deleted_at IS NOT NULL
  AND m.deleted_at < now() - make_interval(secs => :age_seconds)
  AND NOT EXISTS (SELECT 1 FROM outbox o
                  WHERE o.memory_id = m.id AND o.status IN ('pending', 'in_flight', 'dead'))
ORDER BY m.deleted_at
LIMIT :limit;

-- purge_memories --
-- Forget deleted memories the graph no longer holds (their outbox rows go with them).
DELETE FROM memories m
WHERE m.id = ANY(:ids) AND m.deleted_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM outbox o
                  WHERE o.memory_id = m.id AND o.status IN ('pending', 'in_flight', 'dead'));

-- forget_purged_history --
-- A purged memory's history keeps its skeleton (versions, events, actors, times) but forgets
-- what it said: deleting a memory must not leave its text readable forever in the audit trail.
UPDATE memory_history h SET content = NULL, metadata = NULL, importance = NULL
WHERE h.memory_id = ANY(:ids) AND h.content IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM memories m WHERE m.id = h.memory_id);

-- queue_resync --
-- Repair through the normal path: an outbox event for each memory at its current version.
INSERT INTO outbox (memory_id, user_id, memory_version, event_type)
SELECT id, user_id, version, 'resync' FROM memories WHERE id = ANY(:ids)
RETURNING id;

-- check_page --
-- A page of memories in id order (keyset) with what the check compares.
SELECT m.id, m.user_id, m.version, m.deleted_at, m.entities, m.extracted_hash, m.content_hash,
       EXISTS (SELECT 1 FROM outbox o WHERE o.memory_id = m.id
               AND o.status IN ('pending', 'in_flight')) AS in_transit
FROM memories m
WHERE m.id > CAST(:after AS uuid) AND (CAST(:user_id AS text) IS NULL OR m.user_id = :user_id)
ORDER BY m.id
LIMIT :limit;

-- memories_known --
-- Which of these ids Postgres has (live or deleted), and whether they are in transit.
SELECT m.id, m.deleted_at,
       EXISTS (SELECT 1 FROM outbox o WHERE o.memory_id = m.id
               AND o.status IN ('pending', 'in_flight')) AS in_transit
FROM memories m WHERE m.id = ANY(CAST(:ids AS uuid[]));

-- check_run_start --
-- Record the start of a consistency check.
INSERT INTO check_runs (scope) VALUES (:scope) RETURNING id, started_at;

-- check_run_discard --
-- Forget a check that stopped part-way (cancelled, or its servers failed): it proved nothing.
DELETE FROM check_runs WHERE id = :id AND finished_at IS NULL;

-- check_run_finish --
-- Record a check's totals.
UPDATE check_runs SET finished_at = now(), checked = :checked, found = :found,
       result = CAST(:result AS jsonb)
WHERE id = :id;

-- upsert_inconsistency --
-- Store a finding once: a repeat sighting only refreshes last_seen_at and details.
INSERT INTO inconsistencies (kind, user_id, memory_id, entity_key, fingerprint, details)
VALUES (:kind, :user_id, CAST(:memory_id AS uuid), :entity_key, :fingerprint,
        CAST(:details AS jsonb))
ON CONFLICT (fingerprint) WHERE resolved_at IS NULL
DO UPDATE SET last_seen_at = now(), details = EXCLUDED.details;

-- resolve_unseen --
-- Open findings in scope that this complete check no longer saw are resolved.
UPDATE inconsistencies SET resolved_at = now()
WHERE resolved_at IS NULL AND last_seen_at < :since
  AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id);

-- resolve_fingerprints --
-- Mark findings fixed directly by a repair as resolved.
UPDATE inconsistencies SET resolved_at = now()
WHERE resolved_at IS NULL AND fingerprint = ANY(:fingerprints);

-- open_inconsistencies --
-- Unresolved findings, oldest first, optionally of one user.
SELECT id, kind, user_id, memory_id, entity_key, fingerprint, details, detected_at, last_seen_at
FROM inconsistencies
WHERE resolved_at IS NULL AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
ORDER BY id
LIMIT :limit;

-- rebuild_page --
-- A page of memories for a rebuild, in id order, with their cached extraction.
SELECT m.id AS memory_id, m.user_id AS memory_user_id, m.version, m.deleted_at, m.importance,
       m.content, m.content_hash, m.entities, m.extractor, m.extracted_hash
FROM memories m
WHERE m.id > CAST(:after AS uuid) AND (CAST(:user_id AS text) IS NULL OR m.user_id = :user_id)
ORDER BY m.id
LIMIT :limit;

-- outbox_stats --
-- Outbox rows per status, rows held by breakers and the age of the oldest open row (the lag).
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'in_flight') AS in_flight,
       count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                FILTER (WHERE status IN ('pending', 'in_flight'))), 0) AS oldest_open_seconds,
       count(*) FILTER (WHERE status = 'in_flight' AND lease_expires_at < now()) AS expired_leases,
       count(*) FILTER (WHERE status = 'pending' AND held_by IS NOT NULL) AS held
FROM outbox;

-- dead_letter_stats --
-- Dead letters by state.
SELECT count(*) FILTER (WHERE status = 'dead') AS open,
       count(*) FILTER (WHERE status = 'replayed') AS replayed,
       count(*) FILTER (WHERE status = 'discarded') AS discarded
FROM dead_letters;

-- inconsistency_stats --
-- Open inconsistencies by kind.
SELECT kind, count(*) AS n FROM inconsistencies WHERE resolved_at IS NULL GROUP BY kind;

-- list_check_runs --
-- The most recent check runs (finished or not), newest first.
SELECT id, scope, started_at, finished_at, checked, found, result
FROM check_runs ORDER BY id DESC LIMIT :limit;

-- last_check_run --
-- The most recent finished check.
SELECT id, scope, started_at, finished_at, checked, found, result
FROM check_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1;

-- list_dead_letters --
-- A page of dead letters, newest first (keyset on id), with optional filters.
SELECT id, outbox_id, memory_id, user_id, event_type, memory_version, attempts, last_error,
       status, created_at, resolved_at, resolved_by, resolution_note
FROM dead_letters
WHERE (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
  AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
  AND (CAST(:error AS text) IS NULL OR last_error ILIKE '%' || :error || '%')
  AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR created_at < :until)
  AND (CAST(:memory_id AS uuid) IS NULL OR memory_id = CAST(:memory_id AS uuid))
  AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit;

-- count_dead_letters --
-- How many dead letters a filter matches (the filters of list_dead_letters, without a page).
SELECT count(*) FROM dead_letters
WHERE (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
  AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
  AND (CAST(:error AS text) IS NULL OR last_error ILIKE '%' || :error || '%')
  AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR created_at < :until)
  AND (CAST(:memory_id AS uuid) IS NULL OR memory_id = CAST(:memory_id AS uuid));

-- dead_letter_deliveries --
-- These dead letters with where their outbox rows are now (a replay's delivery converging);
-- delivery is NULL once the row is gone (pruned after it was done).
SELECT d.id, d.outbox_id, d.memory_id, d.user_id, d.event_type, d.memory_version, d.status,
       o.status AS delivery, o.attempts AS delivery_attempts, o.last_error AS delivery_error,
       o.done_at
FROM dead_letters d LEFT JOIN outbox o ON o.id = d.outbox_id
WHERE d.id = ANY(:ids)
ORDER BY d.id DESC;

-- memory_in_transit --
-- One user's memory's outbox rows still pending or in flight, newest first.
SELECT id, memory_version, event_type, status, attempts, last_error, next_attempt_at, created_at
FROM outbox
WHERE memory_id = :memory_id AND user_id = :user_id AND status IN ('pending', 'in_flight')
ORDER BY id DESC
LIMIT :limit;

-- memory_delivery --
-- Where one user's memory's delivery stands: its newest done row, then its unfinished rows
-- (pending, in flight or dead), newest version first, with the time of each one's last failure.
(SELECT memory_version, status, attempts, created_at, updated_at, done_at,
        CAST(NULL AS timestamptz) AS failed_at
 FROM outbox
 WHERE memory_id = :memory_id AND user_id = :user_id AND status = 'done'
 ORDER BY memory_version DESC
 LIMIT 1)
UNION ALL
(SELECT memory_version, status, attempts, created_at, updated_at, done_at,
        CAST(errors -> -1 ->> 'at' AS timestamptz) AS failed_at
 FROM outbox
 WHERE memory_id = :memory_id AND user_id = :user_id AND status <> 'done'
 ORDER BY memory_version DESC
 LIMIT :limit);

-- outbox_done_since --
-- Rows the workers finished in the last :seconds (throughput).
SELECT count(*) FROM outbox
WHERE status = 'done' AND done_at > now() - make_interval(secs => :seconds);

-- get_dead_letter --
-- One dead letter with its full error history.
SELECT id, outbox_id, memory_id, user_id, event_type, memory_version, attempts, last_error,
       errors, status, created_at, resolved_at, resolved_by, resolution_note
FROM dead_letters WHERE id = :id;

-- breaker_states --
-- Every dependency breaker (callers cache this briefly).
SELECT name, state, consecutive_failures, opened_at, last_error, last_failure_at, next_probe_at,
       updated_at
FROM dependency_breakers ORDER BY name;

-- breaker_held_counts --
-- Outbox rows each breaker holds back.
SELECT held_by AS name, count(*) AS held FROM outbox
WHERE status = 'pending' AND held_by IS NOT NULL GROUP BY held_by;

-- breaker_ensure --
-- The breaker's row, created closed if missing (the migration creates the known ones).
INSERT INTO dependency_breakers (name) VALUES (:name) ON CONFLICT (name) DO NOTHING;

-- breaker_lock --
-- One breaker's state, kept from changing until the transaction ends: a hold and a close of the
-- same breaker take turns, so no row is held by a breaker that closed meanwhile.
SELECT state FROM dependency_breakers WHERE name = :name FOR SHARE;

-- breaker_failure --
-- One dependency failure: count it and keep its error; the breaker opens at the threshold (or at
-- once for a misconfiguration) and, once open, stays so with the next probe after :probe_seconds.
UPDATE dependency_breakers b
SET consecutive_failures = b.consecutive_failures + 1,
    state = CASE WHEN :misconfigured THEN 'misconfigured'
                 WHEN b.state <> 'closed' OR b.consecutive_failures + 1 >= :threshold THEN 'open'
                 ELSE 'closed' END,
    opened_at = CASE WHEN :misconfigured OR b.state <> 'closed'
                          OR b.consecutive_failures + 1 >= :threshold
                     THEN coalesce(b.opened_at, now()) END,
    next_probe_at = CASE WHEN :misconfigured OR b.state <> 'closed'
                              OR b.consecutive_failures + 1 >= :threshold
                         THEN now() + make_interval(secs => :probe_seconds) END,
    last_error = CAST(:error AS text), last_failure_at = now(), updated_at = now()
WHERE b.name = :name
RETURNING name, state, consecutive_failures, opened_at, last_error, last_failure_at,
          next_probe_at, updated_at;

-- breaker_claim_probe --
-- Take the due probe of a breaker that is not closed (half_open until it reports, or until
-- :timeout_seconds pass, should the prober die); one prober wins.
UPDATE dependency_breakers
SET state = 'half_open', next_probe_at = now() + make_interval(secs => :timeout_seconds),
    updated_at = now()
WHERE name = :name AND state <> 'closed' AND next_probe_at <= now()
RETURNING name;

-- breaker_close --
-- The dependency works: the breaker closes and forgets its failures (the last error stays).
UPDATE dependency_breakers
SET state = 'closed', consecutive_failures = 0, opened_at = NULL, next_probe_at = NULL,
    updated_at = now()
WHERE name = :name AND (state <> 'closed' OR consecutive_failures > 0)
RETURNING name;

-- breaker_reprobe_misconfigured --
-- A worker started, perhaps with fixed settings: probe misconfigured breakers at once.
UPDATE dependency_breakers SET next_probe_at = now(), updated_at = now()
WHERE state = 'misconfigured';

-- replay_dead_letters --
-- Send dead letters back: their outbox rows return to pending with attempts reset, and each
-- dead letter records that it was replayed and by whom.
WITH chosen AS (
    SELECT id, outbox_id FROM dead_letters
    WHERE status = 'dead' AND id = ANY(:ids)
    FOR UPDATE
), revived AS (
    UPDATE outbox o
    SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_expires_at = NULL,
        updated_at = now()
    FROM chosen WHERE o.id = chosen.outbox_id AND o.status = 'dead'
    RETURNING o.id
)
UPDATE dead_letters d
SET status = 'replayed', resolved_at = now(), resolved_by = :actor,
    resolution_note = :note
FROM chosen WHERE d.id = chosen.id
RETURNING d.id;

-- discard_dead_letter --
-- Close a dead letter without replaying it; the reason is kept. The outbox row stays dead.
UPDATE dead_letters
SET status = 'discarded', resolved_at = now(), resolved_by = :actor, resolution_note = :reason
WHERE id = :id AND status = 'dead'
RETURNING id;

-- schema_revision --
-- The Alembic revision the database is at (readiness); fails when it was never migrated.
SELECT version_num FROM alembic_version;

-- ping --
-- The cheapest round trip.
SELECT 1;

-- try_session_lock --
-- A session-level advisory lock by name (one scheduler leads); released with the session.
SELECT pg_try_advisory_lock(hashtextextended(:key, 0));

-- try_lock_shared --
-- A shared advisory lock by name: checks share the sync lock, but not with a rebuild.
SELECT pg_try_advisory_lock_shared(hashtextextended(:key, 0));

-- unlock_shared --
-- Release a shared advisory lock.
SELECT pg_advisory_unlock_shared(hashtextextended(:key, 0));

-- try_lock_exclusive --
-- An exclusive advisory lock by name: a rebuild holds the sync lock alone.
SELECT pg_try_advisory_lock(hashtextextended(:key, 0));

-- unlock_exclusive --
-- Release an exclusive advisory lock.
SELECT pg_advisory_unlock(hashtextextended(:key, 0));

-- insert_api_key --
-- A new API key; only the hash of its secret is kept.
INSERT INTO api_keys (name, prefix, key_hash, scope, namespace, created_by)
VALUES (:name, :prefix, :key_hash, :scope, :namespace, :created_by)
RETURNING id, name, prefix, scope, namespace, created_at, created_by, revoked_at;

-- find_api_key --
-- The live key with this secret's hash, if any.
SELECT id, name, prefix, scope, namespace FROM api_keys
WHERE key_hash = :key_hash AND revoked_at IS NULL;

-- list_api_keys --
-- Every key (without secrets), newest first; revoked ones only when asked.
SELECT id, name, prefix, scope, namespace, created_at, created_by, revoked_at, revoked_by
FROM api_keys
WHERE CAST(:include_revoked AS boolean) OR revoked_at IS NULL
ORDER BY id DESC
LIMIT :limit;

-- revoke_api_key --
-- Revoke a key; every web process refuses it within API_KEY_CACHE_SECONDS.
UPDATE api_keys SET revoked_at = now(), revoked_by = :actor
WHERE id = :id AND revoked_at IS NULL
RETURNING id;

-- get_api_key --
-- One key (without its secret).
SELECT id, name, prefix, scope, namespace, created_at, created_by, revoked_at, revoked_by
FROM api_keys WHERE id = :id;

-- user_relations --
-- Tables, sequences and views outside the system schemas: a restore needs none (an empty database).
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast');

-- user_tables --
-- Tables outside the system schemas: the size of a dump's progress.
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast');

-- server_version --
-- The server's version number (like 180006), to name it when pg_dump is older.
SELECT current_setting('server_version_num');

-- text_search_config --
-- Whether Postgres knows this text search configuration.
SELECT cfgname FROM pg_ts_config WHERE cfgname = :name;

-- search_candidates --
-- One user's live memories near a query vector (the configured embedder's vectors only) and
-- matching its words, each with its rank in its own list; filters apply to both lists and the
-- caller fuses them (reciprocal rank fusion).
WITH vec AS (
    SELECT id, similarity, row_number() OVER (ORDER BY distance, id) AS rank
    FROM (SELECT id, embedding <=> CAST(:embedding AS vector) AS distance,
                 1 - (embedding <=> CAST(:embedding AS vector)) AS similarity
          FROM memories
          WHERE CAST(:use_vector AS boolean) AND user_id = :user_id AND deleted_at IS NULL
            AND embedder = :embedder AND metadata @> CAST(:metadata AS jsonb)
            AND importance >= :min_importance
          ORDER BY embedding <=> CAST(:embedding AS vector)
          LIMIT :pool) v
), txt AS (
    SELECT id, text_score, row_number() OVER (ORDER BY text_score DESC, id) AS rank
    FROM (SELECT m.id, ts_rank_cd(m.content_tsv, q.query) AS text_score
          FROM memories m,
               websearch_to_tsquery(CAST(:ts_config AS regconfig), :query) AS q(query)
          WHERE CAST(:use_text AS boolean) AND m.user_id = :user_id AND m.deleted_at IS NULL
            AND m.content_tsv @@ q.query AND m.metadata @> CAST(:metadata AS jsonb)
            AND m.importance >= :min_importance
          ORDER BY text_score DESC, m.id
          LIMIT :pool) t
)
SELECT m.id, m.user_id, m.content, m.metadata, m.importance, m.version, m.content_hash,
       m.entities, m.extractor, m.entity_keys, m.created_at, m.updated_at, m.deleted_at,
       vec.rank AS vector_rank, vec.similarity, txt.rank AS text_rank, txt.text_score
FROM vec FULL OUTER JOIN txt ON txt.id = vec.id
JOIN memories m ON m.id = COALESCE(vec.id, txt.id);

-- pending_reembed --
-- One user's live memories whose vector is not (yet) the configured embedder's.
SELECT count(*) FROM memories
WHERE user_id = :user_id AND deleted_at IS NULL AND embedder IS DISTINCT FROM :embedder;

-- user_in_transit --
-- Open outbox rows of one user: the graph is behind on them.
SELECT count(*) FROM outbox WHERE user_id = :user_id AND status IN ('pending', 'in_flight');

-- memory_for_retrieval --
-- One live memory of one user with its cached entity keys.
SELECT id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
       extracted_hash, entity_keys, created_at, updated_at, deleted_at
FROM memories
WHERE id = :id AND user_id = :user_id AND deleted_at IS NULL;

-- related_by_entities --
-- One user's live memories sharing entity keys with :keys (from the cached extractions), most
-- shared first: what related memories are when the graph cannot answer.
SELECT *
FROM (SELECT id, user_id, content, metadata, importance, version, content_hash, entities,
             extractor, entity_keys, created_at, updated_at, deleted_at,
             ARRAY(SELECT unnest(entity_keys) INTERSECT
                   SELECT unnest(CAST(:keys AS text[]))) AS shared_keys
      FROM memories
      WHERE user_id = :user_id AND deleted_at IS NULL AND id <> ALL(CAST(:exclude AS uuid[]))
        AND entity_keys && CAST(:keys AS text[])) r
ORDER BY cardinality(shared_keys) DESC, importance DESC, created_at DESC, id
LIMIT :limit;

-- user_extractions --
-- The cached extractions of one user's live memories: entity reads when the graph cannot
-- answer (bounded).
SELECT entities FROM memories
WHERE user_id = :user_id AND deleted_at IS NULL AND entities IS NOT NULL
LIMIT :limit;

-- memories_with_entity --
-- One user's live memories whose cached extraction mentions an entity, most important first.
SELECT id, user_id, content, metadata, importance, version, content_hash, entities, extractor,
       created_at, updated_at, deleted_at
FROM memories
WHERE user_id = :user_id AND deleted_at IS NULL AND entity_keys @> ARRAY[CAST(:key AS text)]
ORDER BY importance DESC, created_at DESC, id
LIMIT :limit;

-- reembed_batch --
-- Live memories whose vector is not the configured embedder's, in id order after :after.
SELECT id, content, content_hash FROM memories
WHERE deleted_at IS NULL AND embedder IS DISTINCT FROM :embedder AND id > CAST(:after AS uuid)
ORDER BY id
LIMIT :limit;

-- save_embedding --
-- A memory's new vector, only if its content is still the one embedded.
UPDATE memories SET embedding = CAST(:embedding AS vector), embedder = :embedder
WHERE id = :id AND content_hash = :content_hash AND deleted_at IS NULL;

-- reembed_counts --
-- Live memories, and those whose vector is not the configured embedder's.
SELECT count(*) AS live,
       count(*) FILTER (WHERE embedder IS DISTINCT FROM :embedder) AS pending
FROM memories WHERE deleted_at IS NULL;

-- refresh_search_text --
-- Rebuild the full-text column of a bounded batch of rows made with another configuration.
UPDATE memories SET content_tsv = to_tsvector(CAST(:ts_config AS regconfig), content),
                    search_config = CAST(:ts_config AS regconfig)
WHERE id IN (SELECT id FROM memories
             WHERE search_config IS DISTINCT FROM CAST(:ts_config AS regconfig)
             LIMIT :limit);

-- drop_vector_index --
-- Drop the HNSW index before the vector column changes type.
DROP INDEX IF EXISTS memories_embedding_hnsw;

-- alter_embedding_dimension --
-- Give the vector column a new dimension: every vector is dropped (rows await re-embedding).
ALTER TABLE memories ALTER COLUMN embedding TYPE vector({dim}) USING NULL;

-- forget_embedders --
-- After the vectors were dropped: no row has a vector of any embedder.
UPDATE memories SET embedder = NULL;

-- vector_index_exists --
-- Whether the HNSW index over the vectors exists.
SELECT to_regclass('memories_embedding_hnsw') IS NOT NULL;

-- create_vector_index --
-- The HNSW cosine index over the vectors (again, after a dimension change).
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw ON memories
USING hnsw (embedding vector_cosine_ops);

-- == background sync jobs (app/jobs.py owns every transition) ==

-- job_submit --
-- A new job, queued; runners are woken by job_notify in the same transaction.
INSERT INTO sync_jobs (kind, params, requested_by, max_attempts)
VALUES (:kind, CAST(:params AS jsonb), :requested_by, :max_attempts)
RETURNING *;

-- job_notify --
-- Wakes idle job runners; Postgres delivers it only if the transaction commits.
SELECT pg_notify('memctl_sync_jobs', '');

-- job_get --
-- One job by id.
SELECT * FROM sync_jobs WHERE id = :id;

-- job_list --
-- A page of jobs, newest first (keyset on id), optionally of one status.
SELECT * FROM sync_jobs
WHERE (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit;

-- job_reap --
-- Running jobs whose runner died (lease ran out) and that may not run again: failed after their
-- last attempt, cancelled when a cancel was asked for.
UPDATE sync_jobs
SET status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'failed' END,
    error = CASE WHEN cancel_requested_at IS NOT NULL THEN error
                 ELSE 'the runner stopped (its lease ran out) on each of ' || attempts
                      || ' attempts' END,
    finished_at = now(), updated_at = now(), lease_expires_at = NULL, claim_token = NULL
WHERE status = 'running' AND lease_expires_at < now()
  AND (attempts >= max_attempts OR cancel_requested_at IS NOT NULL)
RETURNING id, status, attempts;

-- job_claim --
-- Lease the oldest due job to this runner: a queued one, or a running one whose runner died
-- (lease ran out) with attempts left. A new claim token fences the previous runner out.
UPDATE sync_jobs
SET status = 'running', runner = :runner, claim_token = CAST(:token AS uuid),
    attempts = attempts + 1,
    lease_expires_at = now() + make_interval(secs => :lease_seconds), heartbeat_at = now(),
    started_at = coalesce(started_at, now()), attempt_started_at = now(),
    phase = NULL, done = 0, total = NULL, phases = '[]', updated_at = now()
WHERE id = (SELECT id FROM sync_jobs
            WHERE (status = 'queued' AND not_before <= now())
               OR (status = 'running' AND lease_expires_at < now()
                   AND attempts < max_attempts AND cancel_requested_at IS NULL)
            ORDER BY id
            LIMIT 1
            FOR UPDATE SKIP LOCKED)
RETURNING *;

-- job_heartbeat --
-- The runner is alive: extend its lease. No row: the lease was lost (another runner took over,
-- or the job ended). Says whether a cancel was asked for.
UPDATE sync_jobs
SET lease_expires_at = now() + make_interval(secs => :lease_seconds), heartbeat_at = now(),
    updated_at = now()
WHERE id = :id AND claim_token = CAST(:token AS uuid) AND status = 'running'
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- job_progress --
-- Where the runner is (phase, done of total, every phase so far); renews the lease as well.
UPDATE sync_jobs
SET phase = :phase, done = :done, total = :total, phases = CAST(:phases AS jsonb),
    lease_expires_at = now() + make_interval(secs => :lease_seconds), heartbeat_at = now(),
    updated_at = now()
WHERE id = :id AND claim_token = CAST(:token AS uuid) AND status = 'running'
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- job_finish --
-- The runner's last word on its claim: done (with the report), failed (with the error) or
-- cancelled. Fenced by the claim token: a runner that lost its lease changes nothing.
UPDATE sync_jobs
SET status = :status, result = CAST(:result AS jsonb), error = :error, finished_at = now(),
    updated_at = now(), lease_expires_at = NULL, claim_token = NULL
WHERE id = :id AND claim_token = CAST(:token AS uuid) AND status = 'running'
RETURNING id;

-- job_requeue --
-- Back to queued, due after :delay_seconds (a conflicting operation or an outage); :refund gives
-- back the attempt when the job itself was not to blame.
UPDATE sync_jobs
SET status = 'queued', not_before = now() + make_interval(secs => :delay_seconds),
    attempts = greatest(attempts - :refund, 0), error = :error, runner = NULL,
    claim_token = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = :id AND claim_token = CAST(:token AS uuid) AND status = 'running'
RETURNING id;

-- job_cancel --
-- Cancel a job: a queued one (or one whose runner died) ends at once; a running one is asked to
-- stop and its runner ends it at its next page. Finished jobs are left alone (no row).
UPDATE sync_jobs
SET cancel_requested_at = coalesce(cancel_requested_at, now()),
    cancelled_by = coalesce(cancelled_by, :actor),
    status = CASE WHEN status = 'queued' OR lease_expires_at < now() THEN 'cancelled'
                  ELSE status END,
    finished_at = CASE WHEN status = 'queued' OR lease_expires_at < now() THEN now()
                       ELSE finished_at END,
    claim_token = CASE WHEN status = 'queued' OR lease_expires_at < now() THEN NULL
                       ELSE claim_token END,
    updated_at = now()
WHERE id = :id AND status IN ('queued', 'running')
RETURNING *;

-- job_prune --
-- Forget a bounded batch of finished jobs older than the retention age.
DELETE FROM sync_jobs
WHERE id IN (SELECT id FROM sync_jobs
             WHERE finished_at < now() - make_interval(secs => :age_seconds)
             LIMIT :limit);
