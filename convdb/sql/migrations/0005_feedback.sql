-- convdb migration 0005: feedback on messages (ratings, comments, tags).
-- kind: additive
--
-- Takes schema version 4 to 5. Applied by a DBA, never by the package, in one transaction:
--     python -m convdb migrations --from 4 | psql -v ON_ERROR_STOP=1 -d <database> -f -
--
-- What it does: creates message_feedback, one row per rated message, keyed like messages and
-- referencing them with ON DELETE CASCADE (popping, clearing or deleting a message removes its
-- feedback). Nothing existing changes. Full-text search needs no migration: its index is the
-- optional file schema_search.sql.
--
-- What it locks: the new table, and SHARE ROW EXCLUSIVE on messages for the foreign key's
-- creation (appends wait; the new table is empty, so there is nothing to validate: milliseconds).
-- Measured in docs/upgrading.md.

BEGIN;

DO $$
DECLARE
    found integer;
BEGIN
    IF to_regclass('convdb_schema_version') IS NULL THEN
        RAISE EXCEPTION 'convdb migration 0005 takes schema version 4 to 5, but this database has no convdb schema'
            USING HINT = 'for a fresh install apply schema.sql (python -m convdb schema), not migrations';
    END IF;
    LOCK TABLE convdb_schema_version IN EXCLUSIVE MODE;
    SELECT max(version) INTO found FROM convdb_schema_version;
    IF found IS DISTINCT FROM 4 AND found IS DISTINCT FROM 5 THEN
        RAISE EXCEPTION 'convdb migration 0005 takes schema version 4 to 5, but this database is at version %',
            coalesce(found::text, '(none)')
            USING HINT = 'apply the migrations in order: python -m convdb migrations --from <the database''s version>';
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS message_feedback (
    conversation_id text        NOT NULL,
    seq             bigint      NOT NULL,
    rating          smallint    NOT NULL,
    comment         text,
    tags            text[]      NOT NULL DEFAULT '{}'::text[],
    inherited       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_feedback_pkey PRIMARY KEY (conversation_id, seq),
    CONSTRAINT message_feedback_message_fkey FOREIGN KEY (conversation_id, seq)
        REFERENCES messages (conversation_id, seq) ON DELETE CASCADE,
    CONSTRAINT message_feedback_rating_range CHECK (rating BETWEEN -1 AND 1),
    CONSTRAINT message_feedback_comment_length CHECK (comment IS NULL OR length(comment) <= 4000),
    CONSTRAINT message_feedback_tags_count CHECK (cardinality(tags) <= 16)
);

INSERT INTO convdb_schema_version (singleton, version, applied_at) VALUES (true, 5, now())
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = EXCLUDED.applied_at
WHERE convdb_schema_version.version = 4;

COMMIT;
