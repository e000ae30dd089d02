-- convdb on Citus: the distribution of convdb's tables over a Citus cluster. OPTIONAL.
--
-- Applied by a DBA on the Citus coordinator, AFTER schema.sql (and schema_rls.sql, if used):
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema_citus.sql
-- The database must have the citus extension and its worker nodes registered
-- (CREATE EXTENSION citus; SELECT citus_add_node(...)). Existing rows are copied into the shards.
-- Idempotent: running it again on a database it was applied to changes nothing.
--
-- What it does:
--   * conversations is distributed by id; messages, conversation_summaries (schema version 3)
--     and message_feedback (schema version 5) by conversation_id, all co-located: a
--     conversation's row, its messages, its summaries and their feedback live in one shard group
--     on one worker. After migration 0003 or 0005 on a distributed database, run this file again:
--     it distributes the new table. The primary keys, the partial unique idempotency index and
--     the ON DELETE CASCADE foreign keys are kept on every shard group (co-located tables allow
--     them), so every per-conversation statement of convdb runs on one shard (router execution;
--     checked by EXPLAIN in the Citus tests).
--   * convdb_schema_version becomes a reference table (a copy on every node), so the version
--     check at connect() is answered locally wherever it runs.
--   * Five PL/pgSQL functions, convdb_save_message, convdb_save_message_guarded,
--     convdb_get_or_create_conversation, convdb_save_and_get_history and convdb_save_messages,
--     distributed by their conversation id
--     and co-located with conversations: Citus sends each call whole to the worker that holds the
--     conversation. convdb calls them instead of its multi-step statements when connect() finds
--     them with this file's bodies (see "Delegated functions" below); the first server-side code
--     convdb runs on the hot path, applied like the rest of this file by the DBA.
--   * What fans out to every shard: listing a user's conversations, searching their messages,
--     their feedback summary and erasing their data (by user_id, which is not the distribution
--     column). All are correct across shards. Forking copies a conversation's prefix from its
--     shard into the fork's (in general another worker): a multi-shard step, rare next to the hot
--     path, which on the fork is single-shard again.
--
-- 32 shards (Citus's default): enough to spread over many more workers than today's by moving
-- shards (citus_rebalance_start()), without re-distributing.

BEGIN;

DO $$
DECLARE
    wanted constant text[][] := ARRAY[['conversations', 'id'], ['messages', 'conversation_id'],
                                      ['conversation_summaries', 'conversation_id'],
                                      ['message_feedback', 'conversation_id']];
    have text;
    i integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'schema_citus.sql needs the citus extension in this database '
                        '(CREATE EXTENSION citus on the coordinator and every worker)';
    END IF;
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        SELECT column_to_column_name(p.logicalrelid, p.partkey) INTO have
          FROM pg_dist_partition p
         WHERE p.logicalrelid = to_regclass(wanted[i][1]);
        IF have IS NULL THEN
            IF wanted[i][1] = 'conversations' THEN
                PERFORM create_distributed_table('conversations', 'id', shard_count => 32);
            ELSE
                PERFORM create_distributed_table(wanted[i][1], 'conversation_id',
                                                 colocate_with => 'conversations');
            END IF;
        ELSIF have IS DISTINCT FROM wanted[i][2] THEN
            RAISE EXCEPTION '% is distributed by %, convdb needs it distributed by %',
                            wanted[i][1], have, wanted[i][2];
        END IF;
    END LOOP;

    -- Users' data keys (encryption at rest): by user_id, every per-user statement on one shard.
    IF NOT EXISTS (SELECT FROM pg_dist_partition
                    WHERE logicalrelid = 'convdb_user_keys'::regclass) THEN
        PERFORM create_distributed_table('convdb_user_keys', 'user_id', colocate_with => 'none');
    END IF;

    IF NOT EXISTS (SELECT FROM pg_dist_partition
                    WHERE logicalrelid = 'convdb_schema_version'::regclass) THEN
        PERFORM create_reference_table('convdb_schema_version');
    END IF;
END
$$;


COMMIT;

-- A transaction of its own: Citus creates a distributed function over one connection per node,
-- which the parallel shard creation above would have ruled out in the same transaction.
BEGIN;

-- ---------------------------------------------------------------------------------------------
-- Delegated functions (docs/citus.md, "The hot write path"): the appends and the load-or-create
-- as PL/pgSQL functions that Citus sends whole to the worker holding the conversation (one call,
-- no step through the coordinator). A single statement that writes twice (UPDATE feeding INSERT)
-- is planned by Citus as steps pulled through the coordinator and committed with two-phase commit:
-- 7.3 ms per append on the test cluster, against 0.9 ms for the same work as one delegated call.
-- Each function does what the statement of queries.sql with the same name does, with the same
-- ownership and retention predicates, and returns the same columns; convdb calls them (the
-- "_delegated" texts of queries.sql) when connect() finds exactly these bodies, and the
-- statements otherwise (a database distributed by an older schema_citus.sql, or a function
-- changed by hand), so that running this file again is the whole upgrade. A call inside a
-- transaction block (row_level_security=True) is not delegated: it runs on the coordinator, its
-- statements each a router query, as correct as delegated and about as slow as the statements.
--
-- Each statement in a body names the conversation id: it runs on the local shard. now() is the
-- worker's transaction start (the coordinator's clock for the statements): keep the nodes' clocks
-- in sync, as Citus itself requires. In a function every statement takes a new snapshot after
-- the conversation row is locked, so the "fresh view" re-runs of the statements are never needed.
-- ---------------------------------------------------------------------------------------------

