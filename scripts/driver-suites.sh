#!/usr/bin/env bash
# Runs the psycopg2 and asyncpg test suites twice against a throwaway PostgreSQL 15: once
# directly and once through `tokengate serve` (pure relay), then prints, per suite,
# passed/failed/errors/skipped for both runs and the tests whose outcome differs.
#
# Not part of CI (.ci/run): it takes minutes. Usage:
#   scripts/driver-suites.sh              # the default subset of each suite (see below)
#   SUITE_SUBSET=all MODE=tls scripts/driver-suites.sh
#
# MODE (default plain):
#   plain  PostgreSQL without TLS, trust auth; the drivers run with sslmode=disable.
#   tls    PostgreSQL with ssl=on (a throwaway CA and certificates made at run time in the
#          temp dir, removed at exit), tokengate's upstream leg in TLS (sslmode=require) and its
#          client leg with its own certificate; the drivers keep their DEFAULT sslmode
#          (prefer), so both runs use TLS. Trust auth.
#   scram  tls, plus scram-sha-256 auth for TCP logins (the drivers get PGPASSWORD) and
#          tokengate terminating SCRAM with an auth_query lookup (libpq's default
#          channel_binding=prefer then binds to tokengate's certificate).
# REPEAT=N runs the selected tests N times, alternating direct and through tokengate on the
# same server, and prints per test how often it failed each way (for timing-dependent tests,
# e.g. SUITES=asyncpg SUITE_PYTEST_ARGS="-k server_failure_during_writes" REPEAT=40).
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
MODE=${MODE:-plain}
REPEAT=${REPEAT:-1}
case $MODE in plain | tls | scram) ;; *) echo "MODE must be plain, tls or scram" >&2; exit 2 ;; esac

