"""The sdist and the wheel carry the schema: build both (the wheel from the sdist, as pip does for
a user) and compare the packaged files with the top-level ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import convdb

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    "pyproject.toml",
    "README.md",
    "MANIFEST.in",
    "CHANGELOG.md",
    "schema.sql",
    "schema_rls.sql",
    "schema_citus.sql",
    "schema_search.sql",
]


def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def test_sdist_and_wheel_carry_the_schema_files(tmp_path: Path) -> None:
    # A clean copy: building in the worktree would leave build/ and *.egg-info behind.
    tree = tmp_path / "src"
    tree.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, tree / name)
    if (ROOT / "docs").exists():
        shutil.copytree(ROOT / "docs", tree / "docs")
    shutil.copytree(ROOT / "convdb", tree / "convdb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        tree,
    )
    (sdist,) = dist.glob("convdb-*.tar.gz")
    assert sdist.name == f"convdb-{convdb.__version__}.tar.gz"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(sdist)], tmp_path
    )
    (wheel,) = dist.glob("convdb-*.whl")
    assert wheel.name.startswith(f"convdb-{convdb.__version__}-")

    migrations = sorted(e.name for e in (resources.files("convdb.sql") / "migrations").iterdir())
    assert migrations, "no migrations in the source tree"
    packaged = {
        f"convdb/sql/{name}": ROOT / name
        for name in ("schema.sql", "schema_rls.sql", "schema_citus.sql", "schema_search.sql")
    }
    packaged |= {f"convdb/sql/migrations/{m}": ROOT / "convdb" / "sql" / "migrations" / m for m in migrations}

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for inside, source in packaged.items():
            assert inside in names, f"the wheel lacks {inside}"
            assert whl.read(inside) == source.read_bytes(), f"{inside} in the wheel differs from {source}"
        assert set(n for n in names if n.startswith("convdb/sql/migrations/")) == {
            f"convdb/sql/migrations/{m}" for m in migrations
        }
        metadata = whl.read(f"convdb-{convdb.__version__}.dist-info/METADATA").decode()
        assert f"\nVersion: {convdb.__version__}\n" in metadata

    top = f"convdb-{convdb.__version__}"
    with tarfile.open(sdist) as tar:
        in_sdist = {
            f"{top}/{name}": ROOT / name
            for name in ("schema.sql", "schema_rls.sql", "schema_citus.sql", "CHANGELOG.md")
        }
        in_sdist |= {f"{top}/{inside}": source for inside, source in packaged.items()}
        for inside, source in in_sdist.items():
            member = tar.extractfile(inside)
            assert member is not None, f"the sdist lacks {inside}"
            assert member.read() == source.read_bytes(), f"{inside} in the sdist differs from {source}"