-- save_message: the seq under the conversation row's lock, the insert, the cap.
CREATE OR REPLACE FUNCTION convdb_save_message(
    p_conversation_id text, p_user_id text, p_role text, p_content text, p_tool_name text,
    p_tool_call_id text, p_tool_calls text, p_metadata text, p_token_count integer,
    p_idempotency_key text, p_model text, p_input_tokens integer, p_output_tokens integer,
    p_cached_tokens integer, p_reasoning_tokens integer, p_cost numeric, p_latency_ms integer
) RETURNS TABLE (seq bigint, created_at timestamptz)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_seq bigint;
    v_cap integer;
BEGIN
    UPDATE conversations c
       SET next_seq = c.next_seq + 1, updated_at = now(),
           expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))
     WHERE c.id = p_conversation_id AND c.user_id = p_user_id
       AND (c.expires_at IS NULL OR c.expires_at > now())
    RETURNING c.next_seq - 1, c.max_messages INTO v_seq, v_cap;
    IF NOT FOUND THEN
        RETURN;  -- no row: not this user's conversation (or expired)
    END IF;
    RETURN QUERY
    INSERT INTO messages AS m (conversation_id, seq, role, content, tool_name, tool_call_id,
                               tool_calls, metadata, token_count, idempotency_key, model,
                               input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost,
                               latency_ms)
    VALUES (p_conversation_id, v_seq, p_role, p_content, p_tool_name, p_tool_call_id,
            p_tool_calls::jsonb, COALESCE(p_metadata::jsonb, '{}'::jsonb), p_token_count,
            p_idempotency_key, p_model, p_input_tokens, p_output_tokens, p_cached_tokens,
            p_reasoning_tokens, p_cost, p_latency_ms)
    RETURNING m.seq, m.created_at;
    IF v_cap IS NOT NULL AND v_seq > v_cap THEN
        DELETE FROM messages m WHERE m.conversation_id = p_conversation_id AND m.seq <= v_seq - v_cap;
    END IF;
END
$$;

-- get_or_create_conversation: create, else this user's live row; nothing back otherwise (the
-- caller then runs get_or_create_conversation_locked, as after the statement).
CREATE OR REPLACE FUNCTION convdb_get_or_create_conversation(
    p_conversation_id text, p_user_id text, p_title text, p_metadata text, p_expires_at timestamptz,
    p_ttl interval, p_sliding boolean, p_temporary boolean, p_max_messages integer
) RETURNS TABLE (id text, user_id text, title text, metadata jsonb, created_at timestamptz,
                 updated_at timestamptz, created boolean, parent_id text, forked_at_seq bigint,
                 root_id text, expires_at timestamptz, ttl interval, temporary boolean,
                 max_messages integer)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_expires timestamptz := GREATEST(p_expires_at, now() + p_ttl);
    v_ttl interval := CASE WHEN p_sliding THEN p_ttl END;
