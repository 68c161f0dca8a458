#!/usr/bin/env bats
# start_singleuser.sh against the stand-in singularity.
# SC2016: single-quoted $ and backquotes are meant literally (values the server must receive).
# SC2030,SC2031: each @test runs in a subshell of its own; shellcheck sees them as one.
# SC2034: EXE and HUB_ENV_EXTRA are read by start_server (helpers.bash).
# SC2154: bats' `run --separate-stderr` assigns stderr.
# shellcheck disable=SC2016,SC2030,SC2031,SC2034,SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

@test "starts the server, answers one JSON line, server listens on the reported port" {
  start_ok
  [ "$(printf '%s\n' "${output}" | wc -l)" -eq 1 ]
  ((PORT >= 49152 && PORT <= 60999))
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
  [[ "${output}" == *'"ok": true'* ]]
}

@test "ss asked for the listening port; without a working ss, /proc/net/tcp tells it" {
  start_ok
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
  # An ss that fails: the wait for the server falls back to /proc/net/tcp.
  stand_in ss <<<'exit 1'
  start_ok
  [ "$(stand_in_calls ss)" -ge 1 ]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "reports its steps as @progress lines on stderr, percentages rising" {
  start_ok
  local -a steps
  mapfile -t steps < <(grep '^@progress ' <<<"${stderr}")
  [ "${#steps[@]}" -eq 2 ]
  [ "${steps[0]}" = "@progress 40 starting the container jupyter.sif" ]
  [ "${steps[1]}" = "@progress 60 waiting for the server to listen on port ${PORT}" ]
}

@test "the recorded PID leads its own session and is singularity's runtime parent" {
  start_ok
  [ "$(stat_field "${PID}" 5)" = "${PID}" ]   # process group
  [ "$(stat_field "${PID}" 6)" = "${PID}" ]   # session
  [ "$(stat_field "${PID}" 22)" = "${START}" ]
  grep -qi 'run' "/proc/${PID}/comm"
  # the payload is a descendant, not the recorded PID itself
  [ -n "$(ps -o pid= --ppid "${PID}")" ]
}

@test "pidfile and log are private files in a private directory under HOME" {
  start_ok
  [ "$(stat -c %a "${HOME}/${SERVER_DIR}")" = 700 ]
  [ "$(stat -c %a "${HOME}/${SERVER_DIR}/server.log")" = 600 ]
  [ "$(stat -c %a "${HOME}/${SERVER_DIR}/server.pid")" = 600 ]
  [ "$(cat "${HOME}/${SERVER_DIR}/server.pid")" = "${PID} ${START} ${PORT}" ]
  [ "$(json_field "${output}" log)" = "${HOME}/${SERVER_DIR}/server.log" ]
  grep -q "listening on 127.0.0.1:${PORT}" "${HOME}/${SERVER_DIR}/server.log"
}

# The server's environment as the server sees it: server_env KEY prints one value.
fetch_server_env() {
  run -0 curl -fsS "http://127.0.0.1:${PORT}/env"
  SERVER_ENV="${output}"
}
server_env() {
  python3 -c 'import json,sys; e=json.loads(sys.argv[1]); print(e.get(sys.argv[2], "<unset>"), end="")' \
    "${SERVER_ENV}" "$1"
}

@test "the environment from stdin reaches the server literally; the port is rewritten" {
  HUB_ENV_EXTRA=('ODD=a $HOME `id` "q" \ b' $'MULTI=line1\nline2' 'SCOPES=["access:servers!server=alice/", "x y"]')
  start_ok
  fetch_server_env
  [ "$(server_env JUPYTERHUB_API_TOKEN)" = "${TOKEN}" ]
  [ "$(server_env ODD)" = 'a $HOME `id` "q" \ b' ]
  [ "$(server_env MULTI)" = $'line1\nline2' ]
  [ "$(server_env SCOPES)" = '["access:servers!server=alice/", "x y"]' ]
  [ "$(server_env JUPYTERHUB_SERVICE_URL)" = "http://127.0.0.1:${PORT}/user/alice/" ]
}

@test "with --cleanenv or --containall the Hub's environment still reaches the server literally" {
  HUB_ENV_EXTRA=('ODD=a $HOME `id` "q" \ b' $'MULTI=line1\nline2' 'KEEP_ME=yes')
  local flag
  for flag in --cleanenv --containall; do
    start_ok --singularity-arg "${flag}"
    fetch_server_env
    [ "$(server_env JUPYTERHUB_API_TOKEN)" = "${TOKEN}" ]
    [ "$(server_env ODD)" = 'a $HOME `id` "q" \ b' ]
    [ "$(server_env MULTI)" = $'line1\nline2' ]
    [ "$(server_env JUPYTERHUB_SERVICE_URL)" = "http://127.0.0.1:${PORT}/user/alice/" ]
    [ "$(server_env LANG)" = C ]   # --cleanenv did apply
    kill -TERM -- "-${PID}"
  done
}

@test "apptainer: the same with APPTAINERENV_, and no warning about differing variables" {
  mkdir -p "${BATS_TEST_TMPDIR}/bin"
  ln -s "${TEST_BIN}/singularity" "${BATS_TEST_TMPDIR}/bin/apptainer"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}"
  EXE=apptainer
  HUB_ENV_EXTRA=('ODD=a $HOME `id` "q" \ b')
  start_ok --singularity-arg --cleanenv
  grep -q 'Apptainer runtime parent' "/proc/${PID}/cmdline"
  fetch_server_env
  [ "$(server_env JUPYTERHUB_API_TOKEN)" = "${TOKEN}" ]
  [ "$(server_env ODD)" = 'a $HOME `id` "q" \ b' ]
  run ! grep -q 'WARNING' "${HOME}/${SERVER_DIR}/server.log"
}

