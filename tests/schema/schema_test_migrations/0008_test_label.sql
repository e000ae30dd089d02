-- A TEST migration (never shipped): an additive version 8 for the rolling-upgrade tests.
-- kind: additive
--
-- Adds a nullable column: servers of packages built for schema 7 keep running (they never name it).

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0008 takes schema version 7 to 8, but this database has no convdb schema';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 7 AND found IS DISTINCT FROM 8 THEN
        RAISE EXCEPTION 'convdb migration 0008 takes schema version 7 to 8, but this database is at version %',
            coalesce(found::text, '(none)');
    END IF;
END
$$;

ALTER TABLE messages ADD COLUMN IF NOT EXISTS test_label text;

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 8, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 7;

COMMIT;
