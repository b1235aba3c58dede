#!/usr/bin/env bash
# deploy/local/kafka.sh — a real single-node Apache Kafka 4.x broker (KRaft,
# broker+controller in one JVM) from the official jars on Maven Central, for
# chaosgate's tests, CI and local development. Run with --help for usage.
set -euo pipefail

usage() {
  cat <<EOF
Usage: deploy/local/kafka.sh COMMAND [ARGS]

A single-node Apache Kafka ${KAFKA_VERSION} broker (KRaft, broker+controller) on
127.0.0.1, run from the official jars on Maven Central. No Docker needed.

Commands:
  start            Fetch the jars (first time only), format storage (first
                   time or when the config changed), start the broker in the
                   background and wait until a record can be produced.
                   Reuses a broker this script already started if it answers.
  stop             SIGTERM the broker, wait up to ${STOP_TIMEOUT}s, then SIGKILL.
  restart          stop, then start.
  status           Say whether the broker runs and its port accepts
                   connections. Exit 0 if so, 3 if not running, 1 otherwise.
  logs [-f] [N]    Print the last N (default 200) lines of the broker log;
                   -f follows it.
  env              Print: export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT}
                   (and KAFKA_SASL_BOOTSTRAP_SERVERS when KAFKA_SASL_PORT is set)
                   (use: eval "\$(deploy/local/kafka.sh env)")
  run-class CLASS [ARGS...]
                   Run a Kafka main class with the cached jars, e.g.
                     run-class org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:${KAFKA_PORT} --list
                     run-class org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:${KAFKA_PORT} --topic t
                     run-class org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server 127.0.0.1:${KAFKA_PORT} --topic t --from-beginning
  clean            stop, then delete the broker's data, logs and config
                   (the downloaded jars are kept).
  help, --help, -h This text.

Environment (defaults in brackets):
  KAFKA_VERSION          [4.4.0]   org.apache.kafka:kafka_2.13 version to run
  KAFKA_PORT             [19092]   PLAINTEXT listener on 127.0.0.1
  KAFKA_CONTROLLER_PORT  [19093]   CONTROLLER listener on 127.0.0.1
  KAFKA_SASL_PORT        []        when set, also a SASL_PLAINTEXT listener on
                                   127.0.0.1 (mechanism PLAIN, one user:
                                   KAFKA_SASL_USER / KAFKA_SASL_PASSWORD)
  KAFKA_SASL_USER        [chaosgate]
  KAFKA_SASL_PASSWORD    [chaosgate-secret]
  CHAOSGATE_CACHE        [\$HOME/.cache/chaosgate]
                         jars go to \$CHAOSGATE_CACHE/kafka/<version>/libs,
                         broker state to \$CHAOSGATE_CACHE/kafka/run
  KAFKA_RUN_DIR          [\$CHAOSGATE_CACHE/kafka/run]
  KAFKA_START_TIMEOUT    [120]     seconds to wait for the broker to accept a record
  KAFKA_STOP_TIMEOUT     [30]      seconds to wait after SIGTERM before SIGKILL
  KAFKA_HEAP_OPTS        [-Xms1g -Xmx1g]  (kafka-server-start.sh's default; a
                                   smaller start heap means a small young
                                   generation and a GC pause every second)
  KAFKA_OPTS             []        extra JVM options for the broker
  JAVA_HOME                        java to use (else 'java' on PATH; needs >= 17)

Needs java >= 17; needs mvn (Maven) only the first time, to fetch the jars
(Maven's local repository is the default ~/.m2).
EOF
}

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-chaosgate}"
KAFKA_SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-chaosgate-secret}"
KAFKA_HOST=127.0.0.1
BOOTSTRAP="${KAFKA_HOST}:${KAFKA_PORT}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
HEALTH_TOPIC=chaosgate-healthcheck

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${CHAOSGATE_CACHE:-${HOME:-/tmp}/.cache/chaosgate}"
KAFKA_CACHE="${CACHE_ROOT}/kafka"
LIBS_DIR="${KAFKA_CACHE}/${KAFKA_VERSION}/libs"
RUN_DIR="${KAFKA_RUN_DIR:-${KAFKA_CACHE}/run}"
DATA_DIR="${RUN_DIR}/data"
LOG_DIR="${RUN_DIR}/logs"
LOG_FILE="${LOG_DIR}/kafka.log"
HEALTH_LOG="${LOG_DIR}/healthcheck.log"
CONF_DIR="${RUN_DIR}/config"
PROPS="${CONF_DIR}/server.properties"
PID_FILE="${RUN_DIR}/kafka.pid"
CLUSTER_ID_FILE="${RUN_DIR}/cluster.id"
STAMP_FILE="${RUN_DIR}/format.stamp"

