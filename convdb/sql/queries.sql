-- Every static statement convdb sends, one named block each ("-- name: <name>").
-- Loaded by convdb.sql.QUERIES; tests prepare each one against schema.sql.
-- Parameters are positional ($n); jsonb parameters arrive as JSON text (see convdb.pool).
-- Every statement that touches a conversation's data filters on (id, user_id): ownership is
-- checked by the database, in the same statement, never by a prior read.
--
-- Retention (docs/retention.md): every one of them also filters on the conversation row being
-- live, "(expires_at IS NULL OR expires_at > now())", next to its ownership check, so that from the
-- instant it expires a conversation is unknown to every read and write (fail closed, no extra
-- round trip), before purge_expired deletes it. now() is the transaction's start time.
-- tests/unit/test_retention_sql.py fails on a per-conversation statement without it; the purge
-- and erasure statements, which must see expired rows, are its commented allow-list.

-- name: get_or_create_conversation
-- One round trip for both "load" and "create". ON CONFLICT DO NOTHING waits for a concurrent
-- creator to commit; if that creator was this same user, the fallback SELECT cannot see its row
-- (statement snapshot), so no row comes back and the caller runs
-- get_or_create_conversation_locked.
-- Retention, applied on creation only (as title and metadata): $5 expires_at, else now() + $6
-- (ttl; NULL: no expiry); the ttl is stored only when $7 (sliding), so that appends move the
-- expiry; $8 temporary; $9 max_messages. An existing row that has expired is not returned (and
-- get_or_create_conversation_locked does not return it either): the caller gets
-- ConversationNotFound, as for another user's id, until purge_expired frees the id. It is never
-- revived with its old messages.
WITH inserted AS (
    INSERT INTO conversations (id, user_id, title, metadata, expires_at, ttl, temporary, max_messages)
    VALUES ($1, $2, $3, COALESCE($4::text::jsonb, '{}'::jsonb),
            GREATEST($5::timestamptz, now() + $6::interval),
            CASE WHEN $7::boolean THEN $6::interval END, $8, $9)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, user_id, title, metadata, created_at, updated_at, true AS created,
              parent_id, forked_at_seq, root_id, expires_at, ttl, temporary, max_messages
)
SELECT id, user_id, title, metadata, created_at, updated_at, created, parent_id, forked_at_seq, root_id,
       expires_at, ttl, temporary, max_messages
  FROM inserted
UNION ALL
SELECT id, user_id, title, metadata, created_at, updated_at, false, parent_id, forked_at_seq, root_id,
       expires_at, ttl, temporary, max_messages
  FROM conversations
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now())
   AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: get_or_create_conversation_delegated
-- get_or_create_conversation as one delegated call (see save_message_delegated): the same
-- parameters and rows; no row back sends the caller to get_or_create_conversation_locked, as
-- after the statement.
SELECT id, user_id, title, metadata, created_at, updated_at, created, parent_id, forked_at_seq, root_id,
       expires_at, ttl, temporary, max_messages
  FROM convdb_get_or_create_conversation($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: get_or_create_conversation_locked
-- The fallback when get_or_create_conversation returned nothing: another user owns the id, or
-- a concurrent creator committed the row after that statement's snapshot, or a concurrent delete
-- removed it since. Re-reading with a new snapshot is not enough (the row can be deleted between
-- the two statements: ~45 of 1,800 racing calls then told the owner "not found"). ON CONFLICT
-- DO UPDATE decides on the newest row version under its lock instead: a row being deleted is
-- waited for and then created anew; this user's row is locked and returned (the SET changes no
-- value, it only makes the lock a statement outcome); another user's row fails the WHERE and
-- nothing comes back (the WHERE is evaluated before row-level security's UPDATE check, so under
-- RLS a foreign id is not an error either). An expired row of this user fails the
-- WHERE too (get_or_create_conversation says why); its "now" is EXCLUDED.created_at, the proposed
-- row's default now(): Citus refuses a function that is not IMMUTABLE in an ON CONFLICT WHERE.
INSERT INTO conversations (id, user_id, title, metadata, expires_at, ttl, temporary, max_messages)
VALUES ($1, $2, $3, COALESCE($4::text::jsonb, '{}'::jsonb),
        GREATEST($5::timestamptz, now() + $6::interval),
        CASE WHEN $7::boolean THEN $6::interval END, $8, $9)
ON CONFLICT (id) DO UPDATE SET title = conversations.title
 WHERE conversations.user_id = EXCLUDED.user_id
   AND (conversations.expires_at IS NULL OR conversations.expires_at > EXCLUDED.created_at)
RETURNING id, user_id, title, metadata, created_at, updated_at, (xmax = 0) AS created,
          parent_id, forked_at_seq, root_id, expires_at, ttl, temporary, max_messages;

-- name: get_conversation
SELECT id, user_id, title, metadata, created_at, updated_at, parent_id, forked_at_seq, root_id,
       expires_at, ttl, temporary, max_messages
  FROM conversations
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now());

-- name: save_message
-- Ownership check, seq allocation under the conversation row's lock, updated_at touch and insert,
-- in one statement. No row back means "no such conversation for this user". With an idempotency
-- key that is already stored, the unique index fails the whole statement, so no seq is consumed.
-- Retention: an expired conversation is not updated (no row back). A sliding one (ttl set) has its
-- expiry moved to now() + ttl; otherwise expires_at is set to itself, which keeps the update HOT
-- (no indexed value changes). Spelled for Citus, which refuses now() inside COALESCE or CASE of a
-- modification, and a STABLE function of a column in an UPDATE (timestamptz + interval is
-- STABLE): GREATEST ignores the NULL a NULL ttl gives (and never moves the expiry backwards), and
-- the sum is taken in epoch seconds (extract of now() alone is evaluated once, up front; extract
-- of an interval and to_timestamp are IMMUTABLE). With max_messages, the messages older than the newest max_messages
-- seqs go in the same statement ("capped"; feedback follows by cascade). Summaries are kept: they
-- are what still stands for the deleted messages in summarized windows (docs/retention.md).
WITH reserved AS (
    UPDATE conversations
       SET next_seq = next_seq + 1, updated_at = now(), expires_at = GREATEST(expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM ttl)))
     WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
 RETURNING id, next_seq - 1 AS seq, max_messages
), inserted AS (
    INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                          metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                          cached_tokens, reasoning_tokens, cost, latency_ms)
    SELECT r.id, r.seq, $3, $4, $5, $6, $7::text::jsonb, COALESCE($8::text::jsonb, '{}'::jsonb), $9, $10,
           $11, $12, $13, $14, $15, $16, $17
      FROM reserved r
    RETURNING seq, created_at
), capped AS (
    DELETE FROM messages m USING reserved r
     WHERE r.max_messages IS NOT NULL AND m.conversation_id = r.id AND m.conversation_id = $1
       AND m.seq <= r.seq - r.max_messages
    RETURNING m.seq
)
SELECT i.seq, i.created_at FROM inserted i;

-- name: save_message_delegated
-- save_message on a database that schema_citus.sql gave its delegated functions: the same
-- parameters and result, one call that Citus sends whole to the conversation's worker
-- (docs/citus.md, "The hot write path"). The store uses it only when verify_schema found
-- convdb_save_message with the body this package expects (convdb.schema_check.DELEGATED_FUNCTIONS).
SELECT seq, created_at
  FROM convdb_save_message($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17);

-- name: save_message_guarded
-- save_message with expected_last_seq ($18): the insert happens only if the newest stored
-- message of the conversation is still seq $18 (0: none stored). "Newest stored" is max(seq) of
-- the messages that exist (after pop_last_message it is the seq below the popped one), read from
-- the statement's snapshot; that read is the truth only when the snapshot is fresh (the "fresh
-- view" rule below: every writer of messages updates the conversation row). Rows back: none = not
-- this user's conversation; seq NULL and fresh = false: nothing written, re-run under the lock;
-- seq NULL and fresh: the guard refused, last_seq is the actual newest seq.
WITH snapshot AS (
    SELECT c.xmin AS version,
           (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.conversation_id = c.id AND m.conversation_id = $1)
               AS last_seq
      FROM conversations c
     WHERE c.id = $1 AND c.user_id = $2
       AND (c.expires_at IS NULL OR c.expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, s.version IS NOT DISTINCT FROM l.version AS fresh, s.last_seq
      FROM locked l
      LEFT JOIN snapshot s ON true
), reserved AS (
    UPDATE conversations c
       SET next_seq = c.next_seq + 1, updated_at = now(), expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))
      FROM checked k
     WHERE c.id = k.id AND c.id = $1 AND k.fresh AND k.last_seq = $18::bigint
 RETURNING c.id, c.next_seq - 1 AS seq, c.max_messages
), inserted AS (
    INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                          metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                          cached_tokens, reasoning_tokens, cost, latency_ms)
    SELECT r.id, r.seq, $3, $4, $5, $6, $7::text::jsonb, COALESCE($8::text::jsonb, '{}'::jsonb), $9, $10,
           $11, $12, $13, $14, $15, $16, $17
      FROM reserved r
    RETURNING seq, created_at
), capped AS (
    DELETE FROM messages m USING reserved r
     WHERE r.max_messages IS NOT NULL AND m.conversation_id = r.id AND m.conversation_id = $1
       AND m.seq <= r.seq - r.max_messages
    RETURNING m.seq
)
SELECT i.seq, i.created_at, k.fresh, k.last_seq
  FROM checked k
  LEFT JOIN inserted i ON true;

