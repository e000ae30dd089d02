"""Peers: other projects' conversation stores, measured through their real packages and public APIs.

Each module imports its peer's package lazily, so a peer that is not installed (or fails to import)
becomes rows with an error in the results instead of stopping the run.
"""

from __future__ import annotations

PEERS: dict[str, tuple[str, str]] = {
    # name: (module under benchmarks.peers, class)
    "openai-agents": ("openai_agents", "OpenAIAgentsSystem"),
    "langchain-postgres": ("langchain_postgres", "LangchainPostgresSystem"),
    "llamaindex": ("llamaindex", "LlamaIndexSystem"),
    "google-adk": ("google_adk", "GoogleADKSystem"),
    "seed-sqlmodel": ("seed_sqlmodel", "SeedSQLModelSystem"),
}
