#!/usr/bin/env bash
# deploy/local/unleash.sh — a real Unleash server (the unleash-server npm package)
# with its own PostgreSQL (Debian's), both on 127.0.0.1, for chaosgate's tests, CI
# and local development. Run with --help for usage.
set -euo pipefail

UNLEASH_VERSION="${UNLEASH_VERSION:-7.5.1}"
UNLEASH_PORT="${UNLEASH_PORT:-14242}"
UNLEASH_PG_PORT="${UNLEASH_PG_PORT:-15432}"
UNLEASH_ADMIN_TOKEN="${UNLEASH_ADMIN_TOKEN:-*:*.chaosgate-dev-admin-token}"
START_TIMEOUT="${UNLEASH_START_TIMEOUT:-90}"
STOP_TIMEOUT="${UNLEASH_STOP_TIMEOUT:-20}"
PG_BIN="${UNLEASH_PG_BIN:-/usr/lib/postgresql/15/bin}"
HOST=127.0.0.1
PG_USER=unleash
PG_DB=unleash

CACHE_ROOT="${CHAOSGATE_CACHE:-${HOME:-/tmp}/.cache/chaosgate}"
UNLEASH_CACHE="${CACHE_ROOT}/unleash"
INSTALL_DIR="${UNLEASH_CACHE}/${UNLEASH_VERSION}"
SERVER_JS="${INSTALL_DIR}/node_modules/unleash-server/dist/server.js"
# PostgreSQL refuses to run as root, so as root it runs as user 'postgres', whose
# data dir must be reachable by it: not under /root (0700), hence /tmp.
if [[ "$(id -u)" == 0 ]]; then
  DEFAULT_RUN_DIR="/tmp/chaosgate-unleash-run"
else
  DEFAULT_RUN_DIR="${UNLEASH_CACHE}/run"
fi
RUN_DIR="${UNLEASH_RUN_DIR:-${DEFAULT_RUN_DIR}}"
PG_DATA="${RUN_DIR}/pg"
PG_SOCK="${RUN_DIR}/sock"
PG_LOG="${RUN_DIR}/pg.log"
LOG_FILE="${RUN_DIR}/unleash.log"
PID_FILE="${RUN_DIR}/unleash.pid"
# Marks our Unleash process on its command line (Unleash ignores extra arguments), so
# that 'stop' and 'status' find exactly the server this run dir started.
MARK="--chaosgate-run-dir=${RUN_DIR}"

UNLEASH_URL_VALUE="http://${HOST}:${UNLEASH_PORT}"
PG_URL="postgres://${PG_USER}@${HOST}:${UNLEASH_PG_PORT}"

