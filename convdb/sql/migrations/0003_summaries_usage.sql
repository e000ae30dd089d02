-- convdb migration 0003: summaries that keep the originals, usage and cost per message.
-- kind: additive
--
-- Takes schema version 2 to 3. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 2 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does:
--   * messages gets seven nullable usage columns at its end (model, input/output/cached/reasoning
--     tokens, cost, latency_ms) and one CHECK over them; NULL input_tokens means "no usage recorded".
--     The CHECK is NOT VALID: enforced on every insert and update from now on, but existing rows
--     are not scanned (they hold NULL usage, which passes it). Validating it read 1M messages in
--     about 1.4 s under the ACCESS EXCLUSIVE lock; a DBA may VALIDATE CONSTRAINT later (SHARE
--     UPDATE EXCLUSIVE: writes go on), and verify_schema accepts it either way.
--   * messages_usage: a partial index on (conversation_id, created_at) of the messages that carry
--     usage, for usage reports over a time range (docs/summaries-usage.md weighs it).
--   * conversation_summaries: one row per (conversation_id, through_seq), deleted with its
--     conversation.
-- Servers of packages built for schema 2 keep running: they never name the new columns or table.
-- With row-level security (schema_rls.sql), apply schema_rls.sql again afterwards: it grants and
-- protects the new table.
--
-- What it locks: ACCESS EXCLUSIVE on messages, and SHARE ROW EXCLUSIVE on conversations (which
-- blocks writes, not reads), for the length of this transaction, taken so that it cannot
-- deadlock with a writer (see below). The columns are
-- added without a default (catalog only, no rewrite); the CHECK is added NOT VALID (no scan); the
-- partial index reads messages once and stays empty (no existing message carries usage). Measured on
-- 1,000,000 messages in docs/upgrading.md. Appends and reads of messages wait meanwhile.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0003 takes schema version 2 to 3, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 2 AND found IS DISTINCT FROM 3 THEN
        RAISE EXCEPTION 'convdb migration 0003 takes schema version 2 to 3, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

-- Locks: ACCESS EXCLUSIVE on messages (ALTER TABLE) and SHARE ROW EXCLUSIVE on conversations
-- (the foreign key of conversation_summaries), both until COMMIT. Writers take their locks on the
-- two tables in either order (a cached plan locks messages first, a fresh parse conversations
-- first), so holding one while waiting for the other can deadlock with a writer (reproduced: two
-- writers on 1M messages, the writer was the victim). So: wait for messages, then try
-- conversations without waiting; when that fails, give messages back (the block's subtransaction
-- ends), let the writers pass and try again. The migration never waits while holding either lock,
-- so it is never in a deadlock; it gives up after 60 s (re-run it: it is idempotent).
DO $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '60 seconds';
BEGIN
    LOOP
        BEGIN
            LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;
            LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE NOWAIT;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF clock_timestamp() > deadline THEN
                RAISE EXCEPTION 'convdb migration 0003 could not lock messages and conversations within 60 s'
                    USING HINT = 'a long transaction holds one of them; re-run the migration later';
            END IF;
            PERFORM pg_sleep(0.005);
        END;
    END LOOP;
END
$$;

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS model            text,
    ADD COLUMN IF NOT EXISTS input_tokens     integer,
    ADD COLUMN IF NOT EXISTS output_tokens    integer,
    ADD COLUMN IF NOT EXISTS cached_tokens    integer,
    ADD COLUMN IF NOT EXISTS reasoning_tokens integer,
    ADD COLUMN IF NOT EXISTS cost             numeric,
    ADD COLUMN IF NOT EXISTS latency_ms       integer;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'messages_usage_valid'
                                               AND conrelid = 'messages'::regclass) THEN
        ALTER TABLE messages ADD CONSTRAINT messages_usage_valid CHECK (
            (model IS NULL OR length(model) BETWEEN 1 AND 255)
            AND input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0
            AND reasoning_tokens >= 0 AND cost >= 0 AND latency_ms >= 0
            AND (input_tokens IS NULL) = (output_tokens IS NULL)
            AND (input_tokens IS NULL) = (cached_tokens IS NULL)
            AND (input_tokens IS NULL) = (reasoning_tokens IS NULL)
            AND (input_tokens IS NOT NULL OR (model IS NULL AND cost IS NULL AND latency_ms IS NULL)))
            NOT VALID;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS messages_usage
    ON messages (conversation_id, created_at)
    WHERE input_tokens IS NOT NULL;

CREATE TABLE IF NOT EXISTS conversation_summaries (
    conversation_id text        NOT NULL,
    through_seq     bigint      NOT NULL,
    role            text        NOT NULL DEFAULT 'system',
    content         text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    token_count     integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_summaries_pkey PRIMARY KEY (conversation_id, through_seq),
    CONSTRAINT conversation_summaries_conversation_fkey FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE,
    CONSTRAINT conversation_summaries_through_seq_positive CHECK (through_seq >= 1),
    CONSTRAINT conversation_summaries_role_known CHECK (role IN ('system', 'user', 'assistant')),
    CONSTRAINT conversation_summaries_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT conversation_summaries_token_count_nonnegative CHECK (token_count >= 0)
);

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 3, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 2;

COMMIT;