JAVA=""
# JVM flags for the short-lived tools (storage format, healthcheck, run-class):
# small heap, quick start-up.
TOOL_JVM_OPTS=(-Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)

say() { printf 'kafka.sh: %s\n' "$*"; }
warn() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- java, jars

check_java() {
  [[ -n "$JAVA" ]] && return 0
  if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    JAVA="${JAVA_HOME}/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "java not found (JAVA_HOME unset and no 'java' on PATH). Kafka ${KAFKA_VERSION} needs Java >= 17, e.g. 'apt-get install openjdk-17-jre-headless'."
  fi
  local spec major
  spec="$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/^[[:space:]]*java\.specification\.version/ {print $2; exit}')" || true
  spec="${spec//[[:space:]]/}"
  [[ -n "$spec" ]] || die "could not tell the version of ${JAVA} ('${JAVA} -version' said: $("$JAVA" -version 2>&1 | head -n 1))"
  if [[ "$spec" == 1.* ]]; then major="${spec#1.}"; else major="${spec%%.*}"; fi
  if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < 17 )); then
    die "${JAVA} is Java ${spec}; Kafka ${KAFKA_VERSION} needs Java >= 17 (set JAVA_HOME to a newer JDK/JRE, e.g. 'apt-get install openjdk-17-jre-headless')."
  fi
}