usage() {
  cat <<EOF
Usage: deploy/local/unleash.sh COMMAND

Unleash ${UNLEASH_VERSION} (npm package unleash-server) and its PostgreSQL 15 (Debian's),
both on 127.0.0.1. No Docker needed.

Commands:
  start            Install unleash-server@${UNLEASH_VERSION} from npm (first time only),
                   create PostgreSQL's data dir (first time only), start PostgreSQL,
                   create the '${PG_DB}' database, start Unleash with the admin token
                   UNLEASH_ADMIN_TOKEN and wait until GET /health answers.
                   Reuses the servers this script already started if they answer.
  stop             Stop Unleash (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s) and PostgreSQL.
  restart          stop, then start.
  status           Say whether both run and answer. Exit 0 if so, 3 if neither
                   runs, 1 otherwise.
  logs [pg] [-f] [N]
                   Print the last N (default 200) lines of Unleash's log (or
                   PostgreSQL's with 'pg'); -f follows it.
  env              Print the variables the tests read:
                     export UNLEASH_URL=${UNLEASH_URL_VALUE}
                     export UNLEASH_ADMIN_TOKEN=<the admin token>
                     export UNLEASH_PG_URL=${PG_URL}
                     export UNLEASH_SERVER_JS=${SERVER_JS}
                   (use: eval "\$(deploy/local/unleash.sh env)")
  clean            stop, then delete the run dir (databases and logs; the npm
                   install is kept).
  help, --help, -h This text.

Environment (defaults in brackets):
  UNLEASH_VERSION        [7.5.1]   unleash-server version to install and run
  UNLEASH_PORT           [14242]   Unleash's HTTP port on 127.0.0.1
  UNLEASH_PG_PORT        [15432]   PostgreSQL's port on 127.0.0.1 (user '${PG_USER}',
                                   trust authentication: a throwaway test database)
  UNLEASH_ADMIN_TOKEN    [*:*.chaosgate-dev-admin-token]
                                   admin API token seeded with INIT_ADMIN_API_TOKENS;
                                   changes made with it have createdBy "admin"
  CHAOSGATE_CACHE        [\$HOME/.cache/chaosgate]
                                   npm install in \$CHAOSGATE_CACHE/unleash/<version>
  UNLEASH_RUN_DIR        [/tmp/chaosgate-unleash-run as root, else
                          \$CHAOSGATE_CACHE/unleash/run]
                                   PostgreSQL's data dir and socket, the logs, the pid
  UNLEASH_PG_BIN         [/usr/lib/postgresql/15/bin]  initdb, pg_ctl, postgres
  UNLEASH_START_TIMEOUT  [90]      seconds to wait for /health
  UNLEASH_STOP_TIMEOUT   [20]      seconds to wait after SIGTERM before SIGKILL

Needs node >= 20 and npm (once, to install), PostgreSQL 15's server binaries
('apt-get install postgresql-15') and psql, and curl.
EOF
}

say() { printf 'unleash.sh: %s\n' "$*"; }
warn() { printf 'unleash.sh: %s\n' "$*" >&2; }
die() { printf 'unleash.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools, install

check_node() {
  command -v node >/dev/null 2>&1 ||
    die "node not found on PATH; Unleash ${UNLEASH_VERSION} needs Node.js >= 20 (e.g. 'apt-get install nodejs npm' on Debian 13, or nodesource)"
  local version major
  version="$(node --version 2>/dev/null || true)"
  major="${version#v}"
  major="${major%%.*}"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < 20 )); then
    die "$(command -v node) is Node.js ${version:-of unknown version}; Unleash ${UNLEASH_VERSION} needs Node.js >= 20"
  fi
}

check_pg() {
  [[ -x "${PG_BIN}/initdb" && -x "${PG_BIN}/pg_ctl" ]] ||
    die "PostgreSQL 15 server binaries not found in ${PG_BIN} (install 'postgresql-15', or set UNLEASH_PG_BIN)"
  command -v psql >/dev/null 2>&1 || die "psql not found on PATH (install 'postgresql-client')"
  command -v curl >/dev/null 2>&1 || die "curl not found on PATH (install 'curl')"
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "running as root, PostgreSQL must run as user 'postgres', which does not exist (install 'postgresql-15' or run as a normal user)"
  fi
}

install_unleash() {
  if [[ -f "${INSTALL_DIR}/.complete" && -f "${SERVER_JS}" ]]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 ||
    die "npm is needed once to install unleash-server@${UNLEASH_VERSION} into ${INSTALL_DIR} (e.g. 'apt-get install npm')"
  mkdir -p "${UNLEASH_CACHE}"
  local tmp started
  tmp="$(mktemp -d "${UNLEASH_CACHE}/.install.XXXXXX")"
  started=$SECONDS
  say "installing unleash-server@${UNLEASH_VERSION} from npm into ${INSTALL_DIR} (first time only)..."
  if ! npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error \
        "unleash-server@${UNLEASH_VERSION}" </dev/null >"${tmp}.log" 2>&1; then
    warn "npm install failed; last lines of its output:"
    tail -n 40 "${tmp}.log" >&2 || true
    rm -rf "$tmp" "${tmp}.log"
    die "could not install unleash-server@${UNLEASH_VERSION}"
  fi
  [[ -f "${tmp}/node_modules/unleash-server/dist/server.js" ]] ||
    { rm -rf "$tmp" "${tmp}.log"; die "npm ran but node_modules/unleash-server/dist/server.js is missing"; }
  rm -rf "${INSTALL_DIR}" "${tmp}.log"
  mv "$tmp" "${INSTALL_DIR}"
  date -u '+%FT%TZ' >"${INSTALL_DIR}/.complete"
  say "installed in $((SECONDS - started))s"
}

