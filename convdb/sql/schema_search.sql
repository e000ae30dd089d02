-- convdb, OPTIONAL: the full-text search index for search_messages.
--
-- Not applied by schema.sql: it costs every append (each new message's text is parsed into a
-- tsvector and inserted into a GIN index). Measured (docs/branches-feedback-search.md): appends
-- through save_message ran at 0.95x (200-character messages) and 0.82x (4,000 characters) their
-- speed without it, so it is opt-in. search_messages works without it, reading the user's
-- messages; with it, a rare word is a GIN lookup.
--
-- Apply it AFTER schema.sql, as the owner of convdb's tables, OUTSIDE a transaction (CREATE INDEX
-- CONCURRENTLY does not block appends while it builds; on a large table that takes minutes):
--
--     psql -v ON_ERROR_STOP=1 -d <database> -f schema_search.sql
--
-- If the build is interrupted, the index is left INVALID: drop it (DROP INDEX CONCURRENTLY
-- messages_content_search) and apply this file again. Idempotent otherwise.
--
-- The expression must stay exactly the one convdb.search.document() writes for the 'simple'
-- configuration (search_messages' default). For another configuration, a DBA can add the same
-- index with 'english' (etc.) in place of 'simple'; searches with config='english' then use it.
-- Only the first 100,000 characters of a message are indexed: a tsvector is limited to 1 MB.

CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_content_search
    ON messages USING gin (to_tsvector('simple'::regconfig, left(coalesce(content, ''), 100000)));