@test "with --no-eval the values are passed unescaped and still arrive literally" {
  HUB_ENV_EXTRA=('ODD=a $HOME `id` "q" \ b')
  start_ok --singularity-arg --no-eval --singularity-arg --cleanenv
  fetch_server_env
  [ "$(server_env ODD)" = 'a $HOME `id` "q" \ b' ]
  [ "$(server_env JUPYTERHUB_API_TOKEN)" = "${TOKEN}" ]
}

@test "the Hub's variables win over the image's %environment" {
  "${TEST_BIN}/make-fake-image" "${IMAGE}" \
    "PATH=${TEST_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "JUPYTERHUB_API_TOKEN=from-image"
  start_ok
  fetch_server_env
  [ "$(server_env JUPYTERHUB_API_TOKEN)" = "${TOKEN}" ]
}

@test "the API token is in no process's argv and not in the log" {
  start_ok
  # The token from a file, not in grep's own argv. -s: a process may end between
  # the glob and the read (with -q a match still exits 0).
  printf '%s\n' "${TOKEN}" >"${BATS_TEST_TMPDIR}/token"
  run ! grep -aqsF -f "${BATS_TEST_TMPDIR}/token" /proc/[0-9]*/cmdline
  run ! grep -qF -- "${TOKEN}" "${HOME}/${SERVER_DIR}/server.log"
}

@test "PATH and other reserved variables from the Hub are not imported" {
  HUB_ENV_EXTRA=("PATH=/hub/only/bin" "LD_PRELOAD=/evil.so")
  start_ok
  [[ "${stderr}" == *"not overriding PATH"* && "${stderr}" == *"not overriding LD_PRELOAD"* ]]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/env"
  [[ "${output}" != *"/hub/only/bin"* && "${output}" != *"/evil.so"* ]]
}

@test "an invalid environment record is refused before anything starts" {
  run -7 --separate-stderr reaped bash -c "printf 'BAD-KEY=1\0' | bash '${SCRIPTS}/start_singleuser.sh' --port-range 49152-60999 \
    --exe singularity --image '${IMAGE}' --server-dir x -- fake-singleuser"
  [[ "${stderr}" == *"invalid environment record"* ]]
  [ ! -e "${HOME}/x/server.log" ]
}

@test "binds are passed to singularity and visible in the container" {
  mkdir -p "${BATS_TEST_TMPDIR}/data"
  printf 'hello\n' >"${BATS_TEST_TMPDIR}/data/file"
  start_ok --bind "${BATS_TEST_TMPDIR}/data:/mnt:ro"
  # /mnt inside is the bound directory: look through the payload's root
  local payload inner
  payload=$(ps -o pid= --ppid "${PID}" | head -n 1 | tr -d ' ')
  inner=$(pgrep -P "${payload}" -f fake-singleuser || printf '%s' "${payload}")
  [ "$(cat "/proc/${inner}/root/mnt/file")" = hello ]
}

hub_env_start_with_image() {
  IMAGE="$1" start_server
}

@test "image missing: fails fast with the runtime's message from the log" {
  run -4 --separate-stderr hub_env_start_with_image "${BATS_TEST_TMPDIR}/missing.sif"
  [[ "${stderr}" == *"could not open image ${BATS_TEST_TMPDIR}/missing.sif"* ]]
  [[ "${stderr}" == *"no such file or directory"* ]]
  [[ "${stderr}" == *"exited with status 255"* ]]
}

@test "bind source missing: fails fast naming the source" {
  run -4 --separate-stderr start_server --bind /nonexistent/data:/mnt
  [[ "${stderr}" == *"mount source /nonexistent/data doesn't exist"* ]]
}

@test "command missing in the container: fails fast" {
  run -4 --separate-stderr reaped bash -c "printf 'JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/\0' | bash '${SCRIPTS}/start_singleuser.sh' --port-range 49152-60999 \
    --exe singularity --image '${IMAGE}' --server-dir x -- no-such-server"
  [[ "${stderr}" == *'"no-such-server": executable file not found in $PATH'* ]]
}

