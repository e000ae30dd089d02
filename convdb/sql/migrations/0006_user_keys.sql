-- convdb migration 0006: per-user data keys for encryption at rest (convdb 0.2.0).
-- kind: additive
--
-- Takes schema version 5 to 6. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 5 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: creates convdb_user_keys, one row per user of a store opened with encryption=:
-- the user's data key, wrapped (encrypted) by a master key the database never sees, and that
-- master key's id. Deleting a row (ConversationStore.shred_user) makes every copy of that
-- user's encrypted values unreadable, backups and replicas included. conversations and messages
-- are not touched: encrypted values live in their existing columns (docs/data-protection.md).
--
-- What it locks: nothing existing (a new table); servers of schema 5 never name it.

BEGIN;

-- Guard: only a database at version 5, or already at 6 (a re-run changes nothing).
DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0006 takes schema version 5 to 6, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 5 AND found IS DISTINCT FROM 6 THEN
        RAISE EXCEPTION 'convdb migration 0006 takes schema version 5 to 6, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

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

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 6, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 5;

COMMIT;
