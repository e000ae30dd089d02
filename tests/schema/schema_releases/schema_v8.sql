-- convdb schema, version 8: the fresh install.
--
-- Applied by a DBA, never by the package:   psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql
-- (or, from an installed package:  python -m convdb schema | psql -v ON_ERROR_STOP=1 -d <database> -f -)
-- Equal in effect to applying every migration in convdb/sql/migrations/ in order (a test compares
-- the catalogs). For a database that already has an older convdb schema, apply the migrations
-- instead (python -m convdb migrations --from <version>); this file refuses to run there.
-- Idempotent: running it again on a database that already has this version changes nothing.
-- The package checks at connect() that the version and the columns, indexes and constraints it
-- relies on are present (ConversationStore.verify_schema) and refuses to start otherwise.

BEGIN;

-- ---------------------------------------------------------------------------------------------
-- 0. Guard: an empty database, or one already at version 8 (a re-run changes nothing)
-- ---------------------------------------------------------------------------------------------
-- CREATE TABLE IF NOT EXISTS would silently skip a table that exists in an older shape and the
-- stamp would then claim a version the tables do not have; an older database takes migrations.
DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NOT NULL THEN
        SELECT max(version) INTO found FROM convdb_schema_version;
    END IF;
    IF found IS NOT NULL AND found <> 8 THEN
        RAISE EXCEPTION 'convdb schema.sql installs schema version 8, but this database is at version %', found
            USING HINT = CASE WHEN found < 8
                              THEN 'upgrade it with: python -m convdb migrations --from ' || found
                                   || ' | psql -v ON_ERROR_STOP=1 -d <database> -f -'
                              ELSE 'the database is newer than this file; nothing to install' END;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 1. Schema version
-- ---------------------------------------------------------------------------------------------
-- One row: the schema version and the compatibility floor, the oldest package schema version that
-- can still run against this database. A package built for schema P runs on a database at version
-- V with floor F when V >= P (every migration it needs is applied) and F <= P (the database still
-- supports it). Additive migrations keep F; breaking ones raise it. compatible_from comes last, where
-- migration 0002 adds it, so that both paths give the same table.
CREATE TABLE IF NOT EXISTS convdb_schema_version (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version         integer     NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    compatible_from integer     NOT NULL DEFAULT 1
);

