"""Programs behind the docs, run from a checkout, never installed with convdb.

- ``python -m tools.loadcheck``: load with faults, then a consistency check (guarantee 8 in
  docs/guarantees.md; CI runs a short version, tests/faults/test_reliability_loadcheck.py).
- ``python -m tools.pgbouncer_cost``: what the statement-cache-off fallback costs behind PgBouncer
  (docs/pgbouncer.md).

The performance benchmark is ``python -m benchmarks`` (docs/benchmarks.md).
"""