BEGIN
    RETURN QUERY
    INSERT INTO conversations AS c (id, user_id, title, metadata, expires_at, ttl, temporary, max_messages)
    VALUES (p_conversation_id, p_user_id, p_title, COALESCE(p_metadata::jsonb, '{}'::jsonb),
            v_expires, v_ttl, p_temporary, p_max_messages)
    ON CONFLICT (id) DO NOTHING
    RETURNING c.id, c.user_id, c.title, c.metadata, c.created_at, c.updated_at, true, c.parent_id,
              c.forked_at_seq, c.root_id, c.expires_at, c.ttl, c.temporary, c.max_messages;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT c.id, c.user_id, c.title, c.metadata, c.created_at, c.updated_at, false, c.parent_id,
           c.forked_at_seq, c.root_id, c.expires_at, c.ttl, c.temporary, c.max_messages
      FROM conversations c
     WHERE c.id = p_conversation_id AND c.user_id = p_user_id
       AND (c.expires_at IS NULL OR c.expires_at > now());
END
$$;

-- save_message_guarded: save_message only if the newest stored seq is still p_expected (0: none
-- stored), decided under the conversation row's lock. The statement's columns: nothing back = not
-- this user's conversation (or expired); seq NULL = the guard refused, last_seq the actual newest;
-- fresh is always true (the read is under the lock, so the caller never re-runs it).
CREATE OR REPLACE FUNCTION convdb_save_message_guarded(
    p_conversation_id text, p_user_id text, p_role text, p_content text, p_tool_name text,
    p_tool_call_id text, p_tool_calls text, p_metadata text, p_token_count integer,
    p_idempotency_key text, p_model text, p_input_tokens integer, p_output_tokens integer,
    p_cached_tokens integer, p_reasoning_tokens integer, p_cost numeric, p_latency_ms integer,
    p_expected bigint
) RETURNS TABLE (seq bigint, created_at timestamptz, fresh boolean, last_seq bigint)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_seq bigint;
    v_last bigint;
    v_created timestamptz;
BEGIN
    PERFORM FROM conversations c
      WHERE c.id = p_conversation_id AND c.user_id = p_user_id
        AND (c.expires_at IS NULL OR c.expires_at > now())
        FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT coalesce(max(m.seq), 0) INTO v_last FROM messages m WHERE m.conversation_id = p_conversation_id;
    IF v_last <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::timestamptz, true, v_last;
        RETURN;
    END IF;
    -- The row is locked and the guard holds: save_message's own work, on this same worker (a
    -- call inside a delegated call runs locally).
    SELECT s.seq, s.created_at INTO v_seq, v_created
      FROM convdb_save_message(p_conversation_id, p_user_id, p_role, p_content, p_tool_name,
                               p_tool_call_id, p_tool_calls, p_metadata, p_token_count,
                               p_idempotency_key, p_model, p_input_tokens, p_output_tokens,
                               p_cached_tokens, p_reasoning_tokens, p_cost, p_latency_ms) s;
    RETURN QUERY SELECT v_seq, v_created, true, v_last;
END
$$;

-- save_and_get_history: save_message (with the guard when p_expected is given), then the window
-- that ends at the new message, read after the insert under the row lock: the rows and flags of
-- the statement (is_new, in_window; stale false, fresh true: the read is the newest state).
CREATE OR REPLACE FUNCTION convdb_save_and_get_history(
    p_conversation_id text, p_user_id text, p_role text, p_content text, p_tool_name text,
    p_tool_call_id text, p_tool_calls text, p_metadata text, p_token_count integer,
    p_idempotency_key text, p_model text, p_input_tokens integer, p_output_tokens integer,
    p_cached_tokens integer, p_reasoning_tokens integer, p_cost numeric, p_latency_ms integer,
    p_limit integer, p_budget bigint, p_summarized boolean, p_expected bigint
) RETURNS TABLE (seq bigint, role text, content text, tool_name text, tool_call_id text,
                 tool_calls jsonb, metadata jsonb, token_count integer, idempotency_key text,
                 created_at timestamptz, model text, input_tokens integer, output_tokens integer,
                 cached_tokens integer, reasoning_tokens integer, cost numeric, latency_ms integer,
                 summary_through bigint, is_new boolean, in_window boolean, stale boolean,
                 fresh boolean, last_seq bigint, written boolean)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_seq bigint;
    v_last bigint;
