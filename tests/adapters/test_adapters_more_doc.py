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


def _slug(heading: str) -> str:
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_has_a_section_per_framework_linking_a_tested_example() -> None:
    root = DOC.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    part = readme.split("## Framework adapters", 1)[1].split("\n## ", 1)[0]
    sections = re.findall(r"^### (.+)$", part, flags=re.M)
    assert [s.split(" — ")[0] for s in sections] == [
        "OpenAI Agents SDK",
        "LangChain",
        "Pydantic AI",
        "LlamaIndex",
        "Google ADK",
    ]
    for body in re.split(r"^### .+$", part, flags=re.M)[1:]:
        links = re.findall(r"\[Example\]\((docs/[\w\-.]+\.md)#([\w\-]+)\)", body)
        assert len(links) == 1, body
        page, anchor = links[0]
        text = (root / page).read_text(encoding="utf-8")
        chapters = {
            _slug(h): b for h, b in re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
        }
        assert anchor in chapters, (page, anchor, sorted(chapters))
        assert "```python" in chapters[anchor]  # the example the doc tests run