# ---------------------------------------------------------------- PostgreSQL

# Runs a PostgreSQL server binary as the user that owns the data dir.
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

psql_admin() {
  psql -X -q -v ON_ERROR_STOP=1 -h "${HOST}" -p "${UNLEASH_PG_PORT}" -U "${PG_USER}" -d postgres "$@"
}

pg_running() {
  [[ -f "${PG_DATA}/PG_VERSION" ]] && as_pg "${PG_BIN}/pg_ctl" -D "${PG_DATA}" status >/dev/null 2>&1
}

init_pg() {
  mkdir -p "${RUN_DIR}"
  if [[ "$(id -u)" == 0 ]]; then
    chmod 0755 "${RUN_DIR}"
  fi
  if [[ -f "${PG_DATA}/PG_VERSION" ]]; then
    return 0
  fi
  rm -rf "${PG_DATA}"
  mkdir -p "${PG_DATA}" "${PG_SOCK}"
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres: "${PG_DATA}" "${PG_SOCK}"
    touch "${PG_LOG}" && chown postgres: "${PG_LOG}"
  fi
  chmod 0700 "${PG_DATA}"
  say "creating PostgreSQL's data dir ${PG_DATA} (superuser '${PG_USER}', trust authentication)"
  local out
  if ! out="$(as_pg "${PG_BIN}/initdb" -D "${PG_DATA}" -U "${PG_USER}" --auth=trust -E UTF8 --locale=C.UTF-8 2>&1)"; then
    printf '%s\n' "$out" >&2
    rm -rf "${PG_DATA}"
    die "initdb failed"
  fi
}

start_pg() {
  if pg_running; then
    say "PostgreSQL already running (data dir ${PG_DATA})"
  else
    local user
    user="$(port_user "${UNLEASH_PG_PORT}")"
    [[ -z "$user" ]] ||
      die "port ${UNLEASH_PG_PORT} is already in use by something this script did not start (${user}); stop it, or pick another port with UNLEASH_PG_PORT"
    mkdir -p "${PG_SOCK}"
    if [[ "$(id -u)" == 0 ]]; then
      chown postgres: "${PG_SOCK}"
      touch "${PG_LOG}" && chown postgres: "${PG_LOG}"
    fi
    say "starting PostgreSQL on ${HOST}:${UNLEASH_PG_PORT}"
    if ! as_pg "${PG_BIN}/pg_ctl" -D "${PG_DATA}" -l "${PG_LOG}" -w -t 60 \
          -o "-p ${UNLEASH_PG_PORT} -k ${PG_SOCK} -c listen_addresses=${HOST} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
          start >/dev/null 9>&-; then
      warn "last lines of ${PG_LOG}:"
      tail -n 30 "${PG_LOG}" >&2 || true
      die "PostgreSQL did not start"
    fi
  fi
  if [[ "$(psql_admin -tA -c "select 1 from pg_database where datname = '${PG_DB}'")" != 1 ]]; then
    psql_admin -c "create database ${PG_DB}" || die "could not create database '${PG_DB}'"
    say "created database '${PG_DB}'"
  fi
}

stop_pg() {
  if pg_running; then
    say "stopping PostgreSQL (data dir ${PG_DATA})..."
    as_pg "${PG_BIN}/pg_ctl" -D "${PG_DATA}" -m fast -w -t 60 stop >/dev/null ||
      die "PostgreSQL did not stop (see ${PG_LOG})"
  fi
}

# ---------------------------------------------------------------- Unleash

cmdline_of() {
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
}

is_our_unleash() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cmdline_of "$pid")" == *"${SERVER_JS} ${MARK}"* ]]
}

