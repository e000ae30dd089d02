-- Every static statement convdb sends, one named block each ("-- name: <name>").
-- Loaded by convdb.sql.QUERIES; tests prepare each one against schema.sql.
-- Parameters are positional ($n); jsonb parameters arrive as JSON text (see convdb.pool).
-- Every statement that touches a conversation's data filters on (id, user_id): ownership is
-- checked by the database, in the same statement, never by a prior read.

-- name: get_or_create_conversation
-- One round trip for both "load" and "create". ON CONFLICT DO NOTHING waits for a concurrent
-- creator to commit; if that creator was this same user, the fallback SELECT cannot see its row
-- (statement snapshot), so the caller re-reads with get_conversation.
WITH inserted AS (
    INSERT INTO conversations (id, user_id, title, metadata)
    VALUES ($1, $2, $3, COALESCE($4::jsonb, '{}'::jsonb))
    ON CONFLICT (id) DO NOTHING
    RETURNING id, user_id, title, metadata, created_at, updated_at, true AS created
)
SELECT id, user_id, title, metadata, created_at, updated_at, created FROM inserted
UNION ALL
SELECT id, user_id, title, metadata, created_at, updated_at, false
  FROM conversations
 WHERE id = $1 AND user_id = $2
   AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: get_conversation
SELECT id, user_id, title, metadata, created_at, updated_at
  FROM conversations
 WHERE id = $1 AND user_id = $2;

-- name: save_message
-- Ownership check, seq allocation under the conversation row's lock, updated_at touch and insert,
-- in one statement. No row back means "no such conversation for this user". With an idempotency
-- key that is already stored, the unique index fails the whole statement, so no seq is consumed.
WITH reserved AS (
    UPDATE conversations
       SET next_seq = next_seq + 1, updated_at = now()
     WHERE id = $1 AND user_id = $2
 RETURNING id, next_seq - 1 AS seq
)
INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                      metadata, token_count, idempotency_key)
SELECT reserved.id, reserved.seq, $3, $4, $5, $6, $7::jsonb, COALESCE($8::jsonb, '{}'::jsonb), $9, $10
  FROM reserved
RETURNING seq, created_at;

-- name: reserve_seq_range
-- First statement of a batch: checks ownership, locks the conversation row until commit, reserves
-- $3 sequence numbers and touches updated_at. now() is the transaction time, the created_at every
-- row of the batch receives.
UPDATE conversations
   SET next_seq = next_seq + $3, updated_at = now()
 WHERE id = $1 AND user_id = $2
RETURNING next_seq - $3 AS first_seq, now() AS created_at;

-- name: lock_conversation_with_keys
-- First statement of a batch that carries idempotency keys: checks ownership, locks the row and
-- returns the messages already stored under any of the keys (an empty conversation row marks
-- "owned, none stored"). The batch then reserves only what is new.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at
  FROM (SELECT id FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE) c
  LEFT JOIN messages m
    ON m.conversation_id = c.id AND m.idempotency_key = ANY($3::text[]);

-- name: insert_message_at
-- The executemany body of a batch: the seq was reserved by reserve_seq_range in this transaction.
INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                      metadata, token_count, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, COALESCE($8::jsonb, '{}'::jsonb), $9, $10);

-- name: get_message_by_key
-- Resolves a retried keyed save to the message stored the first time.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at
  FROM conversations c
  JOIN messages m ON m.conversation_id = c.id
 WHERE c.id = $1 AND c.user_id = $2 AND m.idempotency_key = $3;

-- name: get_history
-- The newest $3 messages, oldest first, in one ownership-checked JOIN. The LATERAL subquery walks
-- messages_pkey backwards and stops after $3 rows. No row back: not this user's conversation;
-- one row with a NULL seq: the conversation is empty.
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata,
       m.token_count, m.idempotency_key, m.created_at
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT seq, role, content, tool_name, tool_call_id, tool_calls, metadata,
               token_count, idempotency_key, created_at
          FROM messages
         WHERE conversation_id = c.id
         ORDER BY seq DESC
         LIMIT $3
  ) m ON true
 WHERE c.id = $1 AND c.user_id = $2
 ORDER BY m.seq;

-- name: schema_report
-- What verify_schema compares with the package's expectations: whether the version table exists,
-- every column of convdb's tables and their indexes, in the current search_path. Works on an
-- empty database, so it can say what is missing.
SELECT to_regclass('convdb_schema_version') IS NOT NULL AS has_version_table,
       (SELECT array_agg(c.table_name || '.' || c.column_name || ':' || c.data_type)
          FROM information_schema.columns c
         WHERE c.table_schema = current_schema()
           AND c.table_name IN ('conversations', 'messages')) AS columns,
       (SELECT array_agg(i.indexname::text)
          FROM pg_indexes i
         WHERE i.schemaname = current_schema()
           AND i.tablename IN ('conversations', 'messages')) AS indexes

-- name: schema_version
SELECT max(version) FROM convdb_schema_version;
