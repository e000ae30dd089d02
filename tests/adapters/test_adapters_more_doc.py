"""Every python example of docs/adapters-more.md runs against a real store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from convdb import ConversationStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapters-more.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_one_example_per_framework() -> None:
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_doc_example_runs(store: ConversationStore, index: int) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(BLOCKS[index], f"{DOC.name}[{index}]", "exec"), namespace)
    await namespace["example"](store)
