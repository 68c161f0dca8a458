# shellcheck shell=bash disable=SC2034,SC2154  # bats sets status/output/stderr; tests read PID, PORT, START
# Shared set-up for the scripts' bats tests: a private HOME, the stand-in
# singularity on PATH, a stand-in image whose PATH finds fake-singleuser.

REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
SCRIPTS="${REPO_ROOT}/scripts"
TEST_BIN="${REPO_ROOT}/tests/bin"

common_setup() {
  bats_require_minimum_version 1.5.0
  export PATH="${TEST_BIN}:${PATH}"
  export HOME="${BATS_TEST_TMPDIR}/home"
  mkdir -p "${HOME}"
  IMAGE="${BATS_TEST_TMPDIR}/jupyter.sif"
  "${TEST_BIN}/make-fake-image" "${IMAGE}" \
    "PATH=${TEST_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  SERVER_DIR=".rss/servers/test"
  TOKEN="tok-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  STARTED_PIDS=()
  HUB_ENV_EXTRA=()
}

common_teardown() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -KILL -- "-${pid}" 2>/dev/null || true
  done
  pkill -KILL -f "sleep 1000" -U "$(id -u)" 2>/dev/null || true
}

# The environment a Hub would send, NUL-separated, on stdout.
hub_env() {
  printf '%s\0' \
    "JUPYTERHUB_API_TOKEN=${TOKEN}" \
    "JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/user/alice/" \
    "$@"
}

# start_singleuser.sh with the usual arguments; extra ones before "--".
start_server() {
  local -a extra=("$@")
  hub_env "${HUB_ENV_EXTRA[@]}" | bash "${SCRIPTS}/start_singleuser.sh" \
    --exe "${EXE:-singularity}" --image "${IMAGE}" --server-dir "${SERVER_DIR}" --timeout 20 \
    "${extra[@]}" -- fake-singleuser
}

# json_field JSON KEY: print one field of a flat JSON object.
json_field() {
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# stat_field PID N: field N (1-based) of /proc/PID/stat.
stat_field() {
  local stat
  stat=$(<"/proc/$1/stat")
  local -a f
  read -r -a f <<<"${stat##*) }"
  printf '%s\n' "${f[$(($2 - 3))]}"
}

# Start a server and set PID, PORT, START from its reply.
start_ok() {
  run --separate-stderr start_server "$@"
  [ "${status}" -eq 0 ] || { printf 'stderr: %s\n' "${stderr}"; return 1; }
  PID=$(json_field "${output}" pid)
  PORT=$(json_field "${output}" port)
  START=$(json_field "${output}" start_time)
  STARTED_PIDS+=("${PID}")
}

# Print the live (not zombie) members of process group $1.
group_alive() {
  local pid
  for pid in $(ps -e -o pid= -o pgid= -o stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'); do
    printf '%s\n' "${pid}"
  done
}