-- ---------------------------------------------------------------------------------------------
-- 1a. Row rules of conversations and messages (schema version 7)
-- ---------------------------------------------------------------------------------------------
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
    -- Branches (migration 0004): set once, when the conversation is created by fork_conversation.
    -- parent_id has no foreign key: a fork keeps its (copied) history when its source is deleted.
    parent_id     text,
    forked_at_seq bigint,
    root_id       text,
    CONSTRAINT conversations_pkey PRIMARY KEY (id)
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
    -- Usage and cost (schema version 3), given at save time: NULL input_tokens means none recorded.
    -- cost is currency-free (the application's unit); latency in milliseconds.
    model            text,
    input_tokens     integer,
    output_tokens    integer,
    cached_tokens    integer,
    reasoning_tokens integer,
    cost             numeric,
    latency_ms       integer,
    CONSTRAINT messages_pkey PRIMARY KEY (conversation_id, seq),
    CONSTRAINT messages_conversation_fkey FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------------------------
-- 2a. Row rules (schema version 7, migration 0007): one CHECK per table, calling the functions of
-- section 1a. NOT VALID as migration 0007 adds them (every existing row was already checked by the
-- separate CHECKs they replace; they are enforced on every insert and update all the same). A DBA
-- may VALIDATE them (SHARE UPDATE EXCLUSIVE: reads and writes go on); the package accepts both.
-- ---------------------------------------------------------------------------------------------
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

-- Branches (migration 0004): the forks of a conversation, and every branch of a root. Partial:
-- never-forked conversations (most of them) are in neither index, and appends never change these
-- columns, so their updates of the conversation row stay HOT.
CREATE INDEX IF NOT EXISTS conversations_forks
    ON conversations (parent_id, user_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversations_branches
    ON conversations (root_id, user_id) WHERE root_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- 3a. Summaries and usage (schema version 3; docs/summaries-usage.md)
-- ---------------------------------------------------------------------------------------------
-- A summary stands for every message of its conversation with seq <= through_seq; the messages
-- stay stored. Keyed by (conversation_id, through_seq): "the newest summary" is one backward probe
-- of the primary key, and a fork that copies a prefix copies the summaries within it.
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

-- Usage reports over a time range (usage_report): the messages that carry usage, per
-- conversation by time. Partial, so an append without usage maintains no extra btree; an append
-- with usage maintains one more. The conversation row's touch stays HOT (this index is on
-- messages). Weighed in docs/summaries-usage.md (append cost, HOT ratio, a monthly total at 10 M
-- messages).
CREATE INDEX IF NOT EXISTS messages_usage
    ON messages (conversation_id, created_at)
    WHERE input_tokens IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- 3b. Feedback on messages (migration 0005)
-- ---------------------------------------------------------------------------------------------
-- One row per rated message: rating -1 (bad), 0 (neutral), +1 (good), an optional comment and
-- tags. Keyed like messages and deleted with them (pop, clear, delete, erasure). inherited: copied
-- from the source by fork_conversation; aggregates count only the rows that are not, so a rating
-- is counted once however often its message was forked. Never part of message content.
CREATE TABLE IF NOT EXISTS message_feedback (
    conversation_id text        NOT NULL,
    seq             bigint      NOT NULL,
    rating          smallint    NOT NULL,
    comment         text,
    tags            text[]      NOT NULL DEFAULT '{}'::text[],
    inherited       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_feedback_pkey PRIMARY KEY (conversation_id, seq),
    CONSTRAINT message_feedback_message_fkey FOREIGN KEY (conversation_id, seq)
        REFERENCES messages (conversation_id, seq) ON DELETE CASCADE,
    CONSTRAINT message_feedback_rating_range CHECK (rating BETWEEN -1 AND 1),
    CONSTRAINT message_feedback_comment_length CHECK (comment IS NULL OR length(comment) <= 4000),
    CONSTRAINT message_feedback_tags_count CHECK (cardinality(tags) <= 16)
);

-- ---------------------------------------------------------------------------------------------
-- 3c. Encryption at rest (schema version 6, migration 0006; docs/data-protection.md)
-- ---------------------------------------------------------------------------------------------
-- Only used by stores opened with encryption= (empty otherwise): each user's data key, wrapped
-- (encrypted) by a master key held outside the database (master_key_id names it). Deleting a row
-- (ConversationStore.shred_user) makes every copy of that user's encrypted values unreadable,
-- replicas and later-restored backups included. One row per user, read once per process and user
-- (the store caches the unwrapped key); rotation walks the primary key.
CREATE TABLE IF NOT EXISTS convdb_user_keys (
    user_id       text        NOT NULL,
    key_id        text        NOT NULL,
    master_key_id text        NOT NULL,
    wrapped_key   bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT convdb_user_keys_pkey PRIMARY KEY (user_id),
    CONSTRAINT convdb_user_keys_user_id_length CHECK (length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT convdb_user_keys_key_id_length CHECK (length(key_id) BETWEEN 1 AND 64),
    CONSTRAINT convdb_user_keys_master_key_id_length CHECK (length(master_key_id) BETWEEN 1 AND 64)
);

-- ---------------------------------------------------------------------------------------------
-- 4. Version stamp (last, so a failed run leaves no version behind)
-- ---------------------------------------------------------------------------------------------
-- The guard admits only version 8 or none, so DO NOTHING is exactly the re-run. Floor 7: migration
-- 0008 dropped the separate CHECKs that packages built for schema 6 or older expect (CHANGELOG.md).
INSERT INTO convdb_schema_version (singleton, version, applied_at, compatible_from) VALUES (true, 8, now(), 7)
ON CONFLICT (singleton) DO NOTHING;

COMMIT;

-- ---------------------------------------------------------------------------------------------
-- 5. OPTIONAL, NOT APPLIED BY THIS FILE: least-privilege role and row-level security
-- ---------------------------------------------------------------------------------------------
-- A DBA who wants a DML-only application role (convdb_app) and row-level security policies keyed
-- on the transaction-local setting convdb.user_id applies schema_rls.sql after this file:
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema_rls.sql
-- and the application connects as a member of convdb_app with
--     ConversationStore.connect(dsn, row_level_security=True)
-- It lives in its own file so that applying schema.sql never changes privileges by surprise.
--
-- ---------------------------------------------------------------------------------------------
-- 6. OPTIONAL, NOT APPLIED BY THIS FILE: the full-text search index
-- ---------------------------------------------------------------------------------------------
-- search_messages works without it (it then reads the user's messages); schema_search.sql adds a
-- GIN index that makes it fast on large histories and costs every append (measured there).
