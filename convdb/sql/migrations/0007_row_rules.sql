-- convdb migration 0007: the row rules of conversations and messages as one CHECK per table.
-- kind: additive
--
-- Takes schema version 6 to 7. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 6 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: creates convdb_check_conversation and convdb_check_message (the rules of the
-- separate CHECKs, unchanged, in one PL/pgSQL function per table; why, with the measurements, in
-- the functions' comment) and adds conversations_valid and messages_valid, one CHECK per table
-- calling them, NOT VALID: no scan (every existing row was already checked by the separate CHECKs,
-- which stay until 0008). Additive: servers built for schema 6 or older keep running.
-- Until 0008 runs, a write checks both: each append costs a little more (docs/upgrading.md).
--
-- What it locks: ACCESS EXCLUSIVE on conversations and on messages while each constraint is added
-- (catalog updates only, no scan, no rewrite): appends wait for that long. Measured in
-- docs/upgrading.md.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0007 takes schema version 6 to 7, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 6 AND found IS DISTINCT FROM 7 THEN
        RAISE EXCEPTION 'convdb migration 0007 takes schema version 6 to 7, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

-- Both tables' locks at once or neither: writers lock conversations and messages in both orders
-- (save_message's statement takes messages first, a batch takes conversations first), so holding
-- one while queued for the other deadlocks with a writer (it did, on every run of
-- benchmarks/migration_locks.py before this block). Each attempt waits at most 100 ms per table,
-- well below deadlock_timeout (1 s by default), so it gives up and gives back what it took before
-- a writer it blocks would be cancelled as a deadlock's victim; the writers queued behind it then
-- run, and the next attempt follows.
DO $$
DECLARE
    tries integer := 0;
    before text := current_setting('lock_timeout');
BEGIN
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            LOCK TABLE conversations, messages IN ACCESS EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', before, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            tries := tries + 1;
            IF tries >= 600 THEN
                RAISE EXCEPTION 'convdb migration 0007 could not lock conversations and messages in 600 tries of 100 ms'
                    USING HINT = 'a transaction holds them for long: end it, then run the migration again';
            END IF;
        END;
    END LOOP;
END
$$;

-- The row rules of conversations and messages, each table's in one PL/pgSQL function called by one
-- CHECK (schema version 7; they were ten and five separate CHECKs before, same rules, same names
-- in the errors). Why a function: PostgreSQL reads every CHECK expression of a table back from its
-- stored node text and plans it at the start of every statement that writes the table, and an
-- executemany batch is one statement per row. Measured with callgrind (instruction counts, so the
-- machine's load does not matter; benchmarks/check_instructions.py): the separate CHECKs cost
-- ~534,000 instructions per inserted row against ~131,000 for the rest of a bare insert; one CHECK
-- calling a function costs ~83,000 (PL/pgSQL keeps the function compiled per connection), and an
-- append (save_message, both tables' rules) falls from ~1,045,000 to ~551,000 instructions.
-- A row that breaks a rule gets the error it got before: SQLSTATE 23514 naming the constraint of
-- that rule, which convdb.errors reads like any other constraint name. A NULL rule passes, as a
-- CHECK's does. IMMUTABLE: the answer depends on the arguments only.
CREATE OR REPLACE FUNCTION convdb_check_conversation(
    id text, user_id text, metadata jsonb, next_seq bigint, parent_id text, forked_at_seq bigint,
    root_id text
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    broken text;
BEGIN
    IF (length(id) BETWEEN 1 AND 255
        AND length(user_id) BETWEEN 1 AND 255
        AND jsonb_typeof(metadata) = 'object'
        AND next_seq >= 1
        AND ((parent_id IS NULL AND forked_at_seq IS NULL AND root_id IS NULL)
             OR (parent_id IS NOT NULL AND forked_at_seq >= 0 AND root_id IS NOT NULL))) IS NOT FALSE THEN
        RETURN true;
    END IF;
    broken := CASE
        WHEN NOT (length(id) BETWEEN 1 AND 255) THEN 'conversations_id_length'
        WHEN NOT (length(user_id) BETWEEN 1 AND 255) THEN 'conversations_user_id_length'
        WHEN NOT (jsonb_typeof(metadata) = 'object') THEN 'conversations_metadata_object'
        WHEN NOT (next_seq >= 1) THEN 'conversations_next_seq_positive'
        ELSE 'conversations_fork_lineage' END;
    RAISE EXCEPTION 'new row for relation "conversations" violates check constraint "%"', broken
        USING ERRCODE = 'check_violation', CONSTRAINT = broken, TABLE = 'conversations';
END
$$;

CREATE OR REPLACE FUNCTION convdb_check_message(
    seq bigint, role text, tool_name text, tool_call_id text, idempotency_key text, tool_calls jsonb,
    metadata jsonb, token_count integer, model text, input_tokens integer, output_tokens integer,
    cached_tokens integer, reasoning_tokens integer, cost numeric, latency_ms integer
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    broken text;
BEGIN
    IF (seq >= 1
        AND role IN ('system', 'user', 'assistant', 'tool')
        AND (role <> 'tool' OR tool_call_id IS NOT NULL)
        AND (tool_name IS NULL OR length(tool_name) BETWEEN 1 AND 255)
        AND (tool_call_id IS NULL OR length(tool_call_id) BETWEEN 1 AND 255)
        AND (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255)
        AND (tool_calls IS NULL OR jsonb_typeof(tool_calls) = 'array')
        AND jsonb_typeof(metadata) = 'object'
        AND token_count >= 0
        -- Usage (schema version 3): all four token counts or none, nothing else without them.
        AND (model IS NULL OR length(model) BETWEEN 1 AND 255)
        AND input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0
        AND reasoning_tokens >= 0 AND cost >= 0 AND latency_ms >= 0
        AND (input_tokens IS NULL) = (output_tokens IS NULL)
        AND (input_tokens IS NULL) = (cached_tokens IS NULL)
        AND (input_tokens IS NULL) = (reasoning_tokens IS NULL)
        AND (input_tokens IS NOT NULL OR (model IS NULL AND cost IS NULL AND latency_ms IS NULL))) IS NOT FALSE
    THEN
        RETURN true;
    END IF;
    broken := CASE
        WHEN NOT (seq >= 1) THEN 'messages_seq_positive'
        WHEN NOT (role IN ('system', 'user', 'assistant', 'tool')) THEN 'messages_role_known'
        WHEN NOT (role <> 'tool' OR tool_call_id IS NOT NULL) THEN 'messages_tool_has_call_id'
        WHEN NOT (tool_name IS NULL OR length(tool_name) BETWEEN 1 AND 255) THEN 'messages_tool_name_length'
        WHEN NOT (tool_call_id IS NULL OR length(tool_call_id) BETWEEN 1 AND 255)
            THEN 'messages_tool_call_id_length'
        WHEN NOT (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255)
            THEN 'messages_idempotency_key_length'
        WHEN NOT (tool_calls IS NULL OR jsonb_typeof(tool_calls) = 'array') THEN 'messages_tool_calls_array'
        WHEN NOT (jsonb_typeof(metadata) = 'object') THEN 'messages_metadata_object'
        WHEN NOT (token_count >= 0) THEN 'messages_token_count_nonnegative'
        ELSE 'messages_usage_valid' END;
    RAISE EXCEPTION 'new row for relation "messages" violates check constraint "%"', broken
        USING ERRCODE = 'check_violation', CONSTRAINT = broken, TABLE = 'messages';
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'conversations_valid'
                                               AND conrelid = 'conversations'::regclass) THEN
        ALTER TABLE conversations ADD CONSTRAINT conversations_valid CHECK (
            convdb_check_conversation(id, user_id, metadata, next_seq, parent_id, forked_at_seq, root_id))
            NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'messages_valid'
                                               AND conrelid = 'messages'::regclass) THEN
        ALTER TABLE messages ADD CONSTRAINT messages_valid CHECK (
            convdb_check_message(seq, role, tool_name, tool_call_id, idempotency_key, tool_calls, metadata,
                                 token_count, model, input_tokens, output_tokens, cached_tokens,
                                 reasoning_tokens, cost, latency_ms))
            NOT VALID;
    END IF;
END
$$;

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 7, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 6;

COMMIT;
