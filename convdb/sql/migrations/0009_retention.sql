-- convdb migration 0009: retention (expiry, sliding expiry, temporary conversations, message caps).
-- kind: additive
--
-- Takes schema version 8 to 9 (additive: the floor stays 7). Applied by a DBA, never by the
-- package, in one transaction:
--     python -m convdb migrations --from 8 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: adds four columns at the end of conversations - expires_at (NULL: never expires;
-- from that instant on the conversation is invisible to every statement, and purge_expired
-- deletes it), ttl (set only for a sliding expiry: each append moves expires_at to now() + ttl),
-- temporary (never listed) and max_messages (NULL: no cap; an append that exceeds it deletes the
-- oldest messages in the same statement) - two CHECKs on them, and the partial index
-- conversations_expires that purge_expired lists expired rows through. Rows that never expire are
-- not in the index, and a non-sliding append does not change expires_at, so appends stay HOT;
-- only sliding conversations update an indexed column on every append (docs/retention.md).
--
-- What it locks: ACCESS EXCLUSIVE on conversations while the columns are added (nullable, or a
-- constant default: no rewrite) and the CHECKs are added NOT VALID (no scan), then SHARE while the
-- partial index is built (one scan of conversations; the index is empty on an existing database:
-- no row has an expiry yet). Appends wait for that long (measured in docs/upgrading.md). A DBA
-- with a very large conversations table can build the index beforehand, outside any transaction:
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS conversations_expires
--         ON conversations (expires_at) WHERE expires_at IS NOT NULL;
-- and this file then skips it (IF NOT EXISTS). messages is not touched.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0009 takes schema version 8 to 9, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 8 AND found IS DISTINCT FROM 9 THEN
        RAISE EXCEPTION 'convdb migration 0009 takes schema version 8 to 9, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

ALTER TABLE conversations ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS ttl interval;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS temporary boolean NOT NULL DEFAULT false;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS max_messages integer;

-- NOT VALID: no scan under the lock (every existing row has NULLs, which pass); enforced on every
-- insert and update all the same.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'conversations_ttl_positive'
                      AND conrelid = 'conversations'::regclass) THEN
        ALTER TABLE conversations ADD CONSTRAINT conversations_ttl_positive
            CHECK (ttl IS NULL OR ttl > interval '0') NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'conversations_max_messages_positive'
                      AND conrelid = 'conversations'::regclass) THEN
        ALTER TABLE conversations ADD CONSTRAINT conversations_max_messages_positive
            CHECK (max_messages IS NULL OR max_messages > 0) NOT VALID;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS conversations_expires
    ON conversations (expires_at) WHERE expires_at IS NOT NULL;

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 9, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 8;

COMMIT;
