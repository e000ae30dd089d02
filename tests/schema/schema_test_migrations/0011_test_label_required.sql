-- A TEST migration (never shipped): a breaking version 11 for the rolling-upgrade tests.
-- kind: breaking
-- floor: 10
--
-- Makes the column of 0010 NOT NULL: a package built for schema 9 does not write it, so its
-- inserts would fail; packages built for schema 10 write it. The floor rises to 10.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0011 takes schema version 10 to 11, but this database has no convdb schema';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 10 AND found IS DISTINCT FROM 11 THEN
        RAISE EXCEPTION 'convdb migration 0011 takes schema version 10 to 11, but this database is at version %',
            coalesce(found::text, '(none)');
    END IF;
END
$$;

UPDATE messages SET test_label = '' WHERE test_label IS NULL;
ALTER TABLE messages ALTER COLUMN test_label SET NOT NULL;

INSERT INTO convdb_schema_version (singleton, version, applied_at, compatible_from) VALUES (true, 11, now(), 10)
ON CONFLICT (singleton) DO UPDATE
    SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at, compatible_from = EXCLUDED.compatible_from
WHERE convdb_schema_version.version = 10;

COMMIT;