unleash_pid() {
  local pid=""
  if [[ -f "${PID_FILE}" ]]; then
    pid="$(tr -d '[:space:]' <"${PID_FILE}")"
    if is_our_unleash "$pid"; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  local p
  for p in $(pgrep -f -- "${MARK}" 2>/dev/null || true); do
    if is_our_unleash "$p"; then
      printf '%s\n' "$p" >"${PID_FILE}"
      printf '%s\n' "$p"
      return 0
    fi
  done
  return 0
}

healthy() {
  [[ "$(curl -fsS --max-time 3 "${UNLEASH_URL_VALUE}/health" 2>/dev/null || true)" == *'"GOOD"'* ]]
}

port_user() {
  local port=$1 line pid
  line="$(ss -Hltnp "sport = :${port}" 2>/dev/null | head -n 1 || true)"
  [[ -n "$line" ]] || return 0
  pid="$(grep -o 'pid=[0-9]*' <<<"$line" | head -n 1 | cut -d= -f2 || true)"
  if [[ -n "$pid" ]]; then
    printf 'pid %s: %s' "$pid" "$(cmdline_of "$pid" | cut -c1-200)"
  else
    printf '%s' "$(awk '{print $4}' <<<"$line")"
  fi
}

wait_healthy() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ! healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      warn "Unleash (pid ${pid}) exited during start-up; last lines of ${LOG_FILE}:"
      tail -n 40 "${LOG_FILE}" >&2 || true
      rm -f "${PID_FILE}"
      return 1
    fi
    if (( SECONDS >= deadline )); then
      warn "Unleash (pid ${pid}) did not answer ${UNLEASH_URL_VALUE}/health within ${START_TIMEOUT}s; last lines of ${LOG_FILE}:"
      tail -n 40 "${LOG_FILE}" >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

start_unleash() {
  local pid
  pid="$(unleash_pid)"
  if [[ -n "$pid" ]]; then
    say "Unleash started by this script is already running (pid ${pid}); checking /health..."
    wait_healthy "$pid" || die "the running Unleash (pid ${pid}) does not answer; try 'deploy/local/unleash.sh stop' then start"
    return 0
  fi
  local user
  user="$(port_user "${UNLEASH_PORT}")"
  [[ -z "$user" ]] ||
    die "port ${UNLEASH_PORT} is already in use by something this script did not start (${user}); stop it, or pick another port with UNLEASH_PORT"
  rm -f "${PID_FILE}"
  if [[ -f "${LOG_FILE}" ]]; then mv -f "${LOG_FILE}" "${LOG_FILE}.1"; fi
  local launcher=()
  # Own session, so the caller's Ctrl-C does not take the server down with it.
  if command -v setsid >/dev/null 2>&1; then launcher=(setsid); fi
  (
    cd "${INSTALL_DIR}"
    export TZ=UTC \
      DATABASE_URL="${PG_URL}/${PG_DB}" DATABASE_SSL=false \
      HTTP_HOST="${HOST}" HTTP_PORT="${UNLEASH_PORT}" UNLEASH_URL="${UNLEASH_URL_VALUE}" \
      INIT_ADMIN_API_TOKENS="${UNLEASH_ADMIN_TOKEN}" \
      CHECK_VERSION=false SEND_TELEMETRY=false LOG_LEVEL="${UNLEASH_LOG_LEVEL:-warn}"
    exec "${launcher[@]}" nohup node "${SERVER_JS}" "${MARK}" </dev/null >>"${LOG_FILE}" 2>&1 9>&-
  ) &
  pid=$!
  local i
  for ((i = 0; i < 50; i++)); do
    is_our_unleash "$pid" && break
    sleep 0.1
  done
  if ! is_our_unleash "$pid"; then
    local found
    found="$(unleash_pid)"
    [[ -n "$found" ]] && pid="$found"
  fi
  printf '%s\n' "$pid" >"${PID_FILE}"
  say "started Unleash ${UNLEASH_VERSION} (pid ${pid}) on ${UNLEASH_URL_VALUE}; waiting for /health..."
  wait_healthy "$pid" || die "Unleash did not become healthy; see ${LOG_FILE} (stop with 'deploy/local/unleash.sh stop')"
}

