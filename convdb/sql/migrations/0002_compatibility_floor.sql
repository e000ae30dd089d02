-- convdb migration 0002: the version table records the compatibility floor (convdb 0.2.0).
-- kind: additive
--
-- Takes schema version 1 to 2. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 1 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: adds convdb_schema_version.compatible_from, the oldest package schema version that
-- can still run against this database. A package built for schema P accepts a database at version V
-- with floor F when V >= P and F <= P. Additive migrations keep F; breaking ones raise it. Nothing
-- else changes: conversations and messages are not touched.
--
-- What it locks: ACCESS EXCLUSIVE on convdb_schema_version only (read by servers at connect() and
-- nothing else), for the length of this transaction; ADD COLUMN with a constant default rewrites
-- nothing (PostgreSQL 11+). Measured in docs/upgrading.md.
--
-- Servers of convdb 0.1.0 compare the version exactly: once this has run, a 0.1.0 server that
-- (re)starts refuses the database ("schema version 2 is newer"); running ones are unaffected.
-- See docs/upgrading.md for the order of steps.

BEGIN;

-- Guard: only a database at version 1, or already at 2 (a re-run changes nothing). The EXCLUSIVE
-- lock serialises two DBAs running this at once (the second waits, then re-runs as a no-op) and
-- still lets servers read the version table until ALTER TABLE below.
DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0002 takes schema version 1 to 2, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 1 AND found IS DISTINCT FROM 2 THEN
        RAISE EXCEPTION 'convdb migration 0002 takes schema version 1 to 2, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

ALTER TABLE convdb_schema_version ADD COLUMN IF NOT EXISTS compatible_from integer NOT NULL DEFAULT 1;

-- Stamp. Constant values only in the conflict action (Citus refuses now() there; the version table
-- becomes a reference table on Citus): applied_at comes from the proposed row.
INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 2, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 1;

COMMIT;
