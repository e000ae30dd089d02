"""convdb's benchmark: convdb against raw asyncpg, pgbench (the ceiling) and its peers, in one run.

Run ``python -m benchmarks --help`` from the repository root. See README.md, section "Benchmarks".
"""