-- name: save_message_guarded_delegated
-- save_message_guarded as one delegated call (see save_message_delegated): the same 18 parameters
-- and columns; fresh is always true, as the function reads the newest seq under the row lock.
SELECT seq, created_at, fresh, last_seq
  FROM convdb_save_message_guarded($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                                   $17, $18);

-- name: reserve_seq_range
-- First statement of a batch: checks ownership, locks the conversation row until commit, reserves
-- $3 sequence numbers and touches updated_at. now() is the transaction time, the created_at every
-- row of the batch receives; it is returned as the updated_at just set to it, because Citus
-- refuses a non-immutable function (now()) in the RETURNING of a distributed table.
-- Retention: as save_message (expired: no row; sliding: expiry moved); max_messages comes back so
-- that the batch deletes what its inserts push beyond the cap (cap_messages, same transaction).
UPDATE conversations
   SET next_seq = next_seq + $3, updated_at = now(), expires_at = GREATEST(expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM ttl)))
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now())
RETURNING next_seq - $3 AS first_seq, updated_at AS created_at, max_messages;

-- name: reserve_seq_range_guarded
-- reserve_seq_range with expected_last_seq ($4), the guard of save_message_guarded. It locks the
-- conversation row until commit even when it reserves nothing, so a re-run in the same
-- transaction (when fresh = false) reads the newest state. Rows back: none = not this user's
-- conversation; first_seq NULL: nothing reserved (fresh = false: re-run; fresh: refused).
WITH snapshot AS (
    SELECT c.xmin AS version,
           (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.conversation_id = c.id AND m.conversation_id = $1)
               AS last_seq
      FROM conversations c
     WHERE c.id = $1 AND c.user_id = $2
       AND (c.expires_at IS NULL OR c.expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, s.version IS NOT DISTINCT FROM l.version AS fresh, s.last_seq
      FROM locked l
      LEFT JOIN snapshot s ON true
), reserved AS (
    UPDATE conversations c
       SET next_seq = c.next_seq + $3, updated_at = now(), expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))
      FROM checked k
     WHERE c.id = k.id AND c.id = $1 AND k.fresh AND k.last_seq = $4::bigint
 RETURNING c.next_seq - $3 AS first_seq, c.updated_at AS created_at, c.max_messages
)
SELECT r.first_seq, r.created_at, k.fresh, k.last_seq, r.max_messages
  FROM checked k
  LEFT JOIN reserved r ON true;

-- name: save_messages_delegated
-- A batch without encryption as one delegated call (see save_message_delegated): what
-- lock_conversation_with_keys, reserve_seq_range(_guarded), the executemany of insert_message_at
-- and cap_messages do in one transaction. $3 expected_last_seq (NULL: unguarded), then one array
-- per column of the batch's rows, in insert_message_at's order. schema_citus.sql's
-- convdb_save_messages says what comes back.
SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata, token_count, idempotency_key,
       created_at, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms,
       ord, replayed, refused, last_seq, conflict_key
  FROM convdb_save_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18);

-- name: lock_conversation_with_keys
-- First statement of a batch that carries idempotency keys: checks ownership, locks the row and
-- returns the messages already stored under any of the keys (an empty conversation row marks
-- "owned, none stored"). The batch then reserves only what is new.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
  FROM (SELECT id FROM conversations WHERE id = $1 AND user_id = $2
           AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE) c
  LEFT JOIN messages m
    ON m.conversation_id = c.id AND m.conversation_id = $1 AND m.idempotency_key = ANY($3::text[]);

-- name: insert_message_at
-- The executemany body of a batch: the seq was reserved by reserve_seq_range in this transaction,
-- which checked ownership and expiry and holds the conversation row's lock until commit.
INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                      metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                      cached_tokens, reasoning_tokens, cost, latency_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, COALESCE($8::text::jsonb, '{}'::jsonb), $9, $10,
        $11, $12, $13, $14, $15, $16, $17);

-- name: get_message_by_key
-- Resolves a retried keyed save to the message stored the first time.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
  FROM conversations c
  JOIN messages m ON m.conversation_id = c.id
 WHERE c.id = $1 AND c.user_id = $2 AND m.idempotency_key = $3
   AND (c.expires_at IS NULL OR c.expires_at > now());

-- name: get_history
-- The newest $3 messages, oldest first, in one ownership-checked JOIN. The LATERAL subquery walks
-- messages_pkey backwards and stops after $3 rows. No row back: not this user's conversation;
-- one row with a NULL seq: the conversation is empty.
--
-- Citus: every relation of a per-conversation statement spells the distribution value
-- (conversation_id = $1 next to conversation_id = c.id, redundant on one node): Citus prunes
-- shards per relation from its own quals, and a LATERAL's correlation alone fanned out to all
-- 32 shards. With it, the whole statement is one router task (tests/core/test_citus.py).
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
               token_count, idempotency_key, created_at, model, input_tokens, output_tokens,
               cached_tokens, reasoning_tokens, cost, latency_ms
          FROM messages
         WHERE conversation_id = c.id AND conversation_id = $1
         ORDER BY seq DESC
         LIMIT $3
  ) m ON true
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY m.seq;

-- name: schema_catalog
-- What verify_schema compares with the package's expectations (convdb.schema_check): every column
-- (type, NOT NULL, default), constraint (as PostgreSQL prints its definition) and index (unique,
-- method, columns, predicate, valid) of convdb's tables in the current schema, and the volatility
-- and body digest of its functions (convdb_*: the row rules' CHECKs call them), as one JSON text.
-- Reads only the system catalogs, so it works on an empty database and can say what is missing. Index definitions lose their "CREATE INDEX name ON schema.table" prefix, so that the
-- schema name does not matter.
WITH tables AS (
    SELECT c.oid, c.relname
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema()
       AND c.relname IN ('conversations', 'messages', 'conversation_summaries', 'convdb_schema_version',
                         'message_feedback', 'convdb_user_keys')
       AND c.relkind IN ('r', 'p')
)
SELECT jsonb_build_object(
    'columns', (SELECT coalesce(jsonb_object_agg(t.relname || '.' || a.attname, jsonb_build_object(
                    'type', format_type(a.atttypid, a.atttypmod),
                    'not_null', a.attnotnull,
                    'default', pg_get_expr(d.adbin, d.adrelid))), '{}')
                  FROM tables t
                  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
                  LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum),
    'constraints', (SELECT coalesce(jsonb_object_agg(t.relname || '.' || k.conname,
                                                     pg_get_constraintdef(k.oid)), '{}')
                      FROM tables t
                      JOIN pg_constraint k ON k.conrelid = t.oid),
    'indexes', (SELECT coalesce(jsonb_object_agg(t.relname || '.' || ic.relname,
                    regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ', '\1')
                    || CASE WHEN i.indisvalid THEN '' ELSE ' (INVALID)' END), '{}')
                  FROM tables t
                  JOIN pg_index i ON i.indrelid = t.oid
                  JOIN pg_class ic ON ic.oid = i.indexrelid),
    'functions', (SELECT coalesce(jsonb_object_agg(p.oid::regprocedure::text,
                      CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END
                      || ' ' || md5(p.prosrc)), '{}')
                    FROM pg_proc p
                   WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
                     AND p.proname LIKE 'convdb\_%')
)::text AS catalog

-- name: schema_version_row
-- Only when schema_catalog found the version table. to_jsonb: the columns differ between versions
-- (compatible_from arrives with version 2), and the check must read every version's table.
SELECT to_jsonb(v)::text FROM convdb_schema_version v

-- =============================================================================================
-- Agent features: model-ready windows, one-round-trip turns, conversation management, erasure,
-- export and import. The same rules as above: ownership in the same statement, seq from the
-- conversation row under its lock.
--
-- "Fresh view" statements (save_and_get_history, pop_last_message, clear_conversation) read
-- messages and write in one statement. A statement reads from the snapshot taken when it started,
-- but it takes the conversation row's lock later, possibly after waiting for another writer that
-- then committed: what that writer did is invisible to the snapshot. Every writer of a
-- conversation's messages also updates its conversation row, so comparing the row version
-- (xmin) the snapshot sees with the one the lock returns (SELECT ... FOR NO KEY UPDATE returns
-- the newest version) tells whether the snapshot is stale; the caller then re-reads or re-runs.
-- FOR NO KEY UPDATE is the lock the UPDATE that follows takes anyway: it does not wait for the
-- KEY SHARE locks that foreign-key checks of concurrent message inserts hold.
-- =============================================================================================

-- name: get_history_window
-- The newest $4 messages with seq <= $3, oldest first, whose token counts summed from the newest
-- backwards stay within $5 (no budget when $5 is NULL). The running sum is a window function
-- over the same backward walk of messages_pkey, stopped by LIMIT; token counts are never
-- negative (a CHECK), so the rows within budget are a contiguous newest suffix. No row back:
-- not this user's conversation; one row with a NULL seq: nothing fits or nothing stored.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT w.seq, w.role, w.content, w.tool_name, w.tool_call_id, w.tool_calls, w.metadata,
               w.token_count, w.idempotency_key, w.created_at, w.model, w.input_tokens, w.output_tokens,
               w.cached_tokens, w.reasoning_tokens, w.cost, w.latency_ms
          FROM (
                SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
                       token_count, idempotency_key, created_at, model, input_tokens, output_tokens,
                       cached_tokens, reasoning_tokens, cost, latency_ms,
                       sum(token_count) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) AS running
                  FROM messages
                 WHERE conversation_id = c.id AND conversation_id = $1 AND seq <= $3
                 ORDER BY seq DESC
                 LIMIT $4
               ) w
         WHERE $5::bigint IS NULL OR w.running <= $5::bigint
  ) m ON true
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY m.seq;

