-- convdb migration 0001: the initial schema (convdb 0.1.0, schema version 1).
-- kind: additive
--
-- Applied by a DBA, never by the package, in one transaction:
--     psql -v ON_ERROR_STOP=1 -d <database> -f 0001_initial.sql
-- In effect identical to the schema.sql that convdb 0.1.0 shipped: a database built by either is
-- the same (tests/schema/test_schema_migrations.py compares the catalogs). Idempotent; refuses
-- to run on a database that is at another schema version.

BEGIN;

-- ---------------------------------------------------------------------------------------------
-- 0. Guard: only an empty database or one already at version 1 (a re-run changes nothing)
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NOT NULL THEN
        SELECT max(version) INTO found FROM convdb_schema_version;
    END IF;
    IF found IS NOT NULL AND found <> 1 THEN
        RAISE EXCEPTION 'convdb migration 0001 creates schema version 1, but this database is at version %', found
            USING HINT = 'apply only the migrations after the database''s version: python -m convdb migrations --from '
                         || found;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 1. Schema version
-- ---------------------------------------------------------------------------------------------
-- One row. The package compares it with the version it was built for.
CREATE TABLE IF NOT EXISTS convdb_schema_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- 2. Tables
-- ---------------------------------------------------------------------------------------------
-- A conversation belongs to exactly one user; every query filters on (id, user_id) so that a
-- foreign id behaves exactly like an unknown one.
--
-- next_seq is the per-conversation message counter. Writers take it under this row's lock
-- (UPDATE ... RETURNING), which gives a gap-free order that follows commit order; the same UPDATE
-- checks ownership and touches updated_at. Message order never comes from created_at: now() is the
-- transaction start time, shared by a whole batch and out of order across concurrent commits.
CREATE TABLE IF NOT EXISTS conversations (
    id         text        NOT NULL,
    user_id    text        NOT NULL,
    title      text,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    next_seq   bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_pkey PRIMARY KEY (id),
    CONSTRAINT conversations_id_length CHECK (length(id) BETWEEN 1 AND 255),
    CONSTRAINT conversations_user_id_length CHECK (length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT conversations_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT conversations_next_seq_positive CHECK (next_seq >= 1)
);

-- Primary key (conversation_id, seq): "the newest N" is a backward scan of this one index, and an
-- append maintains a single btree (two with an idempotency key).
CREATE TABLE IF NOT EXISTS messages (
    conversation_id text        NOT NULL,
    seq             bigint      NOT NULL,
    role            text        NOT NULL,
    content         text,
    tool_name       text,
    tool_call_id    text,
    tool_calls      jsonb,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    token_count     integer     NOT NULL DEFAULT 0,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_pkey PRIMARY KEY (conversation_id, seq),
    CONSTRAINT messages_conversation_fkey FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE,
    CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    CONSTRAINT messages_role_known CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    CONSTRAINT messages_tool_has_call_id CHECK (role <> 'tool' OR tool_call_id IS NOT NULL),
    CONSTRAINT messages_tool_name_length CHECK (tool_name IS NULL OR length(tool_name) BETWEEN 1 AND 255),
    CONSTRAINT messages_tool_call_id_length
        CHECK (tool_call_id IS NULL OR length(tool_call_id) BETWEEN 1 AND 255),
    CONSTRAINT messages_idempotency_key_length
        CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT messages_tool_calls_array CHECK (tool_calls IS NULL OR jsonb_typeof(tool_calls) = 'array'),
    CONSTRAINT messages_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT messages_token_count_nonnegative CHECK (token_count >= 0)
);

-- ---------------------------------------------------------------------------------------------
-- 3. Indexes
-- ---------------------------------------------------------------------------------------------
-- Exactly-once writes: a retried save with the same key finds the stored message instead of
-- writing a second one. Partial, so messages without a key cost nothing here.
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_key
    ON messages (conversation_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A user's conversations (listing, erasure). Deliberately without updated_at: every append
-- touches updated_at, and an index on it would turn those updates from HOT into full updates.
-- list_conversations (newest updated_at first) reads the user's rows through this index and
-- sorts them (top-N heapsort); delete_user_data walks it in id order.
--
-- Measured (embedded PostgreSQL 16, 2 shared cores, 10,000 conversations, random appends with
-- save_message's SQL through pgbench -M prepared -c 2, 8 interleaved 5 s runs):
--   without an updated_at index: 98.5-100 % HOT updates, conversations' indexes 0.8 MB, stable;
--   with (user_id, updated_at DESC, id DESC): 0 % HOT, indexes grew to 22 MB in 40 s of appends;
--   appends 1.13x faster without it (median of per-run ratios; the runs spread 0.6x-1.5x on this
--   shared machine). Listing a page: 0.06-0.1 ms either way for a user with 20 conversations;
--   3 ms without vs 0.05 ms with the index for a user with 20,000 conversations.
-- Chosen: no updated_at index; appends are the hot path. For users holding tens of thousands of
-- conversations who list them often, a DBA can add the index below (list_conversations uses it
-- as is; appends then stop being HOT):
--   CREATE INDEX IF NOT EXISTS conversations_user_updated
--       ON conversations (user_id, updated_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS conversations_user_id
    ON conversations (user_id, id);

-- ---------------------------------------------------------------------------------------------
-- 4. Version stamp (last; the guard above admits only version 1 or none, so DO NOTHING is a re-run)
-- ---------------------------------------------------------------------------------------------
INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 1, now())
ON CONFLICT (singleton) DO NOTHING;

COMMIT;
