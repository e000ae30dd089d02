-- convdb migration 0008: drop the separate CHECKs that 0007's one-per-table rules replace.
-- kind: breaking
-- floor: 7
--
-- Takes schema version 7 to 8. Applied by a DBA, never by the package, in one transaction, AFTER
-- every server runs a package built for schema 7 or later (docs/upgrading.md):
--     python -m convdb migrations --from 7 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: drops the five CHECKs of conversations and the ten of messages whose rules
-- conversations_valid and messages_valid (0007) enforce, with the same names in the errors. This
-- is the step that makes writes cheaper (the row rules are then read and planned once per table
-- and statement instead of fifteen times; measured in docs/benchmarks.md). Breaking: packages built
-- for schema 6 or older check that those CHECKs exist and would refuse the database, so the floor
-- rises to 7.
--
-- What it locks: ACCESS EXCLUSIVE on conversations and on messages for the drops (catalog updates
-- only, no scan): appends wait for that long. Measured in docs/upgrading.md.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0008 takes schema version 7 to 8, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 7 AND found IS DISTINCT FROM 8 THEN
        RAISE EXCEPTION 'convdb migration 0008 takes schema version 7 to 8, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

-- Both tables' locks at once or neither: writers lock conversations and messages in both orders
-- (save_message's statement takes messages first, a batch takes conversations first), so holding
-- one while queued for the other deadlocks with a writer (it did, on every run of
-- benchmarks/migration_locks.py before this block). Each attempt waits at most 100 ms per table,
-- well below deadlock_timeout (1 s by default), so it gives up and gives back what it took before
-- a writer it blocks would be cancelled as a deadlock's victim; the writers queued behind it then
-- run, and the next attempt follows.
DO $$
DECLARE
    tries integer := 0;
    before text := current_setting('lock_timeout');
BEGIN
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            LOCK TABLE conversations, messages IN ACCESS EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', before, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            tries := tries + 1;
            IF tries >= 600 THEN
                RAISE EXCEPTION 'convdb migration 0008 could not lock conversations and messages in 600 tries of 100 ms'
                    USING HINT = 'a transaction holds them for long: end it, then run the migration again';
            END IF;
        END;
    END LOOP;
END
$$;

ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_id_length;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_user_id_length;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_metadata_object;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_next_seq_positive;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_fork_lineage;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_seq_positive;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_role_known;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_has_call_id;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_name_length;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_call_id_length;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_idempotency_key_length;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tool_calls_array;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_metadata_object;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_token_count_nonnegative;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_usage_valid;

INSERT INTO convdb_schema_version (singleton, version, applied_at, compatible_from) VALUES (true, 8, now(), 7)
ON CONFLICT (singleton) DO UPDATE
    SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at, compatible_from = EXCLUDED.compatible_from
WHERE convdb_schema_version.version = 7;

COMMIT;
