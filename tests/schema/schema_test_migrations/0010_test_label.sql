-- A TEST migration (never shipped): an additive version 10 for the rolling-upgrade tests.
-- kind: additive
--
-- Adds a nullable column: servers of packages built for schema 9 keep running (they never name it).

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0010 takes schema version 9 to 10, but this database has no convdb schema';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 9 AND found IS DISTINCT FROM 10 THEN
        RAISE EXCEPTION 'convdb migration 0010 takes schema version 9 to 10, but this database is at version %',
            coalesce(found::text, '(none)');
    END IF;
END
$$;

ALTER TABLE messages ADD COLUMN IF NOT EXISTS test_label text;

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 10, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 9;

COMMIT;
