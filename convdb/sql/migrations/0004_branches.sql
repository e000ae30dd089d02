-- convdb migration 0004: branches (forks) of conversations.
-- kind: additive
--
-- Takes schema version 3 to 4. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 3 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: adds three nullable columns at the end of conversations - parent_id (the
-- conversation a fork was made from), forked_at_seq (the source's seq it was forked after) and
-- root_id (the first conversation of the fork's lineage, set at fork time so finding it is O(1)) -
-- a CHECK that they are set together, and two partial indexes that hold forks only (listing the
-- forks of a conversation, or every branch of a root). A fork copies its source's messages
-- (see docs/branches-feedback-search.md), so messages are not touched.
--
-- What it locks: ACCESS EXCLUSIVE on conversations while the columns and the CHECK are added (the
-- CHECK scans conversations once; no rewrite: nullable columns without default), then SHARE while
-- the two partial indexes are built (one more scan; both indexes are empty, every existing row is
-- a never-forked conversation). Appends wait for that long. Measured in docs/upgrading.md.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0004 takes schema version 3 to 4, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 3 AND found IS DISTINCT FROM 4 THEN
        RAISE EXCEPTION 'convdb migration 0004 takes schema version 3 to 4, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

ALTER TABLE conversations ADD COLUMN IF NOT EXISTS parent_id text;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS forked_at_seq bigint;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS root_id text;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'conversations_fork_lineage'
                      AND conrelid = 'conversations'::regclass) THEN
        ALTER TABLE conversations ADD CONSTRAINT conversations_fork_lineage CHECK (
            (parent_id IS NULL AND forked_at_seq IS NULL AND root_id IS NULL)
            OR (parent_id IS NOT NULL AND forked_at_seq >= 0 AND root_id IS NOT NULL));
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS conversations_forks
    ON conversations (parent_id, user_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversations_branches
    ON conversations (root_id, user_id) WHERE root_id IS NOT NULL;

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 4, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 3;

COMMIT;