BEGIN
    IF p_expected IS NOT NULL THEN
        PERFORM FROM conversations c
          WHERE c.id = p_conversation_id AND c.user_id = p_user_id
            AND (c.expires_at IS NULL OR c.expires_at > now())
            FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        SELECT coalesce(max(m.seq), 0) INTO v_last FROM messages m WHERE m.conversation_id = p_conversation_id;
        IF v_last <> p_expected THEN
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::jsonb,
                                NULL::jsonb, NULL::integer, NULL::text, NULL::timestamptz, NULL::text,
                                NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::numeric,
                                NULL::integer, NULL::bigint, NULL::boolean, NULL::boolean, false, true,
                                v_last, false;
            RETURN;
        END IF;
    END IF;
    SELECT s.seq INTO v_seq
      FROM convdb_save_message(p_conversation_id, p_user_id, p_role, p_content, p_tool_name,
                               p_tool_call_id, p_tool_calls, p_metadata, p_token_count,
                               p_idempotency_key, p_model, p_input_tokens, p_output_tokens,
                               p_cached_tokens, p_reasoning_tokens, p_cost, p_latency_ms) s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH summary AS (
        SELECT s.through_seq, s.role, s.content, s.metadata, s.token_count, s.created_at
          FROM conversation_summaries s
         WHERE s.conversation_id = p_conversation_id AND p_summarized
         ORDER BY s.through_seq DESC
         LIMIT 1
    ), turn AS (
        (SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
                m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens,
                m.output_tokens, m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms,
                NULL::bigint AS summary_through
           FROM messages m
          WHERE m.conversation_id = p_conversation_id AND m.seq <= v_seq
            AND m.seq > coalesce((SELECT su.through_seq FROM summary su), 0)
          ORDER BY m.seq DESC
          LIMIT p_limit)
        UNION ALL
        SELECT su.through_seq, su.role, su.content, NULL, NULL, NULL, su.metadata, su.token_count,
               NULL, su.created_at, NULL, NULL, NULL, NULL, NULL, NULL, NULL, su.through_seq
          FROM summary su
    ), windowed AS (
        SELECT t.*, sum(t.token_count) OVER (ORDER BY t.seq DESC ROWS UNBOUNDED PRECEDING) AS running,
               row_number() OVER (ORDER BY t.seq DESC) AS rank
          FROM turn t
    )
    SELECT w.seq, w.role, w.content, w.tool_name, w.tool_call_id, w.tool_calls, w.metadata,
           w.token_count, w.idempotency_key, w.created_at, w.model, w.input_tokens, w.output_tokens,
           w.cached_tokens, w.reasoning_tokens, w.cost, w.latency_ms, w.summary_through,
           w.seq = v_seq AND w.summary_through IS NULL,
           (p_budget IS NULL OR w.running <= p_budget), false, true, v_last, true
      FROM windowed w
     WHERE (w.seq = v_seq AND w.summary_through IS NULL)
        OR (w.rank <= p_limit AND (p_budget IS NULL OR w.running <= p_budget))
     ORDER BY w.seq;
END
$$;