-- name: get_history_summarized
-- get_history_window with summaries (summarized=True): the newest summary with through_seq <= $3
-- stands in for every message up to its through_seq. The candidates are that summary, positioned
-- at its through_seq, and the newest $4 messages after it (seq <= $3); the window is their newest
-- $4 rows within the token budget $5, the summary's tokens counted, exactly as for messages. So
-- the summary is in the window when everything after it fits, and never leaves a gap before the
-- messages that follow it. summary_through marks it (NULL on messages). One backward probe of
-- conversation_summaries_pkey plus get_history_window's walk of messages_pkey.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms, m.summary_through
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT through_seq, role, content, metadata, token_count, created_at
          FROM conversation_summaries
         WHERE conversation_id = c.id AND conversation_id = $1 AND through_seq <= $3
         ORDER BY through_seq DESC
         LIMIT 1
  ) s ON true
  LEFT JOIN LATERAL (
        SELECT w.seq, w.role, w.content, w.tool_name, w.tool_call_id, w.tool_calls, w.metadata,
               w.token_count, w.idempotency_key, w.created_at, w.model, w.input_tokens, w.output_tokens,
               w.cached_tokens, w.reasoning_tokens, w.cost, w.latency_ms, w.summary_through
          FROM (
                SELECT u.*, sum(u.token_count) OVER (ORDER BY u.seq DESC ROWS UNBOUNDED PRECEDING) AS running
                  FROM (
                        (SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
                                token_count, idempotency_key, created_at, model, input_tokens,
                                output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms,
                                NULL::bigint AS summary_through
                           FROM messages
                          WHERE conversation_id = c.id AND conversation_id = $1 AND seq <= $3
                            AND seq > coalesce(s.through_seq, 0)
                          ORDER BY seq DESC
                          LIMIT $4)
                        UNION ALL
                        SELECT s.through_seq, s.role, s.content, NULL, NULL, NULL, s.metadata,
                               s.token_count, NULL, s.created_at, NULL, NULL, NULL, NULL, NULL, NULL,
                               NULL, s.through_seq
                         WHERE s.through_seq IS NOT NULL
                       ) u
                 ORDER BY u.seq DESC
                 LIMIT $4
               ) w
         WHERE $5::bigint IS NULL OR w.running <= $5::bigint
  ) m ON true
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY m.seq;

-- name: save_and_get_history
-- A whole agent turn in one statement: save_message's ownership check, seq allocation under the
-- row lock, updated_at touch and insert, plus the window that ends at the new message. The
-- inserted row is invisible to the rest of the statement (same snapshot), so the window is the
-- inserted row UNION ALL the $18 - 1 older rows read from messages_pkey; the token budget $19
-- (NULL: none) is a running sum over that union, newest first. The new row always comes back
-- (is_new); in_window says whether it fits the budget. stale: a writer committed to this
-- conversation after the snapshot, so the older rows may be incomplete and the caller re-reads
-- them with get_history_window. No row back: not this user's conversation.
-- $20 (summarized): the newest summary stands in for the messages up to its through_seq, as in
-- get_history_summarized (older rows only after it; the summary row is a candidate like them).
-- $21 (expected_last_seq, NULL: unguarded): the write happens only on a fresh snapshot whose
-- newest stored seq is $21 (save_message_guarded's rule); otherwise written is false, with no
-- message rows, and last_seq says what the newest seq was.
-- Retention: save_message's (expiry checked, sliding expiry moved, max_messages capped in this
-- statement; the window leaves out what the cap deletes: seq > r.seq - r.max_messages).
WITH snapshot AS MATERIALIZED (
    SELECT c.xmin AS version,
           CASE WHEN $21::bigint IS NULL THEN NULL
                ELSE (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.conversation_id = c.id AND m.conversation_id = $1) END
               AS last_seq
      FROM conversations c
     WHERE c.id = $1 AND c.user_id = $2
       AND (c.expires_at IS NULL OR c.expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, s.version IS NOT DISTINCT FROM l.version AS fresh, s.last_seq
      FROM locked l
      LEFT JOIN snapshot s ON true
), reserved AS (
    UPDATE conversations c
       SET next_seq = c.next_seq + 1, updated_at = now(), expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))
      FROM checked k
     WHERE c.id = k.id AND c.id = $1 AND ($21::bigint IS NULL OR (k.fresh AND k.last_seq = $21::bigint))
 RETURNING c.id, c.next_seq - 1 AS seq, c.max_messages
), capped AS (
    DELETE FROM messages m USING reserved r
     WHERE r.max_messages IS NOT NULL AND m.conversation_id = r.id AND m.conversation_id = $1
       AND m.seq <= r.seq - r.max_messages
    RETURNING m.seq
), summary AS (
    SELECT s.through_seq, s.role, s.content, s.metadata, s.token_count, s.created_at
      FROM reserved r
     CROSS JOIN LATERAL (
            SELECT through_seq, role, content, metadata, token_count, created_at
              FROM conversation_summaries
             WHERE conversation_id = r.id AND conversation_id = $1 AND $20::boolean
             ORDER BY through_seq DESC
             LIMIT 1
           ) s
), inserted AS (
    INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                          metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                          cached_tokens, reasoning_tokens, cost, latency_ms)
    SELECT r.id, r.seq, $3, $4, $5, $6, $7::text::jsonb, COALESCE($8::text::jsonb, '{}'::jsonb), $9, $10,
           $11, $12, $13, $14, $15, $16, $17
      FROM reserved r
    RETURNING seq, role, content, tool_name, tool_call_id, tool_calls, metadata, token_count,
              idempotency_key, created_at, model, input_tokens, output_tokens, cached_tokens,
              reasoning_tokens, cost, latency_ms
), turn AS (
    SELECT i.seq, i.role, i.content, i.tool_name, i.tool_call_id, i.tool_calls, i.metadata,
           i.token_count, i.idempotency_key, i.created_at, i.model, i.input_tokens, i.output_tokens,
           i.cached_tokens, i.reasoning_tokens, i.cost, i.latency_ms, NULL::bigint AS summary_through,
           true AS is_new
      FROM inserted i
    UNION ALL
    SELECT o.seq, o.role, o.content, o.tool_name, o.tool_call_id, o.tool_calls, o.metadata,
           o.token_count, o.idempotency_key, o.created_at, o.model, o.input_tokens, o.output_tokens,
           o.cached_tokens, o.reasoning_tokens, o.cost, o.latency_ms, NULL, false
      FROM reserved r
     CROSS JOIN LATERAL (
            SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
                   token_count, idempotency_key, created_at, model, input_tokens, output_tokens,
                   cached_tokens, reasoning_tokens, cost, latency_ms
              FROM messages
             WHERE conversation_id = r.id AND conversation_id = $1 AND seq < r.seq
               AND seq > coalesce((SELECT su.through_seq FROM summary su), 0)
               AND (r.max_messages IS NULL OR seq > r.seq - r.max_messages)
             ORDER BY seq DESC
             LIMIT $18::integer - 1
           ) o
    UNION ALL
    SELECT su.through_seq, su.role, su.content, NULL, NULL, NULL, su.metadata, su.token_count, NULL,
           su.created_at, NULL, NULL, NULL, NULL, NULL, NULL, NULL, su.through_seq, false
      FROM summary su
), windowed AS (
    SELECT t.*, sum(t.token_count) OVER (ORDER BY t.seq DESC ROWS UNBOUNDED PRECEDING) AS running,
           row_number() OVER (ORDER BY t.seq DESC) AS rank
      FROM turn t
)
SELECT w.seq, w.role, w.content, w.tool_name, w.tool_call_id, w.tool_calls, w.metadata,
       w.token_count, w.idempotency_key, w.created_at, w.model, w.input_tokens, w.output_tokens,
       w.cached_tokens, w.reasoning_tokens, w.cost, w.latency_ms, w.summary_through, w.is_new,
       ($19::bigint IS NULL OR w.running <= $19::bigint) AS in_window,
       NOT k.fresh AS stale, k.fresh, k.last_seq, w.seq IS NOT NULL AS written
  FROM checked k
  LEFT JOIN windowed w
    ON w.is_new OR (w.rank <= $18::integer AND ($19::bigint IS NULL OR w.running <= $19::bigint))
 ORDER BY w.seq;