PSYCOPG2_SUBSET=${PSYCOPG2_SUBSET:-"test_connection test_cursor test_extras_dictcursor test_copy test_notify
  test_cancel test_async test_transaction test_types_basic test_errors test_with"}
ASYNCPG_SUBSET=${ASYNCPG_SUBSET:-"test_connect test_execute test_prepare test_copy test_listeners
  test_cancellation test_cursor test_pool test_transaction test_timeout test_adversity"}

WORK=$(mktemp -d /tmp/tg-suites.XXXXXX)
chmod 755 "$WORK"
PG_PID=""
TG_PID=""
cleanup() {
  trap - EXIT INT TERM PIPE
  [ -n "$TG_PID" ] && kill "$TG_PID" 2>/dev/null || true
  # The postmaster itself (PG_PID may be runuser, which does not always pass the signal on).
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    kill -INT "$(head -1 "$WORK/pg/data/postmaster.pid")" 2>/dev/null || true
  fi
  [ -n "$PG_PID" ] && kill -INT "$PG_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    { [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; } || break
    sleep 0.2
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM PIPE

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
# TLS: a throwaway CA signing one certificate for PostgreSQL and one for tokengate's client leg.
make_cert() { # $1 = name; writes $1.crt and $1.key in $WORK/tls, signed by the CA there
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/tls/$1.key" \
    -out "$WORK/tls/$1.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/tls/$1.ext"
  openssl x509 -req -in "$WORK/tls/$1.csr" -CA "$WORK/tls/ca.crt" -CAkey "$WORK/tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/tls/$1.ext" -out "$WORK/tls/$1.crt" >/dev/null 2>&1
}
if [ "$MODE" != plain ]; then
  mkdir -p "$WORK/tls"
  openssl req -x509 -new -newkey rsa:2048 -nodes -subj "/CN=tokengate suites CA" -days 2 \
    -keyout "$WORK/tls/ca.key" -out "$WORK/tls/ca.crt" >/dev/null 2>&1
  make_cert pg
  make_cert tokengate
  cp "$WORK/tls/pg.crt" "$WORK/tls/pg.key" "$WORK/pg/data/"
  chmod 600 "$WORK/pg/data/pg.key"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK/pg/data/pg.crt" "$WORK/pg/data/pg.key"; fi
  cat >>"$WORK/pg/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = 'pg.crt'
ssl_key_file = 'pg.key'
EOF
fi
SUPER_PW=suites-pw
AUTH_PW=suites-auth-pw
if [ "$MODE" = scram ]; then
  cat >"$WORK/pg/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
fi
"${AS_PG[@]}" env LC_ALL=C "$PG_BINDIR/postgres" -D "$WORK/pg/data" >"$WORK/pg/server.log" 2>&1 &
PG_PID=$!
for _ in $(seq 1 100); do
  "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.1
done
psql_pg() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$PG_PORT" -U postgres "$@"; }
psql_pg -d postgres -c "CREATE DATABASE psycopg2_test" >/dev/null
psql_pg -d psycopg2_test -c "CREATE EXTENSION hstore" >/dev/null
if [ "$MODE" = scram ]; then
  # The lookup function of the README, except that it also returns superusers: the suites log
  # in as `postgres`.
  psql_pg -d postgres >/dev/null <<EOF
ALTER ROLE postgres PASSWORD '$SUPER_PW';
CREATE ROLE tokengate_auth LOGIN PASSWORD '$AUTH_PW';
CREATE SCHEMA tokengate;
CREATE FUNCTION tokengate.get_auth(p_usename text, OUT usename name, OUT passwd text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
  \$\$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = p_usename AND rolcanlogin \$\$;
REVOKE ALL ON FUNCTION tokengate.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA tokengate TO tokengate_auth;
GRANT EXECUTE ON FUNCTION tokengate.get_auth(text) TO tokengate_auth;
EOF
fi

# --- tokengate -----------------------------------------------------------------------------------
TOKENGATE_BIN=${TOKENGATE_BIN:-$ROOT/target/debug/tokengate}
if [ ! -x "$TOKENGATE_BIN" ]; then (cd "$ROOT" && cargo build --bin tokengate); fi
TG_PORT=$(free_port)
TG_ARGS=(--listen "127.0.0.1:$TG_PORT" --admin off)
CLIENT_ENV=(PGSSLMODE=disable)
case $MODE in
  plain) TG_ARGS+=(--upstream "postgres://127.0.0.1:$PG_PORT?sslmode=disable") ;;
  tls | scram)
    TG_ARGS+=(--upstream "postgres://127.0.0.1:$PG_PORT?sslmode=require"
      --tls-cert "$WORK/tls/tokengate.crt" --tls-key "$WORK/tls/tokengate.key")
    CLIENT_ENV=() ;;
esac
if [ "$MODE" = scram ]; then
  TG_ARGS+=(--auth-user tokengate_auth --auth-dbname postgres
    --auth-query 'SELECT usename, passwd FROM tokengate.get_auth($1)')
  CLIENT_ENV+=(PGPASSWORD="$SUPER_PW")
fi
TOKENGATE_AUTH_PASSWORD=$AUTH_PW "$TOKENGATE_BIN" serve "${TG_ARGS[@]}" >"$WORK/tokengate.log" 2>&1 &
TG_PID=$!
for _ in $(seq 1 100); do
  "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$TG_PORT" && break
  sleep 0.1
done

# What the mode means, checked with a libpq client at the drivers' settings: the client leg's
# TLS as libpq reports it, and the upstream leg's TLS as the server sees it.
leg_check() { # $1 = port
  env "${CLIENT_ENV[@]}" "$PG_BINDIR/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres \
    -c '\conninfo' -c "SELECT 'server sees ' || CASE WHEN ssl THEN version ELSE 'no TLS' END
       FROM pg_stat_ssl WHERE pid = pg_backend_pid()" 2>&1 | sed -n 's/.*\(SSL connection ([^,]*\).*/\1)/p; /server sees/p' | tr '\n' ' '
}
echo "== mode $MODE; direct: $(leg_check "$PG_PORT"); through tokengate: $(leg_check "$TG_PORT")" >&2
if [ "$MODE" = scram ]; then
  # tokengate terminated that login: its auth_query connection stays open for the next one.
  echo "== auth_query connections open: $(psql_pg -d postgres -At -c \
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokengate-auth'")" >&2
fi

# --- running ------------------------------------------------------------------------------------
modules() { # $1 = tests dir, $2 = default subset
  if [ "$SUITE_SUBSET" = all ]; then
    (cd "$1" && ls test_*.py)
  else
    for m in $2; do echo "$m.py"; done
  fi
}

run_suite() { # $1 = suite, $2 = way (direct|tokengate), $3 = port, $4 = run number
  local suite=$1 mode=$2 port=$3 dir subset
  local tag=$suite-$mode${4:+-$4}
  case $suite in
    psycopg2) dir=$PSYCOPG2_TESTS; subset=$PSYCOPG2_SUBSET ;;
    asyncpg) dir=$ASYNCPG_TESTS; subset=$ASYNCPG_SUBSET ;;
  esac
  local files=()
  while read -r f; do files+=("$dir/$f"); done < <(modules "$dir" "$subset")
  echo "== $suite $mode${4:+ run $4} (port $port): ${#files[@]} modules" >&2
  # psycopg2 reads PSYCOPG2_TESTDB_*; asyncpg uses an existing cluster when PGHOST is set.
  (cd "$(dirname "$dir")" && \
    PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 PSYCOPG2_TESTDB_PORT=$port \
    PSYCOPG2_TESTDB_USER=postgres PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres \
    PGDATABASE=postgres env "${CLIENT_ENV[@]}" \
    timeout "$SUITE_TIMEOUT" python3 -m pytest -p no:cacheprovider -q --timeout=120 \
      --junitxml="$WORK/$tag.xml" ${SUITE_PYTEST_ARGS:-} "${files[@]}" >"$WORK/$tag.out" 2>&1) || true
  grep -E '^=* ?[0-9]+ (passed|failed|error|skipped)|in [0-9.]+s' "$WORK/$tag.out" | tail -1 >&2 || true
}

