#!/usr/bin/env bash
# Runs the psycopg2 and asyncpg test suites twice against a throwaway PostgreSQL 15: once
# directly and once through `tokengate serve` (pure relay, plain upstream), then prints, per
# suite, passed/failed/errors/skipped for both runs and the tests whose outcome differs.
#
# Not part of CI (.ci/run): it takes minutes. Usage:
#   scripts/driver-suites.sh              # the default subset of each suite (see below)
#   SUITE_SUBSET=all scripts/driver-suites.sh
#
# Environment:
#   PSYCOPG2_TESTS  psycopg2 sdist `tests/` dir (default: downloaded with pip into $SUITES_CACHE)
#   ASYNCPG_TESTS   asyncpg sdist `tests/` dir (default: likewise)
#   SUITES_CACHE    download cache (default: ~/.cache/tokengate-driver-suites)
#   TOKENGATE_BIN   tokengate binary (default: target/debug/tokengate, built if missing)
#   PG_BINDIR       PostgreSQL binaries (default: /usr/lib/postgresql/15/bin)
#   SUITE_TIMEOUT   seconds per suite run (default: 900)
#   SUITES          which suites (default: "psycopg2 asyncpg")
#   PSYCOPG2_SUBSET, ASYNCPG_SUBSET  test modules to run (default: the lists below)
#   SUITE_PYTEST_ARGS  extra pytest arguments, e.g. "-k server_failure_during_writes"
#   DRIVER_SUITES_OUT  keep the junit XML and pytest output there
# Needs python3 with pytest, pytest-timeout, psycopg2 (or psycopg2-binary) and asyncpg installed;
# the suites' versions should match the installed drivers' versions.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
SUITES_CACHE=${SUITES_CACHE:-$HOME/.cache/tokengate-driver-suites}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}
SUITES=${SUITES:-psycopg2 asyncpg}
SUITE_SUBSET=${SUITE_SUBSET:-default}

PSYCOPG2_SUBSET=${PSYCOPG2_SUBSET:-"test_connection test_cursor test_extras_dictcursor test_copy test_notify
  test_cancel test_async test_transaction test_types_basic test_errors test_with"}
ASYNCPG_SUBSET=${ASYNCPG_SUBSET:-"test_connect test_execute test_prepare test_copy test_listeners
  test_cancellation test_cursor test_pool test_transaction test_timeout test_adversity"}

WORK=$(mktemp -d /tmp/tg-suites.XXXXXX)
chmod 755 "$WORK"
PG_PID=""
TG_PID=""
cleanup() {
  [ -n "$TG_PID" ] && kill "$TG_PID" 2>/dev/null || true
  [ -n "$PG_PID" ] && kill -INT "$PG_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    { [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; } || break
    sleep 0.2
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the driver suites -------------------------------------------------------------------------
fetch_sdist() { # $1 = package; prints the extracted sdist dir
  local pkg=$1 ver dir
  ver=$(python3 -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null \
    || python3 -c "import importlib.metadata as m; print(m.version('$pkg-binary'))")
  dir="$SUITES_CACHE/$pkg-$ver"
  if [ ! -d "$dir/tests" ]; then
    mkdir -p "$SUITES_CACHE"
    # asyncpg's sdist fails pip's metadata step, but pip has already fetched the archive by then:
    # keep it from pip's unpack dir.
    local log="$SUITES_CACHE/pip-$pkg.log"
    pip download -v --no-deps --no-binary :all: --no-build-isolation -d "$SUITES_CACHE" \
      "$pkg==$ver" >"$log" 2>&1 || true
    local tgz="$SUITES_CACHE/$pkg-$ver.tar.gz"
    if [ ! -f "$tgz" ]; then
      local tmp
      tmp=$(grep -o "/tmp/pip-unpack-[^ ]*/$pkg-$ver.tar.gz" "$log" | head -1 || true)
      [ -z "$tmp" ] && tmp=$(find /tmp -maxdepth 2 -path "/tmp/pip-unpack-*/$pkg-$ver.tar.gz" 2>/dev/null | head -1)
      [ -n "$tmp" ] && [ -f "$tmp" ] && cp "$tmp" "$tgz"
    fi
    [ -f "$tgz" ] || { echo "could not download the $pkg $ver sdist (see $log)" >&2; exit 1; }
    tar xzf "$tgz" -C "$SUITES_CACHE"
  fi
  echo "$dir"
}

if [[ " $SUITES " == *" psycopg2 "* ]] && [ -z "${PSYCOPG2_TESTS:-}" ]; then
  PSYCOPG2_TESTS="$(fetch_sdist psycopg2)/tests"
fi
if [[ " $SUITES " == *" asyncpg "* ]] && [ -z "${ASYNCPG_TESTS:-}" ]; then
  ASYNCPG_TESTS="$(fetch_sdist asyncpg)/tests"
fi

# asyncpg's sdist holds the uncompiled `asyncpg/` package beside `tests/`; run a copy of `tests/`
# alone so the installed (compiled) driver is the one imported.
if [ -n "${ASYNCPG_TESTS:-}" ]; then
  mkdir -p "$WORK/asyncpg"
  cp -r "$ASYNCPG_TESTS" "$WORK/asyncpg/tests"
  ASYNCPG_TESTS="$WORK/asyncpg/tests"
fi

# --- PostgreSQL ----------------------------------------------------------------------------------
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); fi
PG_PORT=$(free_port)
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
"${AS_PG[@]}" env LC_ALL=C "$PG_BINDIR/initdb" -D "$WORK/pg/data" -U postgres -E UTF8 \
  --no-locale --no-sync --auth=trust >"$WORK/initdb.log" 2>&1
cat >>"$WORK/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pg'
fsync = off
max_connections = 200
max_prepared_transactions = 10
EOF
"${AS_PG[@]}" env LC_ALL=C "$PG_BINDIR/postgres" -D "$WORK/pg/data" >"$WORK/pg/server.log" 2>&1 &
PG_PID=$!
for _ in $(seq 1 100); do
  "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.1
done
psql_pg() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
psql_pg -d postgres -c "CREATE DATABASE psycopg2_test" >/dev/null
psql_pg -d psycopg2_test -c "CREATE EXTENSION hstore" >/dev/null

# --- tokengate -----------------------------------------------------------------------------------
TOKENGATE_BIN=${TOKENGATE_BIN:-$ROOT/target/debug/tokengate}
if [ ! -x "$TOKENGATE_BIN" ]; then (cd "$ROOT" && cargo build --bin tokengate); fi
TG_PORT=$(free_port)
"$TOKENGATE_BIN" serve --upstream "postgres://127.0.0.1:$PG_PORT?sslmode=disable" \
  --listen "127.0.0.1:$TG_PORT" --admin off >"$WORK/tokengate.log" 2>&1 &
TG_PID=$!
for _ in $(seq 1 100); do
  "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$TG_PORT" && break
  sleep 0.1
done

# --- running ------------------------------------------------------------------------------------
modules() { # $1 = tests dir, $2 = default subset
  if [ "$SUITE_SUBSET" = all ]; then
    (cd "$1" && ls test_*.py)
  else
    for m in $2; do echo "$m.py"; done
  fi
}

run_suite() { # $1 = suite, $2 = mode (direct|tokengate), $3 = port
  local suite=$1 mode=$2 port=$3 dir subset
  case $suite in
    psycopg2) dir=$PSYCOPG2_TESTS; subset=$PSYCOPG2_SUBSET ;;
    asyncpg) dir=$ASYNCPG_TESTS; subset=$ASYNCPG_SUBSET ;;
  esac
  local files=()
  while read -r f; do files+=("$dir/$f"); done < <(modules "$dir" "$subset")
  echo "== $suite $mode (port $port): ${#files[@]} modules" >&2
  # psycopg2 reads PSYCOPG2_TESTDB_*; asyncpg uses an existing cluster when PGHOST is set.
  (cd "$(dirname "$dir")" && \
    PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 PSYCOPG2_TESTDB_PORT=$port \
    PSYCOPG2_TESTDB_USER=postgres PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres \
    PGDATABASE=postgres PGSSLMODE=disable \
    timeout "$SUITE_TIMEOUT" python3 -m pytest -p no:cacheprovider -q --timeout=120 \
      --junitxml="$WORK/$suite-$mode.xml" ${SUITE_PYTEST_ARGS:-} "${files[@]}" >"$WORK/$suite-$mode.out" 2>&1) || true
  grep -E '^=* ?[0-9]+ (passed|failed|error|skipped)|in [0-9.]+s' "$WORK/$suite-$mode.out" | tail -1 >&2 || true
}