-- name: save_and_get_history_delegated
-- save_and_get_history as one delegated call (see save_message_delegated): the same 21
-- parameters and the same columns, in the statement's order (seq); stale is always false and
-- fresh true, as the function reads the window after its insert, under the row lock.
SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata, token_count, idempotency_key,
       created_at, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms,
       summary_through, is_new, in_window, stale, fresh, last_seq, written
  FROM convdb_save_and_get_history($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                                   $17, $18, $19, $20, $21);

-- name: count_messages
-- Index-only count over messages_pkey; no row back: not this user's conversation.
SELECT count(m.seq)
  FROM conversations c
  LEFT JOIN messages m ON m.conversation_id = c.id
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 GROUP BY c.id;

-- name: update_conversation
-- $3/$5 say whether title/metadata were given, so "set to NULL" differs from "leave alone".
-- $7 says whether the expiry was given: then expires_at becomes $8, else now() + $9 (ttl), else
-- NULL (cleared), and the ttl is kept only when $10 (sliding). An expired conversation is not
-- updated (no row back): an expiry cannot be lifted once it has passed.
UPDATE conversations
   SET title = CASE WHEN $3::boolean THEN $4::text ELSE title END,
       metadata = CASE WHEN $5::boolean THEN COALESCE($6::text::jsonb, '{}'::jsonb) ELSE metadata END,
       expires_at = GREATEST(CASE WHEN $7::boolean THEN $8::timestamptz ELSE expires_at END, now() + $9::interval),
       ttl = CASE WHEN $7::boolean THEN CASE WHEN $10::boolean THEN $9::interval END ELSE ttl END,
       updated_at = now()
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now())
RETURNING id, user_id, title, metadata, created_at, updated_at, parent_id, forked_at_seq, root_id,
          expires_at, ttl, temporary, max_messages;

-- name: delete_conversation
-- Messages go with it (ON DELETE CASCADE), in the same transaction; the count is for the caller.
-- A "fresh view" statement (see above): the count is read from the statement's snapshot, and the
-- cascade deletes from the newest state, so a batch that committed while this waited for the
-- row lock would be deleted uncounted (it returned 3 while 8 messages went). Only when the
-- snapshot is fresh does it delete; otherwise nothing is done and the caller re-runs it behind
-- the row lock. Rows back: none = not this user's conversation; fresh = false: re-run.
WITH snapshot AS (
    SELECT xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE
), checked AS (
    SELECT l.id, l.version IS NOT DISTINCT FROM (SELECT s.version FROM snapshot s) AS fresh FROM locked l
), gone AS (
    DELETE FROM conversations c USING checked k
     WHERE k.fresh AND c.id = k.id AND c.id = $1
    RETURNING c.id
)
SELECT k.fresh, (SELECT count(*) FROM messages m, gone g WHERE m.conversation_id = g.id AND m.conversation_id = $1) AS deleted
  FROM checked k;

-- name: clear_conversation
-- Deletes every message and every summary (a summary never outlives the messages it stands for)
-- and keeps the conversation (and its next_seq: seq is never reused).
-- Only when the snapshot is fresh (see above); otherwise nothing is done and the caller re-runs.
-- No row back: not this user's conversation.
WITH snapshot AS (
    SELECT xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, l.version IS NOT DISTINCT FROM (SELECT s.version FROM snapshot s) AS fresh FROM locked l
), cleared AS (
    DELETE FROM messages m USING checked k
     WHERE k.fresh AND m.conversation_id = k.id AND m.conversation_id = $1
    RETURNING m.seq
), unsummarized AS (
    DELETE FROM conversation_summaries s USING checked k
     WHERE k.fresh AND s.conversation_id = k.id AND s.conversation_id = $1
    RETURNING s.through_seq
), touched AS (
    UPDATE conversations c SET updated_at = now()
      FROM checked k
     WHERE k.fresh AND c.id = k.id AND c.id = $1
    RETURNING c.id
)
SELECT k.fresh, (SELECT count(*) FROM cleared) AS deleted FROM checked k;

-- name: pop_last_message
-- Deletes and returns the newest message, with the summaries that stand for it (through_seq at or
-- after its seq: they would carry its content into later windows), touching updated_at, only when the snapshot is fresh
-- (see above): then the snapshot's newest message is the real newest one. Two concurrent pops
-- cannot both delete one row (row locks) and the loser is never fresh, so it re-runs and pops
-- the next one. Rows back: none = not this user's conversation; fresh = false: re-run;
-- a NULL seq: the conversation is empty.
WITH snapshot AS (
    SELECT xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, l.version IS NOT DISTINCT FROM (SELECT s.version FROM snapshot s) AS fresh FROM locked l
), popped AS (
    DELETE FROM messages m USING checked k
     WHERE k.fresh AND m.conversation_id = k.id AND m.conversation_id = $1
       AND m.seq = (SELECT max(seq) FROM messages WHERE conversation_id = k.id AND conversation_id = $1)
    RETURNING m.conversation_id, m.seq, m.role, m.content, m.tool_name, m.tool_call_id,
              m.tool_calls, m.metadata, m.token_count, m.idempotency_key, m.created_at, m.model,
              m.input_tokens, m.output_tokens, m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
), unsummarized AS (
    DELETE FROM conversation_summaries s USING popped p
     WHERE s.conversation_id = p.conversation_id AND s.conversation_id = $1 AND s.through_seq >= p.seq
    RETURNING s.through_seq
), touched AS (
    UPDATE conversations c SET updated_at = now()
      FROM popped p
     WHERE c.id = p.conversation_id AND c.id = $1
    RETURNING c.id
)
SELECT p.seq, p.role, p.content, p.tool_name, p.tool_call_id, p.tool_calls, p.metadata,
       p.token_count, p.idempotency_key, p.created_at, p.model, p.input_tokens, p.output_tokens,
       p.cached_tokens, p.reasoning_tokens, p.cost, p.latency_ms, k.fresh
  FROM checked k
  LEFT JOIN popped p ON true;