OUT=${DRIVER_SUITES_OUT:-}
for suite in $SUITES; do
  if [ "$REPEAT" -gt 1 ]; then
    for i in $(seq 1 "$REPEAT"); do
      run_suite "$suite" direct "$PG_PORT" "$i"
      run_suite "$suite" tokengate "$TG_PORT" "$i"
    done
  else
    run_suite "$suite" direct "$PG_PORT"
    run_suite "$suite" tokengate "$TG_PORT"
  fi
  if [ -n "$OUT" ]; then mkdir -p "$OUT"; cp "$WORK/$suite"-*.xml "$WORK/$suite"-*.out "$OUT"/ 2>/dev/null || true; fi
done

python3 - "$WORK" "$REPEAT" "$MODE" $SUITES <<'EOF'
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

work, repeat, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print()
if repeat > 1:
    # Per test: in how many runs it did not pass, each way.
    print(f"mode {mode}, {repeat} runs each way, interleaved; tests that did not pass every time:")
    for suite in sys.argv[4:]:
        bad = {}
        for i in range(1, repeat + 1):
            for way in ("direct", "tokengate"):
                r = outcomes(f"{work}/{suite}-{way}-{i}.xml")
                for n, o in (r or {"(no result)": "error"}).items():
                    if o in ("failed", "error"):
                        bad.setdefault(n, {"direct": 0, "tokengate": 0})[way] += 1
        for n, c in sorted(bad.items()):
            print(f"  {suite} {n}: direct {c['direct']}/{repeat}, tokengate {c['tokengate']}/{repeat}")
        if not bad:
            print(f"  {suite}: none")
    sys.exit(0)
print(f"mode {mode}")
print(f'{"suite":10} {"via":10} {"passed":>7} {"failed":>7} {"errors":>7} {"skipped":>8}')
for suite in sys.argv[4:]:
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
