# Tasks for contributors and for CI (.ci/run runs these same targets). `make help` lists them.
# Run from a virtualenv with the test extra installed: `make install`.

.PHONY: help install lint types test test-pgbouncer test-citus test-citus-engine check bench-quick conformance

help:
	@echo "make install         pip install -e .[test] (the README's first half of the test command)"
	@echo "make lint            ruff check, ruff format --check, import contracts (when configured)"
	@echo "make types           mypy --strict over convdb, tests, benchmarks and tools"
	@echo "make test            the whole test suite (python -m pytest), as the README says"
	@echo "make test-pgbouncer  the database tests again, every store through PgBouncer"
	@echo "make test-citus      the database tests again on a 3-node Citus cluster (what CI runs; .ci/citus.sh builds Citus)"
	@echo "make test-citus-engine  the Citus-only tests on that cluster (a quick subset of test-citus)"
	@echo "make check           lint, types, test, test-pgbouncer, conformance: what CI runs (with the Citus tests)"
	@echo "make bench-quick     the three-minute benchmark on the embedded server (needs .[bench])"
	@echo "make conformance     the frameworks' own test suites against the adapters (.[conformance])"

install:
	python -m pip install -e ".[test]"

lint:
	ruff check .
	ruff format --check .
	@if grep -q "^\[tool.importlinter\]" pyproject.toml; then echo lint-imports; lint-imports; fi

types:
	mypy --strict convdb tests benchmarks tools

# The README's test command is `make install` then this, verbatim (tests/unit/test_toolchain.py).
test:
	python -m pytest

# The schema-lifecycle tests build databases of their own with psql and never use the store
# fixture, so a second run through PgBouncer or on Citus would only repeat the first.
RERUN_SKIPS = --ignore=tests/schema/test_schema_migrations.py --ignore=tests/schema/test_schema_rolling.py \
	--ignore=tests/schema/test_schema_cli.py

# Every `store` fixture through PgBouncer in transaction mode (statement_cache_size=0); the tests
# start PgBouncer themselves. The fault and property tests build their own stores against servers
# they control and are not repeated. Markers come from the folders (tests/conftest.py).
test-pgbouncer:
	CONVDB_TEST_PGBOUNCER=1 python -m pytest -m "db and not slow and not faults and not property" $(RERUN_SKIPS)

check: lint types test test-pgbouncer conformance

bench-quick:
	mkdir -p build
	python -m benchmarks --quick --json build/bench-quick.json --plot build/bench-quick.png

# The database tests again on a 3-node Citus cluster (CONVDB_TEST_CITUS_DSN, else a local cluster the
# tests start from the Citus installation .ci/citus.sh builds). The fault tests run on a
# server of their own and are not repeated; the property tests are (they clone on every node).
test-citus:
	CONVDB_TEST_CITUS=1 python -m pytest -m "db and not slow and not faults" $(RERUN_SKIPS)

# The frameworks' own published tests (OpenAI Agents SDK 0.24.0, langchain-core 1.8.3,
# langchain-postgres 0.0.19, from their PyPI sdists, cached in $CONVDB_CONFORMANCE_CACHE, default
# ~/.cache/convdb-conformance) against the adapters, as parallel pytest processes
# (CONVDB_CONFORMANCE_JOBS at a time); not_applicable.toml lists what cannot apply. Needs the
# conformance extra. CI runs it (.ci/run). Google ADK, LlamaIndex and Pydantic AI publish no tests
# in their sdists: our tests of their interfaces run in `make test`.
conformance:
	python -m pip install -e ".[conformance]"
	python -m tests.conformance

# The Citus-only tests alone (one router task per conversation-scoped statement, EXPLAIN twins,
# user-wide correctness across shards, schema_citus.sql and the command's output, a batch killed on
# its worker backend): a quick subset of test-citus, which CI runs whole.
test-citus-engine:
	CONVDB_TEST_CITUS=1 python -m pytest tests/core/test_citus.py