-- name: erase_list_conversations
-- delete_user_data, step 1: the user's next conversations in id order after $2 (keyset over
-- conversations_user_id).
SELECT id FROM conversations WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: erase_messages_chunk
-- delete_user_data, step 2, repeated until it returns 0: at most $3 messages of the listed
-- conversations of user $1, each chunk its own short transaction.
WITH doomed AS (
    SELECT m.conversation_id, m.seq
      FROM conversations c
      JOIN messages m ON m.conversation_id = c.id
     WHERE c.id = ANY($2::text[]) AND c.user_id = $1
     LIMIT $3
), gone AS (
    DELETE FROM messages m USING doomed d
     WHERE m.conversation_id = d.conversation_id AND m.seq = d.seq
       AND m.conversation_id = ANY($2::text[])  -- Citus: only the listed conversations' shards
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: erase_lock_conversations
-- delete_user_data, step 3a, in the transaction of step 3b: lock the listed conversations of
-- user $1. Once this returns, no writer can add a message to them, and the next statement's
-- snapshot holds every message the cascade will delete. An UPDATE that changes nothing rather
-- than SELECT ... FOR UPDATE: Citus refuses FOR UPDATE in a query over several shards ("could not
-- run distributed query with FOR UPDATE/SHARE commands") but runs a multi-shard UPDATE, which
-- takes the same row locks. The price: rows are locked in no fixed order, so two erasures of the
-- same user at once can deadlock; PostgreSQL then fails one with TransientError (nothing of that
-- step committed; calling again finishes the job).
UPDATE conversations SET next_seq = next_seq WHERE id = ANY($2::text[]) AND user_id = $1;

-- name: erase_conversations
-- delete_user_data, step 3b: the (now nearly empty) listed conversations of user $1, and the
-- count of the conversations and of the messages written concurrently since step 2, which go
-- with their conversation (ON DELETE CASCADE). Exact because step 3a holds the rows' locks.
-- The messages are counted in a CTE of their own, ahead of the DELETE, not after it from `gone`:
-- on PostgreSQL both see the statement's snapshot (taken after 3a's locks), but Citus runs a
-- multi-shard statement's CTEs one after the other, as steps, and a count taken after the DELETE
-- sees the cascade and is 0 (the messages of a batch that committed during 3a's lock wait were
-- then deleted uncounted).
WITH counted AS MATERIALIZED (
    SELECT count(*) AS messages
      FROM conversations c
      JOIN messages m ON m.conversation_id = c.id
     WHERE c.id = ANY($2::text[]) AND c.user_id = $1
       AND m.conversation_id = ANY($2::text[])  -- Citus: only the listed conversations' shards
), gone AS (
    DELETE FROM conversations WHERE id = ANY($2::text[]) AND user_id = $1 RETURNING id
)
SELECT (SELECT count(*) FROM gone) AS conversations, (SELECT messages FROM counted) AS messages;

-- name: export_header
-- export_conversation, first: the conversation row. next_seq bounds the messages exported, so a
-- message appended while the export runs is not half-included.
SELECT id, user_id, title, metadata, created_at, updated_at, next_seq
  FROM conversations
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now());

-- name: export_messages
-- export_conversation, then: keyset chunks of $5 messages with $3 < seq < $4, ownership checked
-- each time. No row back: the conversation is gone (deleted during the export); one row with a
-- NULL seq: no more messages.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
       m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
               token_count, idempotency_key, created_at, model, input_tokens, output_tokens,
               cached_tokens, reasoning_tokens, cost, latency_ms
          FROM messages
         WHERE conversation_id = c.id AND conversation_id = $1 AND seq > $3 AND seq < $4
         ORDER BY seq
         LIMIT $5
  ) m ON true
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY m.seq;

-- name: import_conversation_row
-- import_conversation, first (in its transaction): create the conversation exactly as exported.
-- With $8 (replace) an existing conversation of the same user is overwritten (its messages are
-- then deleted by import_clear_messages); another user's id is never touched. No row back: the
-- id exists (this user's without replace, or another user's, or this user's but expired: that
-- one is ConversationNotFound, as everywhere, until purge_expired frees the id). The expiry is
-- not checked here (Citus refuses now() in an ON CONFLICT WHERE, and the row's created_at is the
-- export's): when a replaced row has an expiry (expires_at back), the caller checks it with
-- import_owner_check in the same transaction and rolls back if it has passed. A replace keeps the
-- conversation's retention settings. A created conversation takes the store's policy (an export
-- carries no retention): $9 the store's default_ttl (expires_at = now() + $9; NULL: no expiry),
-- stored as the sliding TTL when $10 (sliding), and $11 its max_messages. It is never temporary.
INSERT INTO conversations (id, user_id, title, metadata, next_seq, created_at, updated_at, expires_at, ttl,
                           max_messages)
VALUES ($1, $2, $3, COALESCE($4::text::jsonb, '{}'::jsonb), $5, $6, $7, now() + $9::interval,
        CASE WHEN $10::boolean THEN $9::interval END, $11)
ON CONFLICT (id) DO UPDATE
   SET title = EXCLUDED.title, metadata = EXCLUDED.metadata, next_seq = EXCLUDED.next_seq,
       created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
 WHERE conversations.user_id = EXCLUDED.user_id AND $8::boolean
RETURNING (xmax = 0) AS created, expires_at, ttl, temporary, max_messages;

-- name: import_owner_check
-- After import_conversation_row returned nothing: does the id belong to this user?
SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2
                 AND (expires_at IS NULL OR expires_at > now()));

-- name: import_clear_messages
DELETE FROM messages m
 USING conversations c
 WHERE c.id = $1 AND c.user_id = $2 AND m.conversation_id = c.id AND m.conversation_id = $1
   AND (c.expires_at IS NULL OR c.expires_at > now());

-- name: import_message
-- The executemany body of an import: every column as exported, created_at included. Ownership
-- was settled by import_conversation_row in this transaction (which holds the row); the check
-- is repeated here so that no statement writes a message without it.
INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                      metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                      cached_tokens, reasoning_tokens, cost, latency_ms, created_at)
SELECT c.id, $2, $3, $4, $5, $6, $7::text::jsonb, COALESCE($8::text::jsonb, '{}'::jsonb), $9, $10,
       $11, $12, $13, $14, $15, $16, $17, $18
  FROM conversations c
 WHERE c.id = $1 AND c.user_id = $19
   AND (c.expires_at IS NULL OR c.expires_at > now());

-- name: import_finish
-- Last step of an import whose header gave no next_seq: continue after the highest imported seq.
UPDATE conversations SET next_seq = GREATEST(next_seq, $3)
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now());

-- name: lock_conversation
-- Inside a transaction: hold the conversation row's lock, so the next statement's snapshot is
-- the newest state (the contended path of the "fresh view" statements).
SELECT id FROM conversations WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE;

-- name: default_isolation
-- verify_schema: the isolation convdb's single statements (no BEGIN of their own) run at. They
-- need 'read committed' (see convdb.ops.ISOLATION); every transaction convdb opens names it.
SELECT current_setting('default_transaction_isolation');

-- =============================================================================================
-- Summaries and usage (schema version 3; docs/summaries-usage.md)
-- =============================================================================================

-- name: save_summary
-- Records that $5 stands for every message with seq <= $3, a "fresh view" statement (see above):
-- the newest stored seq (max(seq) of the messages that exist) and the newest summary are read
-- from the snapshot, and trusted only when it is fresh. Written only when $3 <= the newest stored
-- seq and $3 >= the newest summary's through_seq (equal: replaces that summary). It touches
-- updated_at, which makes it a writer of the conversation row: a concurrent save_summary or a
-- guarded write then sees a stale snapshot and re-runs under the lock. Rows back: none = not this
-- user's conversation; fresh = false: re-run; through_seq NULL: refused (last_seq and newest say
-- why).
WITH snapshot AS (
    SELECT c.xmin AS version,
           (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.conversation_id = c.id AND m.conversation_id = $1)
               AS last_seq,
           (SELECT max(s.through_seq) FROM conversation_summaries s
             WHERE s.conversation_id = c.id AND s.conversation_id = $1) AS newest
      FROM conversations c
     WHERE c.id = $1 AND c.user_id = $2
       AND (c.expires_at IS NULL OR c.expires_at > now())
), locked AS (
    SELECT id, xmin AS version FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now()) FOR NO KEY UPDATE
), checked AS (
    SELECT l.id, s.version IS NOT DISTINCT FROM l.version AS fresh, s.last_seq, s.newest
      FROM locked l
      LEFT JOIN snapshot s ON true
), saved AS (
    INSERT INTO conversation_summaries (conversation_id, through_seq, role, content, metadata, token_count)
    SELECT k.id, $3, $4, $5, COALESCE($6::text::jsonb, '{}'::jsonb), $7
      FROM checked k
     WHERE k.fresh AND $3::bigint <= k.last_seq AND (k.newest IS NULL OR $3::bigint >= k.newest)
    ON CONFLICT (conversation_id, through_seq) DO UPDATE
       SET role = EXCLUDED.role, content = EXCLUDED.content, metadata = EXCLUDED.metadata,
           token_count = EXCLUDED.token_count, created_at = EXCLUDED.created_at
    RETURNING conversation_id, through_seq, created_at
), touched AS (
    UPDATE conversations c SET updated_at = now()
      FROM saved s
     WHERE c.id = s.conversation_id AND c.id = $1
    RETURNING c.id
)
SELECT s.through_seq, s.created_at, k.fresh, k.last_seq, k.newest
  FROM checked k
  LEFT JOIN saved s ON true;

