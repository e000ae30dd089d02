"""JSON Lines files of conversation exports: the file helpers above ``ConversationStore``.

The format itself (records, their validation on import) is ``convdb.export_format``; its public
names are re-exported here, so ``from convdb.export import FORMAT, parse_header`` keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .export_format import (
    FORMAT,
    MAX_IMPORT_SEQ,
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
    "MAX_IMPORT_SEQ",
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

    The records go to a temporary file of its own in the destination's directory, which is
    flushed to disk (fsync) and then renamed over the destination (``os.replace``, atomic on
    POSIX). So the file under the final name is always one whole export: an interrupted export
    leaves nothing, and concurrent exports to one path each publish a complete file (the last
    rename wins). Like any ``mkstemp`` file, the result is readable by its owner only (0600): it
    holds a user's conversation.
    """
    target = Path(path)
    fd, temporary = await asyncio.to_thread(
        tempfile.mkstemp, dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
    )
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            buffer: list[str] = []
            async for record in records:
                buffer.append(_dumps(record))
                count += 1
                if len(buffer) >= 1000:
                    await asyncio.to_thread(handle.writelines, buffer)
                    buffer = []
            await asyncio.to_thread(_finish, handle, buffer)
        await asyncio.to_thread(os.replace, temporary, target)
    except BaseException:
        # Also on cancellation, when awaiting a thread is no longer possible: one unlink.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return count


def _finish(handle: Any, lines: list[str]) -> None:
    handle.writelines(lines)
    handle.flush()
    os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file, one at a time (blank lines skipped).

    A line that is not UTF-8, not JSON, not an object, or nested too deeply for the JSON parser
    raises ``InvalidInput`` naming the line.
    """
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("records", f"line {number} of {path} is not UTF-8: {exc}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InvalidInput("records", f"line {number} of {path} is not JSON: {exc}") from exc
            except RecursionError:
                raise InvalidInput(
                    "records", f"line {number} of {path} is nested too deeply to parse"
                ) from None
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
    return await store.import_conversation(
        user_id, read_jsonl(path), conversation_id=conversation_id, replace=replace
    )
