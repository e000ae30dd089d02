"""Issue 10 item 7: concurrent exports to one path each publish one whole file, never a torn one."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from convdb import ConversationStore
from convdb.export import export_to_file, read_jsonl, write_jsonl

U = "alice"
EXPORTS = 6


async def test_concurrent_exports_to_one_path_publish_one_whole_export(
    store: ConversationStore, tmp_path: Path
) -> None:
    # Conversations of different sizes (several write buffers each), so the writes interleave.
    expected: dict[str, list[str]] = {}
    for i in range(EXPORTS):
        cid = f"c{i}"
        await store.get_or_create_conversation(cid, U)
        count = 1500 + 700 * i
        await store.save_messages(cid, U, [{"role": "user", "content": f"{cid}-{n}"} for n in range(count)])
        expected[cid] = [f"{cid}-{n}" for n in range(count)]
    target = tmp_path / "out.jsonl"
    for _ in range(3):
        counts = await asyncio.gather(*(export_to_file(store, cid, U, target) for cid in expected))
        assert counts == [1 + len(expected[cid]) for cid in expected]
        records = list(read_jsonl(target))
        winner = records[0]["id"]
        assert [r["content"] for r in records[1:]] == expected[winner], "the file is one whole export"
        assert os.listdir(tmp_path) == ["out.jsonl"], "no temporary file is left"


async def test_an_interrupted_export_leaves_the_previous_file_and_no_temporary(
    store: ConversationStore, tmp_path: Path
) -> None:
    await store.get_or_create_conversation("c", U)
    await store.save_messages("c", U, [{"role": "user", "content": str(n)} for n in range(3000)])
    target = tmp_path / "out.jsonl"
    target.write_text("previous\n")

    async def records() -> AsyncIterator[dict[str, Any]]:
        async for record in store.export_conversation("c", U):
            if record.get("seq") == 2500:
                raise RuntimeError("interrupted")
            yield record

    with pytest.raises(RuntimeError, match="interrupted"):
        await write_jsonl(records(), target)
    assert target.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


async def test_the_published_file_is_private_to_its_owner(store: ConversationStore, tmp_path: Path) -> None:
    await store.get_or_create_conversation("c", U)
    target = tmp_path / "out.jsonl"
    assert await export_to_file(store, "c", U, target) == 1
    assert json.loads(target.read_text())["id"] == "c"
    assert os.stat(target).st_mode & 0o777 == 0o600