-- name: list_summaries
-- Every summary of the conversation, oldest first. No row back: not this user's conversation; one
-- row with a NULL through_seq: none stored.
SELECT s.through_seq, s.role, s.content, s.token_count, s.metadata, s.created_at
  FROM conversations c
  LEFT JOIN conversation_summaries s ON s.conversation_id = c.id AND s.conversation_id = $1
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY s.through_seq;

-- name: usage_report_user
-- Usage of user $1's messages with $2 <= created_at < $3, per day in time zone $4 and per model
-- (only model $5 when it is not NULL), grouped four ways (GROUPING SETS): per (day, model), per
-- day, per model, and the total, which is always one row (zeros when nothing matched). The user's
-- conversations come from conversations_user_id, their messages with usage in the range from the
-- partial index messages_usage. Two stages: the messages are summed per (day, model) in a
-- MATERIALIZED CTE, and the four groupings roll those few rows up. Citus refuses GROUPING SETS in
-- a query over several shards ("could not run distributed query with GROUPING"); this way the CTE
-- is the distributed part (summed on each shard, combined on the coordinator) and the rollup runs
-- on the coordinator over its result. One text for both engines: on PostgreSQL too the rollup of
-- a few (day, model) rows beats four hash keys over every message (200k messages of one user:
-- 118 ms against 203 ms for one GROUPING SETS pass, medians of 7, PG 15). Sums of sums are cast
-- back to the one-stage types (sum(bigint) is numeric): the rows are the same values of the same
-- types (tests/agent/test_usage_report.py compares both shapes).
WITH per_day_model AS MATERIALIZED (
        SELECT (m.created_at AT TIME ZONE $4::text)::date AS day, m.model,
               count(m.input_tokens) AS messages, sum(m.input_tokens) AS input_tokens,
               sum(m.output_tokens) AS output_tokens, sum(m.cached_tokens) AS cached_tokens,
               sum(m.reasoning_tokens) AS reasoning_tokens, sum(m.cost) AS cost,
               sum(m.latency_ms) AS latency_ms
          FROM conversations c
          JOIN messages m ON m.conversation_id = c.id
         WHERE c.user_id = $1 AND m.input_tokens IS NOT NULL
           AND (c.expires_at IS NULL OR c.expires_at > now())
           AND m.created_at >= $2 AND m.created_at < $3
           AND ($5::text IS NULL OR m.model = $5::text)
         GROUP BY 1, 2
)
SELECT GROUPING(u.day) = 1 AS all_days, GROUPING(u.model) = 1 AS all_models, u.day, u.model,
       coalesce(sum(u.messages), 0)::bigint AS messages, coalesce(sum(u.input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(u.output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(u.cached_tokens), 0)::bigint AS cached_tokens,
       coalesce(sum(u.reasoning_tokens), 0)::bigint AS reasoning_tokens, sum(u.cost) AS cost,
       sum(u.latency_ms)::bigint AS latency_ms, true AS owned
  FROM per_day_model u
 GROUP BY GROUPING SETS ((u.day, u.model), (u.day), (u.model), ())
 ORDER BY all_days, all_models, u.day, u.model;

-- name: usage_report_conversation
-- usage_report_user for one conversation $6 of user $1; owned = false: not this user's
-- conversation (the total row exists either way).
SELECT GROUPING(u.day) = 1 AS all_days, GROUPING(u.model) = 1 AS all_models, u.day, u.model,
       count(u.input_tokens) AS messages, coalesce(sum(u.input_tokens), 0) AS input_tokens,
       coalesce(sum(u.output_tokens), 0) AS output_tokens, coalesce(sum(u.cached_tokens), 0) AS cached_tokens,
       coalesce(sum(u.reasoning_tokens), 0) AS reasoning_tokens, sum(u.cost) AS cost,
       sum(u.latency_ms) AS latency_ms,
       EXISTS (SELECT 1 FROM conversations o WHERE o.id = $6 AND o.user_id = $1
                 AND (o.expires_at IS NULL OR o.expires_at > now())) AS owned
  FROM (
        SELECT (m.created_at AT TIME ZONE $4::text)::date AS day, m.model, m.input_tokens,
               m.output_tokens, m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
          FROM conversations c
          JOIN messages m ON m.conversation_id = c.id AND m.conversation_id = $6
         WHERE c.id = $6 AND c.user_id = $1 AND m.input_tokens IS NOT NULL
           AND (c.expires_at IS NULL OR c.expires_at > now())
           AND m.created_at >= $2 AND m.created_at < $3
           AND ($5::text IS NULL OR m.model = $5::text)
       ) u
 GROUP BY GROUPING SETS ((u.day, u.model), (u.day), (u.model), ())
 ORDER BY all_days, all_models, u.day, u.model;

-- name: record_usage
-- Usage known only after the save (an adapter that learns a run's usage when the run ends): set on
-- message $3 of user $2's conversation $1 when it has none yet; usage is never overwritten. Rows
-- back: none = not this user's conversation; recorded = false: no such message, or it already
-- has usage.
WITH recorded AS (
    UPDATE messages m
       SET model = $4, input_tokens = $5, output_tokens = $6, cached_tokens = $7,
           reasoning_tokens = $8, cost = $9, latency_ms = $10
      FROM conversations c
     WHERE c.id = $1 AND c.user_id = $2 AND m.conversation_id = c.id AND m.conversation_id = $1
       AND (c.expires_at IS NULL OR c.expires_at > now())
       AND m.seq = $3
       AND m.input_tokens IS NULL
    RETURNING m.seq
)
SELECT EXISTS (SELECT 1 FROM recorded) AS recorded
  FROM conversations
 WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now());

-- =============================================================================================
-- Branches (forks), feedback on messages. Ownership in the same statement, as everywhere.
-- =============================================================================================

-- name: fork_conversation
-- A new conversation $3 of user $2 whose history is a copy of source $1's messages with
-- seq <= $5, and whose next seq is $5 + 1: one statement, so one snapshot of the source (a
-- concurrent append, pop or clear of the source is either wholly before it or wholly after) and
-- one transaction. Copy, not a shared prefix: every later read of the fork stays inside the fork
-- (one shard on Citus; measured in docs/branches-feedback-search.md). Every column of messages
-- is listed, usage included (features that add message columns extend both lists, here and in
-- fork_copy); the summaries within the prefix (through_seq <= $5) are copied, so the fork's
-- summarized windows are the source's; the source's feedback is copied as inherited. Title and
-- metadata: $4 / $6, or the source's when NULL. Retention: the fork has its source's (ttl, temporary,
-- max_messages, and expires_at: the source's, or now() + ttl when sliding); an expired source is
-- unknown, as everywhere.
-- Rows back: none = not this user's source; a NULL id with $5 >= source_next_seq: at_seq is past
-- the source's newest seq; a NULL id otherwise: id $3 is taken.
WITH source AS (
    SELECT id, title, metadata, next_seq, COALESCE(root_id, id) AS root_id, expires_at, ttl, temporary,
           max_messages
      FROM conversations
     WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
), created AS (
    INSERT INTO conversations (id, user_id, title, metadata, next_seq, parent_id, forked_at_seq, root_id,
                               expires_at, ttl, temporary, max_messages)
    SELECT $3, $2, COALESCE($4::text, s.title), COALESCE($6::text::jsonb, s.metadata), $5::bigint + 1,
           s.id, $5::bigint, s.root_id, GREATEST(s.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM s.ttl))), s.ttl, s.temporary,
           s.max_messages
      FROM source s
     WHERE $5::bigint < s.next_seq
    ON CONFLICT (id) DO NOTHING
    RETURNING id, user_id, title, metadata, created_at, updated_at, parent_id, forked_at_seq, root_id,
              expires_at, ttl, temporary, max_messages
), copied AS (
    INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                          metadata, token_count, idempotency_key, created_at, model, input_tokens,
                          output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms)
    SELECT c.id, m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
           m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
           m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
      FROM created c
      JOIN messages m ON m.conversation_id = $1 AND m.seq <= $5::bigint
    RETURNING seq
), copied_summaries AS (
    INSERT INTO conversation_summaries (conversation_id, through_seq, role, content, metadata, token_count,
                                        created_at)
    SELECT c.id, s.through_seq, s.role, s.content, s.metadata, s.token_count, s.created_at
      FROM created c
      JOIN conversation_summaries s ON s.conversation_id = $1 AND s.through_seq <= $5::bigint
    RETURNING through_seq
), copied_feedback AS (
    INSERT INTO message_feedback (conversation_id, seq, rating, comment, tags, inherited, created_at,
                                  updated_at)
    SELECT c.id, f.seq, f.rating, f.comment, f.tags, true, f.created_at, f.updated_at
      FROM created c
      JOIN message_feedback f ON f.conversation_id = $1 AND f.seq <= $5::bigint
    RETURNING seq
)
SELECT s.next_seq AS source_next_seq, c.id, c.user_id, c.title, c.metadata, c.created_at, c.updated_at,
       c.parent_id, c.forked_at_seq, c.root_id, c.expires_at, c.ttl, c.temporary, c.max_messages,
       (SELECT count(*) FROM copied) AS copied, (SELECT count(*) FROM copied_summaries) AS copied_summaries,
       (SELECT count(*) FROM copied_feedback) AS copied_feedback
  FROM source s
  LEFT JOIN created c ON true;