stop_unleash() {
  local pid
  pid="$(unleash_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "${PID_FILE}"
    return 0
  fi
  say "stopping Unleash (pid ${pid})..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
    sleep 0.3
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "still alive after ${STOP_TIMEOUT}s; sending SIGKILL to pid ${pid}"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "${PID_FILE}"
  ! kill -0 "$pid" 2>/dev/null || die "pid ${pid} is still alive"
}

with_lock() {
  mkdir -p "${UNLEASH_CACHE}"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${UNLEASH_CACHE}/.lock"
    flock -w 300 9 || die "another unleash.sh is busy (lock ${UNLEASH_CACHE}/.lock held for 300s)"
  fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local t0=$SECONDS
  check_node
  check_pg
  with_lock
  install_unleash
  init_pg
  start_pg
  start_unleash
  say "ready after $((SECONDS - t0))s: Unleash at ${UNLEASH_URL_VALUE}, PostgreSQL at ${PG_URL} (logs: ${LOG_FILE}, ${PG_LOG})"
}

cmd_stop() {
  with_lock
  stop_unleash
  stop_pg
  say "stopped"
}

cmd_status() {
  local pid pg=0 rc
  pid="$(unleash_pid)"
  pg_running && pg=1
  if [[ -z "$pid" && "$pg" == 0 ]]; then
    say "not running (Unleash would be ${UNLEASH_URL_VALUE}, PostgreSQL ${PG_URL}; unleash-server $( [[ -f "${INSTALL_DIR}/.complete" ]] && echo "installed in ${INSTALL_DIR}" || echo "not installed yet"))"
    return 3
  fi
  rc=0
  if [[ "$pg" == 1 ]]; then
    say "PostgreSQL: running at ${PG_URL} (data dir ${PG_DATA})"
  else
    say "PostgreSQL: not running"; rc=1
  fi
  if [[ -z "$pid" ]]; then
    say "Unleash: not running"; rc=1
  elif healthy; then
    say "Unleash: running and healthy, pid ${pid}, ${UNLEASH_URL_VALUE}, logs ${LOG_FILE}"
  else
    say "Unleash: running (pid ${pid}) but ${UNLEASH_URL_VALUE}/health does not answer GOOD; logs ${LOG_FILE}"; rc=1
  fi
  return "$rc"
}

cmd_logs() {
  local follow=0 lines=200 file="${LOG_FILE}"
  while (($#)); do
    case "$1" in
      pg|postgres) file="${PG_LOG}" ;;
      -f|--follow) follow=1 ;;
      *[!0-9]*|'') die "logs: unknown argument '$1' (usage: logs [pg] [-f] [N])" ;;
      *) lines="$1" ;;
    esac
    shift
  done
  [[ -f "$file" ]] || die "no log yet (${file})"
  if ((follow)); then
    exec tail -n "$lines" -F "$file"
  fi
  tail -n "$lines" "$file"
}

cmd_env() {
  printf 'export UNLEASH_URL=%s\n' "${UNLEASH_URL_VALUE}"
  printf "export UNLEASH_ADMIN_TOKEN='%s'\n" "${UNLEASH_ADMIN_TOKEN}"
  printf 'export UNLEASH_PG_URL=%s\n' "${PG_URL}"
  printf 'export UNLEASH_SERVER_JS=%s\n' "${SERVER_JS}"
}

cmd_clean() {
  cmd_stop
  say "deleting ${RUN_DIR} (the npm install in ${INSTALL_DIR} is kept)"
  rm -rf "${RUN_DIR}"
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    logs|log) cmd_logs "$@" ;;
    env) cmd_env ;;
    clean) cmd_clean ;;
    help|-h|--help) usage ;;
    '') usage >&2; exit 2 ;;
    *) warn "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
