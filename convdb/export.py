"""JSON Lines files of conversation exports: the file helpers above ``ConversationStore``.

The format itself (records, their validation on import) is ``convdb.export_format``; its public
names are re-exported here, so ``from convdb.export import FORMAT, parse_header`` keeps working.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .export_format import (
    FORMAT,
    ImportHeader,
    MessageParser,
    aiter_records,
    header_record,
    message_record,
    parse_header,
)
from .records import Conversation
from .store import ConversationStore

__all__ = [
    "FORMAT",
    "ImportHeader",
    "MessageParser",
    "aiter_records",
    "export_to_file",
    "header_record",
    "import_from_file",
    "message_record",
    "parse_header",
    "read_jsonl",
    "write_jsonl",
]


# -- JSON Lines files ------------------------------------------------------------------------
def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


async def write_jsonl(records: AsyncIterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write records to ``path`` as JSON Lines (UTF-8), streaming; returns how many were written.

    The file is written next to its destination and renamed into place at the end, so an
    interrupted export never leaves a truncated file under the final name.
    """
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    count = 0
    handle = await asyncio.to_thread(partial.open, "w", encoding="utf-8", newline="\n")
    try:
        buffer: list[str] = []
        async for record in records:
            buffer.append(_dumps(record))
            count += 1
            if len(buffer) >= 1000:
                await asyncio.to_thread(handle.writelines, buffer)
                buffer = []
        await asyncio.to_thread(handle.writelines, buffer)
    except BaseException:
        handle.close()
        partial.unlink(missing_ok=True)
        raise
    handle.close()
    await asyncio.to_thread(partial.replace, target)
    return count


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file, one at a time (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InvalidInput("records", f"line {number} of {path} is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise InvalidInput("records", f"line {number} of {path} is not a JSON object")
            yield record


async def export_to_file(
    store: ConversationStore, conversation_id: str, user_id: str, path: str | Path
) -> int:
    """Stream one conversation into a JSON Lines file; returns the number of records written."""
    return await write_jsonl(store.export_conversation(conversation_id, user_id), path)


async def import_from_file(
    store: ConversationStore,
    user_id: str,
    path: str | Path,
    *,
    conversation_id: str | None = None,
    replace: bool = False,
) -> Conversation:
    """Restore a conversation from a JSON Lines export (read as it is imported)."""
    return await store.import_conversation(user_id, read_jsonl(path), conversation_id=conversation_id,
                                           replace=replace)