-- name: set_feedback
-- Insert or replace the feedback on message $3 of conversation $1 (of user $2). Rows back: none =
-- not this user's conversation; a NULL seq = no such message. Not a message write: next_seq and
-- updated_at are left alone. $1 is spelled on every relation and is the inserted distribution
-- value, so on Citus every step runs on the conversation's shard. A replaced row's updated_at is
-- the proposed row's default (now()): Citus refuses now() itself in DO UPDATE SET. The answer is
-- the saved row, else (UNION ALL) the conversation's NULL row: no outer join of conversations with
-- the saved step, which Citus on PostgreSQL 15/16 cannot plan under row-level security (the
-- policy's user_id = current_setting(...) next to user_id = $2 gives a pseudoconstant qual:
-- "Distributed queries with outer joins and pseudoconstant quals are not supported").
WITH target AS (
    SELECT m.seq
      FROM conversations c
      JOIN messages m ON m.conversation_id = c.id AND m.conversation_id = $1 AND m.seq = $3
     WHERE c.id = $1 AND c.user_id = $2 AND (c.expires_at IS NULL OR c.expires_at > now())
), saved AS (
    INSERT INTO message_feedback (conversation_id, seq, rating, comment, tags)
    SELECT $1, t.seq, $4, $5, $6::text[] FROM target t
    ON CONFLICT (conversation_id, seq) DO UPDATE
       SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, tags = EXCLUDED.tags,
           inherited = false, updated_at = EXCLUDED.updated_at
    RETURNING seq, rating, comment, tags, inherited, created_at, updated_at
)
SELECT s.seq, s.rating, s.comment, s.tags, s.inherited, s.created_at, s.updated_at
  FROM saved s
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM conversations c
 WHERE c.id = $1 AND c.user_id = $2 AND (c.expires_at IS NULL OR c.expires_at > now())
   AND NOT EXISTS (SELECT 1 FROM saved);

-- name: clear_feedback
-- Rows back: none = not this user's conversation; otherwise how many were deleted (0 or 1).
WITH gone AS (
    DELETE FROM message_feedback f
     USING conversations c
     WHERE c.id = $1 AND c.user_id = $2 AND f.conversation_id = c.id AND f.conversation_id = $1
       AND (c.expires_at IS NULL OR c.expires_at > now())
       AND f.seq = $3
    RETURNING f.seq
)
SELECT (SELECT count(*) FROM gone) FROM conversations WHERE id = $1 AND user_id = $2
   AND (expires_at IS NULL OR expires_at > now());

-- name: get_feedback
-- Every feedback row of the conversation, in seq order. No row back: not this user's
-- conversation; one row with a NULL seq: none.
SELECT f.seq, f.rating, f.comment, f.tags, f.inherited, f.created_at, f.updated_at
  FROM conversations c
  LEFT JOIN message_feedback f ON f.conversation_id = c.id AND f.conversation_id = $1
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY f.seq;

-- name: feedback_summary_user
-- Aggregates of user $1's own (not inherited) feedback set in ($2, $3) (exclusive bounds, NULL:
-- unbounded) over all their conversations (conversations_user_id, then each one's feedback by
-- its primary key). Always one row.
WITH rated AS (
    SELECT f.rating, f.tags
      FROM conversations c
      JOIN message_feedback f ON f.conversation_id = c.id
     WHERE c.user_id = $1 AND NOT f.inherited
       AND (c.expires_at IS NULL OR c.expires_at > now())
       AND ($2::timestamptz IS NULL OR f.updated_at > $2::timestamptz)
       AND ($3::timestamptz IS NULL OR f.updated_at < $3::timestamptz)
)
SELECT count(*) AS count, count(*) FILTER (WHERE rating > 0) AS positive,
       count(*) FILTER (WHERE rating = 0) AS neutral, count(*) FILTER (WHERE rating < 0) AS negative,
       avg(rating)::float8 AS mean,
       (SELECT coalesce(jsonb_object_agg(tag, n), '{}'::jsonb)::text
          FROM (SELECT tag, count(*) AS n FROM rated, unnest(rated.tags) AS tag GROUP BY tag) t) AS tags
  FROM rated;

-- name: feedback_summary_conversation
-- The same for conversation $1 of user $2 ($3, $4: the time bounds). No row back: not this
-- user's conversation.
WITH owned AS (
    SELECT id FROM conversations WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
), rated AS (
    SELECT f.rating, f.tags
      FROM owned o
      JOIN message_feedback f ON f.conversation_id = o.id AND f.conversation_id = $1
     WHERE NOT f.inherited
       AND ($3::timestamptz IS NULL OR f.updated_at > $3::timestamptz)
       AND ($4::timestamptz IS NULL OR f.updated_at < $4::timestamptz)
)
SELECT (SELECT count(*) FROM rated) AS count,
       (SELECT count(*) FROM rated WHERE rating > 0) AS positive,
       (SELECT count(*) FROM rated WHERE rating = 0) AS neutral,
       (SELECT count(*) FROM rated WHERE rating < 0) AS negative,
       (SELECT avg(rating)::float8 FROM rated) AS mean,
       (SELECT coalesce(jsonb_object_agg(tag, n), '{}'::jsonb)::text
          FROM (SELECT tag, count(*) AS n FROM rated, unnest(rated.tags) AS tag GROUP BY tag) t) AS tags
  FROM owned;

-- name: export_feedback
-- export_conversation, last: the conversation's feedback on messages with seq < $3 (the bound
-- of its messages), ownership checked. No row back: gone; a NULL seq: none.
SELECT f.seq, f.rating, f.comment, f.tags, f.inherited, f.created_at, f.updated_at
  FROM conversations c
  LEFT JOIN message_feedback f ON f.conversation_id = c.id AND f.conversation_id = $1 AND f.seq < $3
 WHERE c.id = $1 AND c.user_id = $2
   AND (c.expires_at IS NULL OR c.expires_at > now())
 ORDER BY f.seq;

-- name: import_feedback
-- The executemany body of an import's feedback records, after its messages (same transaction).
INSERT INTO message_feedback (conversation_id, seq, rating, comment, tags, inherited, created_at, updated_at)
SELECT c.id, $2, $3, $4, $5::text[], $6, $7, $8
  FROM conversations c
 WHERE c.id = $1 AND c.user_id = $9
   AND (c.expires_at IS NULL OR c.expires_at > now());

-- name: fork_create
-- fork_conversation inside a transaction (row_level_security: the policies' WITH CHECK on messages
-- looks the new conversation up with the statement's snapshot, which cannot see a row inserted by
-- the same statement, so the single-statement fork is refused there). First: the new
-- conversation row, with fork_conversation's rows back; FOR SHARE holds the source's row until
-- commit, so no writer changes the source's messages before fork_copy reads them.
WITH source AS (
    SELECT id, title, metadata, next_seq, COALESCE(root_id, id) AS root_id, expires_at, ttl, temporary,
           max_messages
      FROM conversations
     WHERE id = $1 AND user_id = $2
       AND (expires_at IS NULL OR expires_at > now())
       FOR SHARE
), created AS (
    INSERT INTO conversations (id, user_id, title, metadata, next_seq, parent_id, forked_at_seq, root_id,
                               expires_at, ttl, temporary, max_messages)
    SELECT $3, $2, COALESCE($4::text, s.title), COALESCE($6::text::jsonb, s.metadata), $5::bigint + 1,
           s.id, $5::bigint, s.root_id, GREATEST(s.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM s.ttl))), s.ttl, s.temporary,
           s.max_messages
      FROM source s
     WHERE $5::bigint < s.next_seq
    ON CONFLICT (id) DO NOTHING
    RETURNING id, user_id, title, metadata, created_at, updated_at, parent_id, forked_at_seq, root_id,
              expires_at, ttl, temporary, max_messages
)
SELECT s.next_seq AS source_next_seq, c.id, c.user_id, c.title, c.metadata, c.created_at, c.updated_at,
       c.parent_id, c.forked_at_seq, c.root_id, c.expires_at, c.ttl, c.temporary, c.max_messages
  FROM source s
  LEFT JOIN created c ON true;