@test "a port taken between choice and bind: retried on another port" {
  export FAKE_FAIL_ONCE="${BATS_TEST_TMPDIR}/fail-once"
  touch "${FAKE_FAIL_ONCE}"
  start_ok
  [[ "${stderr}" == *"was taken meanwhile, retrying"* ]]
  [ ! -e "${FAKE_FAIL_ONCE}" ]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "no free port in the range: exit 6, nothing started" {
  python3 -m http.server --bind 127.0.0.1 50999 >/dev/null 2>&1 &
  local blocker=$!
  track_pid "${blocker}"
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:50999/" && break; sleep 0.1; done
  run -6 --separate-stderr start_server --port-range 50999-50999
  kill "${blocker}"
  [[ "${stderr}" == *"no free port in 50999-50999"* ]]
}

@test "a server that never listens is killed at the timeout: exit 5, nothing left" {
  run -5 --separate-stderr reaped bash -c "printf 'JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/\0' | bash '${SCRIPTS}/start_singleuser.sh' --port-range 49152-60999 \
    --exe singularity --image '${IMAGE}' --server-dir x --timeout 1 -- sleep 1000"
  [[ "${stderr}" == *"did not listen"* ]]
  sleep 0.5
  [ -z "$(left_alive)" ]
}

@test "a server that dies during start leaves none of its helpers behind: exit 4" {
  # Its helpers, one in its process group, one in a session of its own, are
  # left to the subreaper of `reaped` if they outlive it: none may be alive.
  local group="1${RANDOM}.5" session="2${RANDOM}.5"
  run -4 --separate-stderr reaped bash -c "printf 'JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/\0' | bash '${SCRIPTS}/start_singleuser.sh' --port-range 49152-60999 \
    --exe singularity --image '${IMAGE}' --server-dir x --timeout 20 \
    -- bash -c 'sleep ${group} & setsid sleep ${session} & sleep 1.5; echo crashed >&2; exit 3'"
  [[ "${stderr}" == *"crashed"* ]]
  [ -z "$(left_alive)" ]
}

@test "a server directory that cannot be made: exit 10 naming it, the reason and the likely cause" {
  : >"${HOME}/.rss"  # a file where the state directory should be
  run -10 --separate-stderr start_server
  [[ "${stderr}" == *"cannot create the server's directory ${SERVER_DIR}: Not a directory"* ]]
  [[ "${stderr}" == *"(is the home directory full (disk quota) or read-only?)"* ]]
  [ -z "$(left_alive)" ]
}

@test "--slurm-job: the server starts as a step of the job, through srun" {
  # The stand-in srun logs its argv and runs what follows "--" in its place.
  stand_in srun <<<'while (($#)) && [ "$1" != -- ]; do shift; done; shift; exec "$@"'
  start_ok --slurm-job 42
  [ "$(stand_in_argv srun | head -n 8)" = "$(printf '%s\n' --jobid=42 --overlap --nodes=1 --ntasks=1 \
    --quiet --kill-on-bad-exit=1 -- "${TEST_BIN}/singularity")" ]
  [ "$(stand_in_argv srun | sed -n '9p;$p')" = "$(printf '%s\n' exec fake-singleuser)" ]
  [[ "${stderr}" == *"@progress 40 starting the container jupyter.sif in Slurm job 42"* ]]
  [ "$(cat "${HOME}/${SERVER_DIR}/server.pid")" = "${PID} ${START} ${PORT}" ]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "--slurm-job without srun on PATH: exit 64 naming srun, nothing started" {
  mkdir -p "${BATS_TEST_TMPDIR}/empty"
  run -64 --separate-stderr bash -c "printf 'JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/\0' | PATH='${BATS_TEST_TMPDIR}/empty' \
    '${BASH}' '${SCRIPTS}/start_singleuser.sh' --port-range 49152-60999 --exe '${TEST_BIN}/singularity' --image '${IMAGE}' \
    --server-dir x --slurm-job 42 -- fake-singleuser"
  [[ "${stderr}" == *"srun not found on PATH"* && "${stderr}" == *"--slurm-job"* ]]
  [ ! -e "${HOME}/x" ]
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --exe singularity --image x --server-dir y \
    --port-range 49152-60999 --slurm-job 'x;id' -- cmd
  [[ "${stderr}" == *"--slurm-job needs a non-negative integer"* ]]
}

@test "usage errors exit 64 with a message" {
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --image x --server-dir y -- cmd
  [[ "${stderr}" == *"--exe, --image and --server-dir are required"* ]]
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --bogus
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --exe singularity --image x --server-dir y \
    --port-range 80-90 -- cmd
  [[ "${stderr}" == *"outside 1024-65535"* ]]
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --exe singularity --image x --server-dir y -- cmd
  [[ "${stderr}" == *"--port-range is required"* ]]
}

@test "--help describes the options" {
  run -0 bash "${SCRIPTS}/start_singleuser.sh" --help
  [[ "${output}" == *"--server-dir"* && "${output}" == *"NUL-separated"* ]]
}
