"""Full-text search over a user's messages and titles (the query is ``convdb.search``'s)."""

from __future__ import annotations

from ..errors import ConversationNotFound
from ..records import Page, SearchHit
from ..search import SearchQuery, encode_cursor
from . import Conn


async def search_page(conn: Conn, query: SearchQuery) -> Page[SearchHit]:
    """One page of hits (the statement fetches limit + 1 to know whether another page exists)."""
    records = await conn.fetch(query.sql, *query.args)
    if query.conversation_id is not None:
        if not records:
            raise ConversationNotFound()
        records = [r for r in records if r["conversation_id"] is not None]
    items = [
        SearchHit(
            conversation_id=r["conversation_id"],
            seq=r["seq"],
            role=r["role"],
            snippet=r["snippet"],
            rank=r["rank"],
            created_at=r["created_at"],
        )
        for r in records[: query.limit]
    ]
    last = items[-1] if len(records) > query.limit else None
    cursor = None if last is None else encode_cursor(last.rank, last.conversation_id, last.seq, query.context)
    return Page(items, cursor)