-- name: fork_copy
-- Then, in the same transaction: source $1's (of user $2) messages, summaries and feedback with
-- seq <= $4 into the new conversation $3 (every column, as fork_conversation).
WITH copied AS (
    INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                          metadata, token_count, idempotency_key, created_at, model, input_tokens,
                          output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms)
    SELECT $3, m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
           m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
           m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms
      FROM conversations c
      JOIN messages m ON m.conversation_id = c.id AND m.conversation_id = $1 AND m.seq <= $4::bigint
     WHERE c.id = $1 AND c.user_id = $2 AND (c.expires_at IS NULL OR c.expires_at > now())
    RETURNING seq
), copied_summaries AS (
    INSERT INTO conversation_summaries (conversation_id, through_seq, role, content, metadata, token_count,
                                        created_at)
    SELECT $3, s.through_seq, s.role, s.content, s.metadata, s.token_count, s.created_at
      FROM conversations c
      JOIN conversation_summaries s
        ON s.conversation_id = c.id AND s.conversation_id = $1 AND s.through_seq <= $4::bigint
     WHERE c.id = $1 AND c.user_id = $2 AND (c.expires_at IS NULL OR c.expires_at > now())
    RETURNING through_seq
), copied_feedback AS (
    INSERT INTO message_feedback (conversation_id, seq, rating, comment, tags, inherited, created_at,
                                  updated_at)
    SELECT $3, f.seq, f.rating, f.comment, f.tags, true, f.created_at, f.updated_at
      FROM conversations c
      JOIN message_feedback f ON f.conversation_id = c.id AND f.conversation_id = $1 AND f.seq <= $4::bigint
     WHERE c.id = $1 AND c.user_id = $2 AND (c.expires_at IS NULL OR c.expires_at > now())
    RETURNING seq
)
SELECT (SELECT count(*) FROM copied), (SELECT count(*) FROM copied_summaries),
       (SELECT count(*) FROM copied_feedback);
-- Encryption at rest (stores opened with encryption=): users' data keys, wrapped by a master key
-- the database never sees (convdb.keys, convdb.crypto). One row per user, read once per process
-- and user (the store caches the unwrapped key for key_cache_seconds).
-- =============================================================================================

-- name: get_user_key
SELECT key_id, master_key_id, wrapped_key FROM convdb_user_keys WHERE user_id = $1;

-- name: create_user_key
-- The user's first encrypted write: store the data key the client generated and wrapped. A
-- concurrent creator may win (nothing comes back): the caller then reads the winner's key with
-- get_user_key (a new snapshot, taken after ON CONFLICT waited for the winner's commit).
INSERT INTO convdb_user_keys (user_id, key_id, master_key_id, wrapped_key)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id) DO NOTHING
RETURNING key_id, master_key_id, wrapped_key;

-- name: shred_user_key
-- shred_user, first step: destroy the user's data key. From the commit on, every copy of the
-- user's encrypted values (this database, its replicas, its backups taken after the key is gone
-- from them too) is unreadable; the rows are then purged as delete_user_data does.
DELETE FROM convdb_user_keys WHERE user_id = $1 RETURNING key_id;

-- name: rotation_batch
-- rotate: the next $3 data keys (in user_id order, after $1) wrapped under a master key other
-- than the active one ($2). A walk of the primary key, one short statement per batch.
SELECT user_id, key_id, master_key_id, wrapped_key
  FROM convdb_user_keys
 WHERE user_id > $1 AND master_key_id <> $2
 ORDER BY user_id
 LIMIT $3;

-- name: rewrap_user_key
-- rotate: replace one wrapped data key by the same key wrapped under master key $4. A
-- compare-and-set on (key_id, master_key_id): a key shredded or re-wrapped meanwhile is left
-- alone. The data key itself does not change, so no stored value is touched.
UPDATE convdb_user_keys SET master_key_id = $4, wrapped_key = $5
 WHERE user_id = $1 AND key_id = $2 AND master_key_id = $3;

-- name: keys_per_master_key
-- rotate's report: how many data keys each master key wraps.
SELECT master_key_id, count(*) AS keys FROM convdb_user_keys GROUP BY master_key_id ORDER BY master_key_id;

-- =============================================================================================
-- Retention (schema version 7; docs/retention.md): message caps and purge_expired. The purge
-- statements are the ones that must see expired rows (tests/unit/test_retention_sql.py's
-- allow-list); they are maintenance statements, not scoped to a user.
-- =============================================================================================

-- name: cap_messages
-- The batch path's cap, after its inserts in the same transaction (reserve_seq_range returned the
-- cap and holds the conversation row's lock, so this snapshot holds every message): delete the
-- messages with seq <= $3 (the newest seq minus max_messages). Feedback follows by cascade.
DELETE FROM messages m
 USING conversations c
 WHERE c.id = $1 AND c.user_id = $2 AND m.conversation_id = c.id AND m.conversation_id = $1
   AND (c.expires_at IS NULL OR c.expires_at > now())
   AND m.seq <= $3;

-- name: purge_expired_list
-- purge_expired, step 1: the next $3 expired conversations after ($1, $2) in (expires_at, id)
-- order, read through the partial index conversations_expires (never-expiring rows are not in
-- it). A read without locks: on Citus it fans out to every shard (one small index range each),
-- and several purgers may list the same ids; the claim below decides who deletes each one.
SELECT id, expires_at
  FROM conversations
 WHERE expires_at <= now()
   AND expires_at >= $1::timestamptz AND (expires_at, id) > ($1::timestamptz, $2::text)
 ORDER BY expires_at, id
 LIMIT $3;

-- name: purge_expired_conversation
-- purge_expired, step 2, one statement (its own transaction) per conversation: claim expired
-- conversation $1 with FOR UPDATE SKIP LOCKED - a row another purger (or a writer that began
-- before the expiry) holds is skipped, never waited for - and, when the statement's snapshot is
-- fresh (the "fresh view" rule above: no writer committed to the conversation between the
-- snapshot and the claim), delete it with its messages (cascade) if it holds at most $2 of them,
-- else only its $2 oldest messages (the caller runs it again: every step stays short). The count
-- is read from the snapshot, in its own CTE ahead of the deletes (Citus runs CTEs as steps; see
-- erase_conversations), and is exact because the snapshot is fresh and the row is locked. Every
-- relation spells $1: on Citus the whole statement is one router task on the conversation's
-- shard (a multi-shard SKIP LOCKED is not possible; the list-then-claim shape avoids it).
-- Rows back: none = not claimed (locked, gone, or no longer expired): skip it; fresh = false:
-- nothing done, run it again; otherwise chunk (messages deleted without their conversation) or
-- conversations = 1 with messages (deleted with it). purge_expired sends it for a whole listed
-- batch in one round trip (asyncpg's pipelined fetchmany, one short implicit transaction), then
-- runs it again one conversation at a time for those that need more (stale, or chunked).
WITH snapshot AS MATERIALIZED (
    SELECT c.xmin AS version,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.conversation_id = $1)
               AS messages
      FROM conversations c
     WHERE c.id = $1 AND c.expires_at <= now()
), claimed AS (
    SELECT id, xmin AS version FROM conversations
     WHERE id = $1 AND expires_at <= now()
       FOR UPDATE SKIP LOCKED
), checked AS (
    SELECT l.id, s.version IS NOT DISTINCT FROM l.version AS fresh, s.messages
      FROM claimed l
      LEFT JOIN snapshot s ON true
), chunk AS (
    DELETE FROM messages m USING checked k
     WHERE k.fresh AND k.messages > $2 AND m.conversation_id = k.id AND m.conversation_id = $1
       AND m.seq IN (SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq LIMIT $2)
    RETURNING m.seq
), gone AS (
    DELETE FROM conversations c USING checked k
     WHERE k.fresh AND k.messages <= $2 AND c.id = k.id AND c.id = $1
    RETURNING c.id
)
SELECT k.id, k.fresh, (SELECT count(*) FROM chunk) AS chunk, (SELECT count(*) FROM gone) AS conversations,
       k.messages
  FROM checked k;