OUT=${DRIVER_SUITES_OUT:-}
for suite in $SUITES; do
  run_suite "$suite" direct "$PG_PORT"
  run_suite "$suite" tokengate "$TG_PORT"
  if [ -n "$OUT" ]; then mkdir -p "$OUT"; cp "$WORK/$suite"-*.xml "$WORK/$suite"-*.out "$OUT"/ 2>/dev/null || true; fi
done

python3 - "$WORK" $SUITES <<'EOF'
import sys, os
import xml.etree.ElementTree as ET

def outcomes(path):
    res = {}
    if not os.path.exists(path):
        return None
    for tc in ET.parse(path).getroot().iter("testcase"):
        name = f'{tc.get("classname")}::{tc.get("name")}'
        kinds = [c.tag for c in tc]
        if "error" in kinds:
            o = "error"
        elif "failure" in kinds:
            o = "failed"
        elif "skipped" in kinds:
            o = "skipped"
        else:
            o = "passed"
        res[name] = o
    return res

work = sys.argv[1]
print()
print(f'{"suite":10} {"via":10} {"passed":>7} {"failed":>7} {"errors":>7} {"skipped":>8}')
for suite in sys.argv[2:]:
    runs = {m: outcomes(f"{work}/{suite}-{m}.xml") for m in ("direct", "tokengate")}
    for m, r in runs.items():
        if r is None:
            print(f"{suite:10} {m:10} no result (timed out or crashed)")
            continue
        c = {k: sum(1 for v in r.values() if v == k) for k in ("passed", "failed", "error", "skipped")}
        print(f'{suite:10} {m:10} {c["passed"]:7} {c["failed"]:7} {c["error"]:7} {c["skipped"]:8}')
    d, t = runs["direct"] or {}, runs["tokengate"] or {}
    diff = sorted(n for n in set(d) | set(t) if d.get(n) != t.get(n))
    for n in diff:
        print(f"  differs: {n}: direct={d.get(n, 'absent')} tokengate={t.get(n, 'absent')}")
EOF
