-- convdb on Citus: the distribution of convdb's tables over a Citus cluster. OPTIONAL.
--
-- Applied by a DBA on the Citus coordinator, AFTER schema.sql (and schema_rls.sql, if used):
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema_citus.sql
-- The database must have the citus extension and its worker nodes registered
-- (CREATE EXTENSION citus; SELECT citus_add_node(...)). Existing rows are copied into the shards.
-- Idempotent: running it again on a database it was applied to changes nothing.
--
-- What it does:
--   * conversations is distributed by id; messages, conversation_summaries (schema version 3)
--     and message_feedback (schema version 5) by conversation_id, all co-located: a
--     conversation's row, its messages, its summaries and their feedback live in one shard group
--     on one worker. After migration 0003 or 0005 on a distributed database, run this file again:
--     it distributes the new table. The primary keys, the partial unique idempotency index and
--     the ON DELETE CASCADE foreign keys are kept on every shard group (co-located tables allow
--     them), so every per-conversation statement of convdb runs on one shard (router execution;
--     checked by EXPLAIN in the Citus tests).
--   * convdb_schema_version becomes a reference table (a copy on every node), so the version
--     check at connect() is answered locally wherever it runs.
--   * What fans out to every shard: listing a user's conversations, searching their messages,
--     their feedback summary and erasing their data (by user_id, which is not the distribution
--     column). All are correct across shards. Forking copies a conversation's prefix from its
--     shard into the fork's (in general another worker): a multi-shard step, rare next to the hot
--     path, which on the fork is single-shard again.
--
-- 32 shards (Citus's default): enough to spread over many more workers than today's by moving
-- shards (citus_rebalance_start()), without re-distributing.

BEGIN;

DO $$
DECLARE
    wanted constant text[][] := ARRAY[['conversations', 'id'], ['messages', 'conversation_id'],
                                      ['conversation_summaries', 'conversation_id'],
                                      ['message_feedback', 'conversation_id']];
    have text;
    i integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'schema_citus.sql needs the citus extension in this database '
                        '(CREATE EXTENSION citus on the coordinator and every worker)';
    END IF;
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        SELECT column_to_column_name(p.logicalrelid, p.partkey) INTO have
          FROM pg_dist_partition p
         WHERE p.logicalrelid = to_regclass(wanted[i][1]);
        IF have IS NULL THEN
            IF wanted[i][1] = 'conversations' THEN
                PERFORM create_distributed_table('conversations', 'id', shard_count => 32);
            ELSE
                PERFORM create_distributed_table(wanted[i][1], 'conversation_id',
                                                 colocate_with => 'conversations');
            END IF;
        ELSIF have IS DISTINCT FROM wanted[i][2] THEN
            RAISE EXCEPTION '% is distributed by %, convdb needs it distributed by %',
                            wanted[i][1], have, wanted[i][2];
        END IF;
    END LOOP;

    -- Users' data keys (encryption at rest): by user_id, every per-user statement on one shard.
    IF NOT EXISTS (SELECT FROM pg_dist_partition
                    WHERE logicalrelid = 'convdb_user_keys'::regclass) THEN
        PERFORM create_distributed_table('convdb_user_keys', 'user_id', colocate_with => 'none');
    END IF;

    IF NOT EXISTS (SELECT FROM pg_dist_partition
                    WHERE logicalrelid = 'convdb_schema_version'::regclass) THEN
        PERFORM create_reference_table('convdb_schema_version');
    END IF;
END
$$;

COMMIT;