-- save_messages (a batch without encryption): what reserve_seq_range(_guarded),
-- lock_conversation_with_keys, the executemany of insert_message_at and cap_messages do in one
-- transaction, as one call; the rows of the batch arrive as one array per column, every one
-- text[] (the numbers as their text, cast here): a driver knows text[] without asking the server,
-- while asking about integer[] or numeric[] cost 0.38 s per new connection through a Citus
-- coordinator (asyncpg's type introspection query). One row back
-- per message of the batch (ord: its place in the batch; the new ones first): the new ones with
-- their seq and created_at, the ones whose key was already stored as stored (replayed); or a single row: refused (the guard
-- failed; last_seq says what the newest seq was) or conflict_key (a stored key with another role
-- or content). Nothing is written then, as the statements' rolled-back transaction writes
-- nothing. No row: not this user's conversation. The checks run in the statements' order:
-- ownership, the guard (only when something is new), the keys' conflicts.
CREATE OR REPLACE FUNCTION convdb_save_messages(
    p_conversation_id text, p_user_id text, p_expected bigint, p_roles text[], p_contents text[],
    p_tool_names text[], p_tool_call_ids text[], p_tool_calls text[], p_metadata text[],
    p_token_counts text[], p_keys text[], p_models text[], p_input_tokens text[],
    p_output_tokens text[], p_cached_tokens text[], p_reasoning_tokens text[], p_costs text[],
    p_latencies text[]
) RETURNS TABLE (seq bigint, role text, content text, tool_name text, tool_call_id text,
                 tool_calls jsonb, metadata jsonb, token_count integer, idempotency_key text,
                 created_at timestamptz, model text, input_tokens integer, output_tokens integer,
                 cached_tokens integer, reasoning_tokens integer, cost numeric, latency_ms integer,
                 ord integer, replayed boolean, refused boolean, last_seq bigint, conflict_key text)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_keyed boolean := EXISTS (SELECT FROM unnest(p_keys) k WHERE k IS NOT NULL);
    v_stored_keys text[] := '{}';
    v_stored_roles text[] := '{}';
    v_stored_contents text[] := '{}';
    v_new integer;
    v_first bigint;
    v_cap integer;
    v_last bigint;
    v_conflict integer;
    i integer;
    j integer;
BEGIN
    IF v_keyed OR p_expected IS NOT NULL THEN
        PERFORM FROM conversations c
          WHERE c.id = p_conversation_id AND c.user_id = p_user_id
            AND (c.expires_at IS NULL OR c.expires_at > now())
            FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF v_keyed THEN
        SELECT coalesce(array_agg(m.idempotency_key), '{}'), coalesce(array_agg(m.role), '{}'),
               coalesce(array_agg(m.content), '{}')
          INTO v_stored_keys, v_stored_roles, v_stored_contents
          FROM messages m
         WHERE m.conversation_id = p_conversation_id AND m.idempotency_key = ANY (p_keys);
    END IF;
    SELECT count(*) INTO v_new FROM unnest(p_keys) k WHERE k IS NULL OR k <> ALL (v_stored_keys);
    IF v_new > 0 AND p_expected IS NOT NULL THEN
        SELECT coalesce(max(m.seq), 0) INTO v_last FROM messages m WHERE m.conversation_id = p_conversation_id;
        IF v_last <> p_expected THEN
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::jsonb,
                                NULL::jsonb, NULL::integer, NULL::text, NULL::timestamptz, NULL::text,
                                NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::numeric,
                                NULL::integer, NULL::integer, false, true, v_last, NULL::text;
            RETURN;
        END IF;
    END IF;
    FOR j IN 1 .. cardinality(v_stored_keys) LOOP
        i := array_position(p_keys, v_stored_keys[j]);
        IF (v_stored_roles[j], v_stored_contents[j]) IS DISTINCT FROM (p_roles[i], p_contents[i])
           AND (v_conflict IS NULL OR i < v_conflict) THEN
            v_conflict := i;
        END IF;
    END LOOP;
    IF v_conflict IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::jsonb,
                            NULL::jsonb, NULL::integer, NULL::text, NULL::timestamptz, NULL::text,
                            NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::numeric,
                            NULL::integer, v_conflict, false, false, NULL::bigint, p_keys[v_conflict];
        RETURN;
    END IF;
    IF v_new > 0 THEN
        UPDATE conversations c
           SET next_seq = c.next_seq + v_new, updated_at = now(),
               expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))
         WHERE c.id = p_conversation_id AND c.user_id = p_user_id
           AND (c.expires_at IS NULL OR c.expires_at > now())
        RETURNING c.next_seq - v_new, c.max_messages INTO v_first, v_cap;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                              metadata, token_count, idempotency_key, model, input_tokens, output_tokens,
                              cached_tokens, reasoning_tokens, cost, latency_ms)
        SELECT p_conversation_id, v_first + row_number() OVER (ORDER BY u.ord) - 1, u.role, u.content,
               u.tool_name, u.tool_call_id, u.tool_calls::jsonb, COALESCE(u.metadata::jsonb, '{}'::jsonb),
               u.token_count::integer, u.key, u.model, u.input_tokens::integer,
               u.output_tokens::integer, u.cached_tokens::integer, u.reasoning_tokens::integer,
               u.cost::numeric, u.latency_ms::integer
          FROM unnest(p_roles, p_contents, p_tool_names, p_tool_call_ids, p_tool_calls, p_metadata,
                      p_token_counts, p_keys, p_models, p_input_tokens, p_output_tokens,
                      p_cached_tokens, p_reasoning_tokens, p_costs, p_latencies)
               WITH ORDINALITY AS u(role, content, tool_name, tool_call_id, tool_calls, metadata,
                                    token_count, key, model, input_tokens, output_tokens,
                                    cached_tokens, reasoning_tokens, cost, latency_ms, ord)
         WHERE u.key IS NULL OR u.key <> ALL (v_stored_keys);
        IF v_cap IS NOT NULL AND v_first + v_new - 1 > v_cap THEN
            DELETE FROM messages m
             WHERE m.conversation_id = p_conversation_id AND m.seq <= v_first + v_new - 1 - v_cap;
        END IF;
        -- The new messages: their seq (in the batch's order) and created_at; the rest is the input.
        RETURN QUERY
        SELECT v_first + n.rank - 1, NULL::text, NULL::text, NULL::text, NULL::text, NULL::jsonb,
               NULL::jsonb, NULL::integer, NULL::text, now(), NULL::text, NULL::integer, NULL::integer,
               NULL::integer, NULL::integer, NULL::numeric, NULL::integer, n.ord::integer, false, false,
               NULL::bigint, NULL::text
          FROM (SELECT k.ord, row_number() OVER (ORDER BY k.ord) AS rank
                  FROM unnest(p_keys) WITH ORDINALITY AS k(key, ord)
                 WHERE k.key IS NULL OR k.key <> ALL (v_stored_keys)) n;
    END IF;
    -- The replayed ones, as stored.
    IF cardinality(v_stored_keys) > 0 THEN
        RETURN QUERY
        SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
               m.token_count, m.idempotency_key, m.created_at, m.model, m.input_tokens, m.output_tokens,
               m.cached_tokens, m.reasoning_tokens, m.cost, m.latency_ms,
               array_position(p_keys, m.idempotency_key), true, false, NULL::bigint, NULL::text
          FROM messages m
         WHERE m.conversation_id = p_conversation_id AND m.idempotency_key = ANY (v_stored_keys);
    END IF;
END
$$;

-- Delegated by the conversation id (the first argument), co-located with conversations.
DO $$
DECLARE
    signature text;
BEGIN
    FOREACH signature IN ARRAY ARRAY[
        'convdb_save_message(text, text, text, text, text, text, text, text, integer, text, text, '
            'integer, integer, integer, integer, numeric, integer)',
        'convdb_get_or_create_conversation(text, text, text, text, timestamptz, interval, boolean, '
            'boolean, integer)',
        'convdb_save_message_guarded(text, text, text, text, text, text, text, text, integer, text, '
            'text, integer, integer, integer, integer, numeric, integer, bigint)',
        'convdb_save_and_get_history(text, text, text, text, text, text, text, text, integer, text, '
            'text, integer, integer, integer, integer, numeric, integer, integer, bigint, boolean, bigint)']
    LOOP
        PERFORM create_distributed_function(signature::regprocedure, '$1', colocate_with := 'conversations');
    END LOOP;
    -- The batch is called in a transaction block (BEGIN, the call, COMMIT), so that a batch whose
    -- caller gave up or lost its connection is rolled back, never committed later on the worker
    -- by itself: force_delegation sends it to the worker inside that transaction too.
    PERFORM create_distributed_function(
        'convdb_save_messages(text, text, bigint, text[], text[], text[], text[], text[], text[], '
        'text[], text[], text[], text[], text[], text[], text[], text[], text[])'::regprocedure,
        '$1', colocate_with := 'conversations', force_delegation := true);
END
$$;

COMMIT;
