-- convdb, OPTIONAL hardening: a least-privilege application role and row-level security.
--
-- Not applied by schema.sql. A DBA who wants it applies it AFTER schema.sql, as the owner of
-- convdb's tables (a superuser or the role that ran schema.sql):
--
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema_rls.sql
--     psql -d <database> -c "CREATE ROLE my_agent_server LOGIN PASSWORD '...' IN ROLE convdb_app"
--
-- and the application then connects as that login role with
--
--     ConversationStore.connect(dsn, row_level_security=True)
--
-- What it gives:
--   * convdb_app (NOLOGIN; grant it to the login role your servers use): SELECT, INSERT, UPDATE,
--     DELETE on convdb's tables (conversations, messages, conversation_summaries) and SELECT on the version table. No DDL: it owns nothing, gets
--     no TRUNCATE, no REFERENCES, no TRIGGER, no CREATE on the schema (PostgreSQL 15+ revokes
--     CREATE on schema public from PUBLIC by default; on 14 and older run
--     REVOKE CREATE ON SCHEMA public FROM PUBLIC yourself).
--   * Row-level security on conversations and messages for members of convdb_app: a row is visible
--     and writable only while the transaction-local setting convdb.user_id equals its owner. With
--     row_level_security=True convdb begins every operation with
--     SET LOCAL convdb.user_id = <user_id>: transaction-local, so it ends at COMMIT
--     and never leaks to the next user of a pooled or PgBouncer-shared connection. Without the
--     setting (or after the transaction) nothing is visible: RLS fails closed.
--
-- convdb already checks ownership in every statement (WHERE id = $1 AND user_id = $2); this is a
-- second, independent wall for deployments where other code also connects with the app role.
-- Cost: each single-statement operation becomes BEGIN, SET LOCAL, statement, COMMIT (see the
-- README's Guarantees section for the measured figure). Table owners and superusers bypass RLS,
-- so migrations and DBA work are unaffected.
--
-- On Citus (docs/citus.md, "Row-level security"): apply it on the coordinator AFTER
-- schema_citus.sql. Citus refuses subqueries in the policies of distributed tables, so where the
-- citus extension is installed the per-message rule is a function, convdb_conversation_owner(),
-- created here, instead of the EXISTS subquery; and Citus carries a transaction's SET LOCAL to the
-- workers only with citus.propagate_set_commands = 'local', which this file sets on the database.
-- convdb sends the user as SET LOCAL convdb.user_id = ..., which both engines read the same way.
--
-- Idempotent: running it again changes nothing.

BEGIN;

-- Citus: one connection per worker for this whole transaction (citus.multi_shard_modify_mode), as
-- Citus requires to create the function of R3 after the policies' parallel DDL on the shards.
DO $$
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- R1. The application role (cluster-wide; created once, granted per database below)
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'convdb_app') THEN
        CREATE ROLE convdb_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- R2. Grants: DML on convdb's tables, nothing else
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO convdb_app', current_schema());
END
$$;
REVOKE ALL ON conversations, messages, convdb_schema_version FROM convdb_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON conversations, messages TO convdb_app;
GRANT SELECT ON convdb_schema_version TO convdb_app;

-- ---------------------------------------------------------------------------------------------
-- R3. Row-level security keyed on the transaction-local setting convdb.user_id
-- ---------------------------------------------------------------------------------------------
-- current_setting(..., true) is NULL when never set and '' after a transaction that set it ended;
-- neither equals a user_id (1 to 255 characters), so an unset user sees and writes nothing.
ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS convdb_conversations_owner ON conversations;
CREATE POLICY convdb_conversations_owner ON conversations
    FOR ALL TO convdb_app
    USING (user_id = current_setting('convdb.user_id', true))
    WITH CHECK (user_id = current_setting('convdb.user_id', true));

-- A message belongs to whoever owns its conversation. On PostgreSQL the rule is a subquery, itself
-- filtered by the conversations policy, one primary-key probe per message row. On Citus, which
-- refuses subqueries in policies, it is convdb_conversation_owner(conversation_id), the same probe
-- in a SQL function: on a worker it reads the conversation's co-located shard on the same node (a
-- nested, local execution, hence the function's citus.allow_nested_distributed_execution).
DO $$
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN  -- the citus extension
        EXECUTE format($f$
            CREATE OR REPLACE FUNCTION %1$I.convdb_conversation_owner(conversation_id text) RETURNS text
                LANGUAGE sql STABLE
                SET citus.allow_nested_distributed_execution = on
                AS 'SELECT c.user_id FROM %1$I.conversations c WHERE c.id = $1'
        $f$, current_schema());
        EXECUTE format('ALTER DATABASE %I SET citus.propagate_set_commands = %L', current_database(), 'local');
    END IF;