fetch_libs() {
  if [[ -f "${LIBS_DIR}/.complete" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "Maven ('mvn') is needed once to fetch the Kafka ${KAFKA_VERSION} jars from Maven Central into ${LIBS_DIR} (e.g. 'apt-get install maven')."
  mkdir -p "${KAFKA_CACHE}"
  local tmp started
  tmp="$(mktemp -d "${KAFKA_CACHE}/.fetch.XXXXXX")"
  started=$SECONDS
  say "fetching org.apache.kafka:kafka_2.13:${KAFKA_VERSION} and its runtime dependencies from Maven Central (first time only)..."
  # Run Maven on a copy of the POM outside the clone, so nothing is written
  # into the work tree.
  cp "${SCRIPT_DIR}/pom.xml" "${tmp}/pom.xml"
  if ! (cd "$tmp" && mvn -B -q -Dkafka.version="${KAFKA_VERSION}" \
          dependency:copy-dependencies -DincludeScope=runtime \
          -DoutputDirectory="${tmp}/libs" </dev/null >"${tmp}/mvn.log" 2>&1); then
    warn "Maven failed; last lines of its output:"
    tail -n 40 "${tmp}/mvn.log" >&2 || true
    rm -rf "$tmp"
    die "could not fetch the Kafka ${KAFKA_VERSION} jars"
  fi
  [[ -f "${tmp}/libs/kafka_2.13-${KAFKA_VERSION}.jar" ]] || { rm -rf "$tmp"; die "Maven ran but kafka_2.13-${KAFKA_VERSION}.jar is missing"; }
  rm -rf "${LIBS_DIR}"
  mkdir -p "$(dirname "${LIBS_DIR}")"
  mv "${tmp}/libs" "${LIBS_DIR}"
  (cd "${LIBS_DIR}" && ls -1 ./*.jar) >"${LIBS_DIR}/.complete"
  rm -rf "$tmp"
  say "fetched $(wc -l <"${LIBS_DIR}/.complete") jars into ${LIBS_DIR} in $((SECONDS - started))s"
}

# Run a Kafka main class with the cached jars (tools logging: WARN to stderr).
run_class() {
  "$JAVA" "${TOOL_JVM_OPTS[@]}" \
    -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.yaml" \
    -cp "${LIBS_DIR}/*" "$@"
}

# ---------------------------------------------------------------- config, storage

render_server_properties() {
  local listeners="PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT}"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "${KAFKA_SASL_PORT}" ]]; then
    listeners="${listeners},SASL_PLAINTEXT://${KAFKA_HOST}:${KAFKA_SASL_PORT}"
    protocols="${protocols},SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  cat <<EOF
# Generated by deploy/local/kafka.sh (Kafka ${KAFKA_VERSION}); rewritten on start.
# Single node in KRaft mode: this process is both broker and controller.
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=${listeners},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}
advertised.listeners=${listeners}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=${protocols}
log.dirs=${DATA_DIR}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ -n "${KAFKA_SASL_PORT}" ]]; then
    cat <<EOF
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${KAFKA_SASL_USER}="${KAFKA_SASL_PASSWORD}";
EOF
  fi
}

write_config() {
  mkdir -p "${CONF_DIR}" "${LOG_DIR}"
  cp "${SCRIPT_DIR}/log4j2.yaml" "${CONF_DIR}/log4j2.yaml"
  cp "${SCRIPT_DIR}/tools-log4j2.yaml" "${CONF_DIR}/tools-log4j2.yaml"
  render_server_properties >"${PROPS}.tmp"
  mv "${PROPS}.tmp" "${PROPS}"
}

# Tools log config only (for run-class without a start).
write_tools_config() {
  mkdir -p "${CONF_DIR}"
  cp "${SCRIPT_DIR}/tools-log4j2.yaml" "${CONF_DIR}/tools-log4j2.yaml"
}

# Format KRaft storage unless the data dir was formatted by this script for the
# same Kafka version, the same config and the stored cluster id. Anything else
# (a different cluster id, another version, a changed config, a half-written
# dir) is wiped and formatted afresh: this is a throwaway test broker.
prepare_storage() {
  local want cid meta_cid=""
  want="kafka=${KAFKA_VERSION} config=$(cksum <"${PROPS}" | cut -d' ' -f1)"
  cid="$(cat "${CLUSTER_ID_FILE}" 2>/dev/null || true)"
  if [[ -f "${DATA_DIR}/meta.properties" ]]; then
    meta_cid="$(sed -n 's/^cluster\.id=//p' "${DATA_DIR}/meta.properties" | tr -d '[:space:]')"
  fi
  if [[ -n "$cid" && "$meta_cid" == "$cid" && "$(cat "${STAMP_FILE}" 2>/dev/null || true)" == "$want" ]]; then
    say "reusing formatted storage in ${DATA_DIR} (cluster id ${cid})"
    return 0
  fi
  if [[ -z "$cid" ]]; then
    cid="$(run_class kafka.tools.StorageTool random-uuid | tail -n 1 | tr -d '[:space:]')"
    [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a cluster id (got '${cid}')"
    printf '%s\n' "$cid" >"${CLUSTER_ID_FILE}"
  fi
  if [[ -e "${DATA_DIR}" ]]; then
    say "wiping old data in ${DATA_DIR}${meta_cid:+ (cluster id ${meta_cid})}"
  fi
  rm -rf "${DATA_DIR}" "${STAMP_FILE}"
  mkdir -p "${DATA_DIR}"
  say "formatting KRaft storage in ${DATA_DIR} (cluster id ${cid})"
  local out
  if ! out="$(run_class kafka.tools.StorageTool format --cluster-id "$cid" --config "${PROPS}" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "formatting KRaft storage failed"
  fi
  printf '%s\n' "$want" >"${STAMP_FILE}"
}

# ---------------------------------------------------------------- processes, ports

cmdline_of() {
  local pid=$1
  if [[ -r "/proc/${pid}/cmdline" ]]; then
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true
  else
    ps -ww -o args= -p "$pid" 2>/dev/null || true
  fi
}

# True if pid is a live broker started by this script with this run dir.
is_our_broker() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cmdline_of "$pid")" == *"kafka.Kafka ${PROPS}"* ]]
}

# Pid of our running broker, or nothing. Falls back to looking for the exact
# command line if the pid file is missing or stale (then rewrites the file).
running_pid() {
  local pid=""
  if [[ -f "${PID_FILE}" ]]; then
    pid="$(tr -d '[:space:]' <"${PID_FILE}")"
    if is_our_broker "$pid"; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  if command -v pgrep >/dev/null 2>&1; then
    local p
    for p in $(pgrep -f -- "kafka\\.Kafka ${PROPS}" 2>/dev/null || true); do
      if is_our_broker "$p"; then
        printf '%s\n' "$p" >"${PID_FILE}"
        printf '%s\n' "$p"
        return 0
      fi
    done
  fi
  return 0
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/${KAFKA_HOST}/$1" 2>/dev/null
}

# Describe who listens on a TCP port (any address), or print nothing.
port_user() {
  local port=$1 line
  if command -v ss >/dev/null 2>&1; then
    line="$(ss -Hltnp "sport = :${port}" 2>/dev/null | head -n 1 || true)"
    if [[ -n "$line" ]]; then
      local pid
      pid="$(grep -o 'pid=[0-9]*' <<<"$line" | head -n 1 | cut -d= -f2 || true)"
      if [[ -n "$pid" ]]; then
        printf 'pid %s: %s' "$pid" "$(cmdline_of "$pid" | tr '\n' ' ' | cut -c1-200)"
      else
        printf '%s' "$(awk '{print $4}' <<<"$line")"
      fi
      return 0
    fi
    return 0
  fi
  if port_open "$port"; then printf 'an unknown process'; fi
}

# Produce one record to the healthcheck topic; succeeds only if the broker
# acknowledged it (acks=all, synchronous send).
healthcheck() {
  local budget=${1:-60}
  {
    printf '=== %s\n' "$(date '+%F %T')"
    timeout "$budget" "$JAVA" "${TOOL_JVM_OPTS[@]}" \
      -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.yaml" -cp "${LIBS_DIR}/*" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "${BOOTSTRAP}" \
      --create --if-not-exists --topic "${HEALTH_TOPIC}" \
      --partitions 1 --replication-factor 1 </dev/null &&
    printf 'healthcheck %s\n' "$(date '+%F %T')" |
      timeout "$budget" "$JAVA" "${TOOL_JVM_OPTS[@]}" \
        -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.yaml" -cp "${LIBS_DIR}/*" \
        org.apache.kafka.tools.ConsoleProducer --bootstrap-server "${BOOTSTRAP}" \
        --topic "${HEALTH_TOPIC}" --sync --request-required-acks all \
        --command-property max.block.ms=15000 \
        --command-property delivery.timeout.ms=20000 \
        --command-property request.timeout.ms=10000
  } >>"${HEALTH_LOG}" 2>&1
}

# Wait until the broker with the given pid accepts a record, or fail.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) left
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      warn "the broker (pid ${pid}) exited during start-up; last lines of ${LOG_FILE}:"
      tail -n 60 "${LOG_FILE}" >&2 || true
      rm -f "${PID_FILE}"
      return 1
    fi
    left=$((deadline - SECONDS))
    if (( left <= 0 )); then
      warn "the broker (pid ${pid}) did not accept a record within ${START_TIMEOUT}s; last lines of ${LOG_FILE}:"
      tail -n 60 "${LOG_FILE}" >&2 || true
      warn "last lines of ${HEALTH_LOG}:"
      tail -n 20 "${HEALTH_LOG}" >&2 || true
      return 1
    fi
    if port_open "${KAFKA_PORT}"; then
      if healthcheck "$(( left < 45 ? left : 45 ))"; then
        return 0
      fi
    fi
    sleep 1
  done
}

with_lock() {
  mkdir -p "${KAFKA_CACHE}"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${KAFKA_CACHE}/.lock"
    flock -w 300 9 || die "another kafka.sh is busy (lock ${KAFKA_CACHE}/.lock held for 300s)"
  fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local t0=$SECONDS pid
  check_java
  with_lock
  mkdir -p "${RUN_DIR}" "${LOG_DIR}"

  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    if [[ "$(cat "${PROPS}" 2>/dev/null)" != "$(render_server_properties)" ]]; then
      die "a broker started by this script (pid ${pid}) runs with a different configuration (see ${PROPS}); run 'deploy/local/kafka.sh stop' first"
    fi
    fetch_libs
    write_tools_config
    say "a broker started by this script is already running (pid ${pid}); checking that it answers..."
    if wait_ready "$pid"; then
      say "reusing the running broker (pid ${pid}) at ${BOOTSTRAP}; logs: ${LOG_FILE}"
      return 0
    fi
    die "the running broker (pid ${pid}) does not answer; try 'deploy/local/kafka.sh stop' then start"
  fi
  rm -f "${PID_FILE}"

  local port user
  for port in "${KAFKA_PORT}" "${KAFKA_CONTROLLER_PORT}" ${KAFKA_SASL_PORT}; do
    user="$(port_user "$port")"
    if [[ -n "$user" ]]; then
      die "port ${port} is already in use by something this script did not start (${user}); stop it, or pick other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    fi
  done

  fetch_libs
  write_config
  prepare_storage

  if [[ -f "${LOG_FILE}" ]]; then mv -f "${LOG_FILE}" "${LOG_FILE}.1"; fi
  : >"${HEALTH_LOG}"
  local -a jvm=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
                -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
                -Dlog4j2.configurationFile="${CONF_DIR}/log4j2.yaml" -Dkafka.logs.dir="${LOG_DIR}")
  # shellcheck disable=SC2206  # word-splitting of the option strings is intended
  local -a heap=(${HEAP_OPTS}) extra=(${KAFKA_OPTS:-})
  local launcher=()
  # Own session, so that the caller's Ctrl-C or process-group kill does not
  # take the broker down with it; fd 9 (our lock) is not inherited.
  if command -v setsid >/dev/null 2>&1; then launcher=(setsid); fi
  (
    cd "${RUN_DIR}"
    exec "${launcher[@]}" nohup "$JAVA" "${heap[@]}" "${jvm[@]}" "${extra[@]}" \
      -cp "${LIBS_DIR}/*" kafka.Kafka "${PROPS}" </dev/null >>"${LOG_FILE}" 2>&1 9>&-
  ) &
  pid=$!
  # setsid forks only if it is a process-group leader; make sure we track the JVM.
  local i
  for ((i = 0; i < 50; i++)); do
    is_our_broker "$pid" && break
    sleep 0.1
  done
  if ! is_our_broker "$pid"; then
    local found
    found="$(running_pid)"
    [[ -n "$found" ]] && pid="$found"
  fi
  printf '%s\n' "$pid" >"${PID_FILE}"
  say "started Kafka ${KAFKA_VERSION} broker (pid ${pid}) on ${BOOTSTRAP}; logs: ${LOG_FILE}"
  say "waiting (up to ${START_TIMEOUT}s) until it accepts a record on topic ${HEALTH_TOPIC}..."
  if ! wait_ready "$pid"; then
    die "the broker did not become ready; see ${LOG_FILE} (stop it with 'deploy/local/kafka.sh stop')"
  fi
  say "ready after $((SECONDS - t0))s: KAFKA_BOOTSTRAP_SERVERS=${BOOTSTRAP} (logs: ${LOG_FILE})"
}

cmd_stop() {
  with_lock
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    if [[ -f "${PID_FILE}" ]]; then
      say "no broker running (removing stale pid file ${PID_FILE})"
      rm -f "${PID_FILE}"
    else
      say "no broker running"
    fi
    return 0
  fi
  say "stopping the broker (pid ${pid})..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "still alive after ${STOP_TIMEOUT}s; sending SIGKILL to pid ${pid}"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  rm -f "${PID_FILE}"
  if kill -0 "$pid" 2>/dev/null; then
    die "pid ${pid} is still alive"
  fi
  say "stopped"
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    say "not running (bootstrap would be ${BOOTSTRAP}; jars $( [[ -f "${LIBS_DIR}/.complete" ]] && echo "cached in ${LIBS_DIR}" || echo "not fetched yet"))"
    return 3
  fi
  if port_open "${KAFKA_PORT}"; then
    say "running: Kafka ${KAFKA_VERSION}, pid ${pid}, bootstrap ${BOOTSTRAP} (port open), logs ${LOG_FILE}"
    return 0
  fi
  say "running but not listening yet: pid ${pid}, bootstrap ${BOOTSTRAP}, logs ${LOG_FILE}"
  return 1
}

cmd_logs() {
  local follow=0 lines=200
  while (($#)); do
    case "$1" in
      -f|--follow) follow=1 ;;
      -n) shift; lines="${1:?-n needs a number}" ;;
      *[!0-9]*|'') die "logs: unknown argument '$1' (usage: logs [-f] [N])" ;;
      *) lines="$1" ;;
    esac
    shift
  done
  [[ -f "${LOG_FILE}" ]] || die "no broker log yet (${LOG_FILE})"
  if ((follow)); then
    exec tail -n "$lines" -F "${LOG_FILE}"
  fi
  tail -n "$lines" "${LOG_FILE}"
}

cmd_env() {
  printf 'export KAFKA_BOOTSTRAP_SERVERS=%s\n' "${BOOTSTRAP}"
  if [[ -n "${KAFKA_SASL_PORT}" ]]; then
    printf 'export KAFKA_SASL_BOOTSTRAP_SERVERS=%s:%s\n' "${KAFKA_HOST}" "${KAFKA_SASL_PORT}"
  fi
}

cmd_run_class() {
  (($#)) || die "run-class needs a class name (see --help)"
  check_java
  if [[ ! -f "${LIBS_DIR}/.complete" ]]; then
    with_lock
    fetch_libs >&2
    exec 9>&-
  fi
  write_tools_config
  exec "$JAVA" "${TOOL_JVM_OPTS[@]}" \
    -Dlog4j2.configurationFile="${CONF_DIR}/tools-log4j2.yaml" \
    -cp "${LIBS_DIR}/*" "$@"
}

cmd_clean() {
  cmd_stop
  say "deleting ${RUN_DIR} (jars in ${KAFKA_CACHE}/${KAFKA_VERSION} are kept)"
  rm -rf "${RUN_DIR}"
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status "$@" ;;
    logs|log) cmd_logs "$@" ;;
    env) cmd_env ;;
    run-class) cmd_run_class "$@" ;;
    clean) cmd_clean ;;
    help|-h|--help) usage ;;
    '') usage >&2; exit 2 ;;
    *) warn "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
