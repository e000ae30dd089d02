#!/usr/bin/env bash
# CI: make Citus available to the PostgreSQL 15 server the Citus-mode tests start
# (convdb/testing/citus.py). Citus is a test dependency (AGPL-3.0), built on the machine from the
# release tarball beside the repository, never part of the package.
#
# The `make install DESTDIR=` tree is cached under $CONVDB_CITUS_CACHE/<version>-<pg version>, so a
# second run only copies it into place (about 15 s instead of a ~3-minute build on 2 cores).
#
# Environment overrides:
#   CONVDB_CITUS_SRC     directory holding citus-<version>.tar.gz and the compat patch
#                        (default: <parent of the repo>/shared/citus)
#   CONVDB_CITUS_VERSION release to build (default 13.2.2)
#   CONVDB_CITUS_CACHE   cache root (default /var/cache/convdb-citus)
#   PG_CONFIG            pg_config of the target server (default: Debian's PostgreSQL 15)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
src_dir="${CONVDB_CITUS_SRC:-$(dirname "$repo")/shared/citus}"
version="${CONVDB_CITUS_VERSION:-13.2.2}"
cache_root="${CONVDB_CITUS_CACHE:-/var/cache/convdb-citus}"
pg_config="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Build dependencies (server-dev also brings the matching server binaries).
need=()
for pkg in postgresql-server-dev-15 liblz4-dev libzstd-dev libkrb5-dev gcc make patch; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

pg_version="$("$pg_config" --version | awk '{print $2}')"
pkglibdir="$("$pg_config" --pkglibdir)"
sharedir="$("$pg_config" --sharedir)"
cache="$cache_root/$version-pg$pg_version"

# Installed already when the server's citus.so is the cached build's.
if [ -f "$cache/.complete" ] && cmp -s "$pkglibdir/citus.so" "$cache$pkglibdir/citus.so" \
    && [ -f "$sharedir/extension/citus.control" ]; then
    echo "citus.sh: Citus $version already installed for PostgreSQL $pg_version"
    exit 0
fi

if [ ! -f "$cache/.complete" ]; then
    tarball="$src_dir/citus-$version.tar.gz"
    if [ ! -f "$tarball" ]; then
        echo "citus.sh: $tarball not found; set CONVDB_CITUS_SRC to the directory holding it" >&2
        exit 1
    fi
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    tar -xzf "$tarball" -C "$build"
    cd "$build/citus-$version"
    # PostgreSQL 15.20 exports have_createdb_privilege(), which Citus 13.2.2 also defines.
    patch_file="$src_dir/citus-pg15.20-compat.patch"
    if [ -f "$patch_file" ] && ! grep -q citus_compat_have_createdb_privilege src/include/pg_version_compat.h; then
        patch -p1 --forward <"$patch_file"
    fi
    ./configure PG_CONFIG="$pg_config" --without-libcurl >configure.log
    make -j"$(nproc)" with_llvm=no >make.log
    rm -rf "$cache.tmp"
    $SUDO mkdir -p "$cache.tmp"
    $SUDO make install with_llvm=no DESTDIR="$cache.tmp" >install.log
    $SUDO touch "$cache.tmp/.complete"
    $SUDO rm -rf "$cache"
    $SUDO mv "$cache.tmp" "$cache"
    cd "$repo"
fi

# Install the cached tree into / (it holds only Citus' own files under PostgreSQL's directories).
$SUDO tar -C "$cache" --exclude=./.complete -cf - . | $SUDO tar -C / --no-overwrite-dir -xf -
echo "citus.sh: Citus $version installed for PostgreSQL $pg_version"
