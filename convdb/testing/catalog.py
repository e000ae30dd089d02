"""A snapshot of everything convdb's schema files create, for comparing two databases.

Two databases built by different paths (schema.sql; migrations 0001..N; an old release's schema
plus migrations) must compare equal. The snapshot covers convdb's tables in the current schema:
columns in order with types, NOT NULL and defaults; constraints and indexes with their definitions;
row-level security flags and policies; table and schema grants; convdb's functions (signature,
volatility, parallel safety, grants, body digest); the recorded version and floor.
Names of indexes and constraints are part of it (the package's checks and error mapping use them).
"""

from __future__ import annotations

import asyncpg

_TABLES = (
    "('conversations', 'messages', 'convdb_schema_version', 'conversation_summaries', 'message_feedback', "
    "'convdb_user_keys')"
)

SNAPSHOT_SQL = f"""
WITH t AS (
    SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl
      FROM pg_class c
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
       AND c.relname IN {_TABLES}
)
SELECT 'table', relname, relkind::text || ' rls=' || relrowsecurity || ' force=' || relforcerowsecurity, ''
  FROM t
UNION ALL
SELECT 'column', t.relname || '.' || a.attname,
       (row_number() OVER (PARTITION BY t.oid ORDER BY a.attnum))::text || ' '
           || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
       coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum
UNION ALL
SELECT 'constraint', t.relname || '.' || k.conname, pg_get_constraintdef(k.oid),
       k.condeferrable::text || ' ' || k.convalidated::text
  FROM t JOIN pg_constraint k ON k.conrelid = t.oid
UNION ALL
SELECT 'index', t.relname || '.' || ic.relname,
       regexp_replace(pg_get_indexdef(i.indexrelid), ' ON \\S+ ', ' ON <schema>.' || t.relname || ' '),
       'valid=' || i.indisvalid
  FROM t JOIN pg_index i ON i.indrelid = t.oid JOIN pg_class ic ON ic.oid = i.indexrelid
UNION ALL
SELECT 'policy', p.tablename || '.' || p.policyname,
       p.permissive || ' ' || p.cmd || ' TO ' || array_to_string(p.roles, ','),
       coalesce(p.qual, '') || ' | ' || coalesce(p.with_check, '')
  FROM pg_policies p
 WHERE p.schemaname = current_schema() AND p.tablename IN {_TABLES}
UNION ALL
SELECT 'grant', t.relname || ' to ' || coalesce(r.rolname, 'PUBLIC'),
       string_agg(g.privilege_type, ',' ORDER BY g.privilege_type), ''
  FROM t CROSS JOIN LATERAL aclexplode(t.relacl) g
  LEFT JOIN pg_roles r ON r.oid = g.grantee
 WHERE g.grantee <> (SELECT relowner FROM pg_class WHERE oid = t.oid)
 GROUP BY t.relname, r.rolname
UNION ALL
SELECT 'schema grant', coalesce(r.rolname, 'PUBLIC'),
       string_agg(g.privilege_type, ',' ORDER BY g.privilege_type), ''
  FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) g
  LEFT JOIN pg_roles r ON r.oid = g.grantee
 WHERE n.nspname = current_schema() AND g.grantee <> n.nspowner
 GROUP BY r.rolname
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       p.provolatile::text || ' ' || p.proparallel::text || ' '
           || coalesce(array_to_string(p.proacl, ','), ''),
       md5(p.prosrc)
  FROM pg_proc p
 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
   AND p.proname LIKE 'convdb\\_%'
ORDER BY 1, 2, 3, 4
"""


async def catalog_snapshot(dsn: str) -> list[tuple[str, ...]]:
    """The catalog rows of convdb's schema in the database at ``dsn``, plus the version row."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(SNAPSHOT_SQL)
        snapshot = [tuple(str(value) for value in row) for row in rows]
        if await conn.fetchval("SELECT to_regclass('convdb_schema_version') IS NOT NULL"):
            version = await conn.fetchval(
                "SELECT (to_jsonb(v) - 'applied_at')::text FROM convdb_schema_version v"
            )
            snapshot.append(("version row", str(version), "", ""))
        return snapshot
    finally:
        await conn.close()