END
$$;

DROP POLICY IF EXISTS convdb_messages_owner ON messages;
DO $$
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        CREATE POLICY convdb_messages_owner ON messages
            FOR ALL TO convdb_app
            USING (convdb_conversation_owner(messages.conversation_id) = current_setting('convdb.user_id', true))
            WITH CHECK (convdb_conversation_owner(messages.conversation_id) = current_setting('convdb.user_id', true));
    ELSE
        CREATE POLICY convdb_messages_owner ON messages
            FOR ALL TO convdb_app
            USING (EXISTS (SELECT FROM conversations c
                            WHERE c.id = messages.conversation_id
                              AND c.user_id = current_setting('convdb.user_id', true)))
            WITH CHECK (EXISTS (SELECT FROM conversations c
                                 WHERE c.id = messages.conversation_id
                                   AND c.user_id = current_setting('convdb.user_id', true)));
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- R4. conversation_summaries (schema version 3 and later): the same grants and rule as messages.
-- ---------------------------------------------------------------------------------------------
-- Skipped on an older database, so that this file stays applicable to every schema version; apply
-- it again after migration 0003.
DO $$
BEGIN
    IF to_regclass('conversation_summaries') IS NULL THEN
        RETURN;
    END IF;
    REVOKE ALL ON conversation_summaries FROM convdb_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_summaries TO convdb_app;
    ALTER TABLE conversation_summaries ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS convdb_summaries_owner ON conversation_summaries;
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN  -- Citus: see R3
        CREATE POLICY convdb_summaries_owner ON conversation_summaries
            FOR ALL TO convdb_app
            USING (convdb_conversation_owner(conversation_summaries.conversation_id)
                   = current_setting('convdb.user_id', true))
            WITH CHECK (convdb_conversation_owner(conversation_summaries.conversation_id)
                        = current_setting('convdb.user_id', true));
        RETURN;
    END IF;
    CREATE POLICY convdb_summaries_owner ON conversation_summaries
        FOR ALL TO convdb_app
        USING (EXISTS (SELECT FROM conversations c
                        WHERE c.id = conversation_summaries.conversation_id
                          AND c.user_id = current_setting('convdb.user_id', true)))
        WITH CHECK (EXISTS (SELECT FROM conversations c
                             WHERE c.id = conversation_summaries.conversation_id
                               AND c.user_id = current_setting('convdb.user_id', true)));
END
$$;

-- ---------------------------------------------------------------------------------------------
-- R5. Feedback (schema version 5 and later): the same rule as messages. Skipped on older schema
-- versions, so this file applies to every version; re-apply it after migrating to version 5.
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF to_regclass('message_feedback') IS NOT NULL THEN
        REVOKE ALL ON message_feedback FROM convdb_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON message_feedback TO convdb_app;
        ALTER TABLE message_feedback ENABLE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS convdb_feedback_owner ON message_feedback;
        IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN  -- Citus: see R3
            CREATE POLICY convdb_feedback_owner ON message_feedback
                FOR ALL TO convdb_app
                USING (convdb_conversation_owner(message_feedback.conversation_id)
                       = current_setting('convdb.user_id', true))
                WITH CHECK (convdb_conversation_owner(message_feedback.conversation_id)
                            = current_setting('convdb.user_id', true));
        ELSE
            CREATE POLICY convdb_feedback_owner ON message_feedback
                FOR ALL TO convdb_app
                USING (EXISTS (SELECT FROM conversations c
                                WHERE c.id = message_feedback.conversation_id
                                  AND c.user_id = current_setting('convdb.user_id', true)))
                WITH CHECK (EXISTS (SELECT FROM conversations c
                                     WHERE c.id = message_feedback.conversation_id
                                       AND c.user_id = current_setting('convdb.user_id', true)));
        END IF;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- R6. convdb_user_keys (schema version 6 and later): a user's data key (encryption at rest) is
--     visible to that user's transactions only.
-- ---------------------------------------------------------------------------------------------
-- rotate(), which re-wraps every user's key, runs as the tables' owner (or a BYPASSRLS role).
-- Skipped on an older database; apply this file again after migration 0006.
DO $$
BEGIN
    IF to_regclass('convdb_user_keys') IS NULL THEN
        RETURN;
    END IF;
    REVOKE ALL ON convdb_user_keys FROM convdb_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON convdb_user_keys TO convdb_app;
    ALTER TABLE convdb_user_keys ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS convdb_user_keys_owner ON convdb_user_keys;
    CREATE POLICY convdb_user_keys_owner ON convdb_user_keys
        FOR ALL TO convdb_app
        USING (user_id = current_setting('convdb.user_id', true))
        WITH CHECK (user_id = current_setting('convdb.user_id', true));
END
$$;

COMMIT;
