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
  [[ "${output}" == *"--hub-jupyterhub"* && "${output}" == *"--version-cache"* ]]
}

# --- the image's JupyterHub, checked against the Hub's (--hub-jupyterhub) -----------------

# common: run a function of common.sh with its arguments, in a shell of its own, under `reaped`.
common() {
  reaped bash -c 'source "$1"; shift; "$@"' _ "${SCRIPTS}/common.sh" "$@"
}

@test "jupyterhub_match: the same major and minor, another minor, another major" {
  [ "$(common jupyterhub_match 6.1.1 6.1.0)" = same ]
  [ "$(common jupyterhub_match 5.0.0b1 5.0.2)" = same ]
  [ "$(common jupyterhub_match 6.1.1 6.1.0.dev0)" = same ]
  [ "$(common jupyterhub_match 6.1.1 6.2.0.dev0)" = minor ]
  [ "$(common jupyterhub_match 6.1.1 6.10.0)" = minor ]
  [ "$(common jupyterhub_match 6.1.1 5.1.1)" = major ]
  [ "$(common jupyterhub_match 6.1.1 16.1.1)" = major ]
  [ "$(common jupyterhub_match 6.1.1 none)" = unknown ]
  [ "$(common jupyterhub_match 6.1.1 '')" = unknown ]
}

@test "image_jupyterhub: the version, none, or a short reason why it could not tell" {
  jupyterhub_image "${IMAGE}" 5.0.0b1
  run -0 --separate-stderr common image_jupyterhub 20 "${IMAGE}" singularity exec
  [ "${output}" = 5.0.0b1 ]
  jupyterhub_image "${IMAGE}" none
  run -0 --separate-stderr common image_jupyterhub 20 "${IMAGE}" singularity exec
  [ "${output}" = none ]
  # Could not tell: the container's words are the reason, and nothing reaches stderr.
  jupyterhub_image "${IMAGE}" broken
  run -1 --separate-stderr common image_jupyterhub 20 "${IMAGE}" singularity exec
  [ "${output}" = "Fatal Python error: init_import_site" ]
  [ "${stderr}" = "" ]
  run -1 --separate-stderr common image_jupyterhub 20 /nonexistent/missing.sif singularity exec
  [[ "${output}" == "could not open image /nonexistent/missing.sif: "*"no such file or directory" ]]
  jupyterhub_image "${IMAGE}" slow
  SECONDS=0
  run -1 --separate-stderr common image_jupyterhub 1 "${IMAGE}" singularity exec
  [ "${output}" = "no answer within 1s" ]
  ((SECONDS < 5))
  [ -z "$(left_alive)" ]
  [ "$(python3_calls)" = 4 ]
}

@test "--hub-jupyterhub: the image carries the same major and minor, so it starts, match same" {
  jupyterhub_image "${IMAGE}" 6.1.0
  start_ok --hub-jupyterhub 6.1.1
  [ "$(json_field "${output}" image_jupyterhub)" = 6.1.0 ]
  [ "$(json_field "${output}" jupyterhub_match)" = same ]
  [ "$(json_field "${output}" log)" = "${HOME}/${SERVER_DIR}/server.log" ]
  local -a steps
  mapfile -t steps < <(grep '^@progress ' <<<"${stderr}")
  [ "${#steps[@]}" -eq 3 ]
  [ "${steps[0]}" = "@progress 30 checking which JupyterHub the image jupyter.sif carries" ]
  [ "${steps[1]}" = "@progress 40 starting the container jupyter.sif" ]
  [ "$(python3_calls)" = 1 ]
  # The API token is in no argv of the check either.
  run ! grep -qF -- "${TOKEN}" "${BATS_TEST_TMPDIR}/python3.calls"
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "the image carries another minor version: it starts, with a warning; match minor" {
  jupyterhub_image "${IMAGE}" 6.2.0.dev0
  start_ok --hub-jupyterhub 6.1.1
  [[ "${stderr}" == *$'\n@progress 35 warning: the image jupyter.sif carries JupyterHub 6.2.0.dev0, the Hub runs 6.1.1\n'* ]]
  [ "$(json_field "${output}" image_jupyterhub)" = 6.2.0.dev0 ]
  [ "$(json_field "${output}" jupyterhub_match)" = minor ]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "the image carries another major version: exit 12, one JSON line with both, nothing started" {
  jupyterhub_image "${IMAGE}" 5.2.1
  run -12 --separate-stderr start_server --hub-jupyterhub 6.1.1
  [ "${output}" = '{"image_jupyterhub": "5.2.1", "hub_jupyterhub": "6.1.1"}' ]
  [[ "${stderr}" == *"the image ${IMAGE} carries JupyterHub 5.2.1, the Hub runs 6.1.1"* ]]
  [[ "${stderr}" != *"@progress 40"* ]]
  [ ! -e "${HOME}/${SERVER_DIR}/server.log" ]
  [ -z "$(left_alive)" ]
}

@test "no jupyterhub in the image, or no telling: a warning with the reason, it starts; match unknown" {
  jupyterhub_image "${IMAGE}" none
  start_ok --hub-jupyterhub 6.1.1
  [[ "${stderr}" == *"@progress 35 warning: could not tell which JupyterHub the image jupyter.sif carries (its python3 has no jupyterhub package)"* ]]
  [ "$(json_field "${output}" image_jupyterhub)" = none ]
  [ "$(json_field "${output}" jupyterhub_match)" = unknown ]
  jupyterhub_image "${IMAGE}" broken
  start_ok --hub-jupyterhub 6.1.1
  [[ "${stderr}" == *"@progress 35 warning: could not tell which JupyterHub the image jupyter.sif carries (Fatal Python error: init_import_site)"* ]]
  [ "$(json_field "${output}" image_jupyterhub)" = "" ]
  [ "$(json_field "${output}" jupyterhub_match)" = unknown ]
  run -0 curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "without --hub-jupyterhub the image is not asked: match off" {
  jupyterhub_image "${IMAGE}" 5.2.1
  start_ok --version-cache .rss/jupyterhub-versions
  [ "$(json_field "${output}" image_jupyterhub)" = "" ]
  [ "$(json_field "${output}" jupyterhub_match)" = off ]
  [ "$(python3_calls)" = 0 ]
  [[ "${stderr}" != *JupyterHub* ]]
  [ ! -e "${HOME}/.rss/jupyterhub-versions" ]
}

@test "--version-cache: the next start asks nothing; a touched, resized or rebuilt image is asked again" {
  local cache=.rss/jupyterhub-versions
  jupyterhub_image "${IMAGE}" 6.1.0
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 1 ]
  [ "$(stat -c %a "${HOME}/${cache}")" = 600 ]
  [ "$(stat -c %a "${HOME}/.rss")" = 700 ]
  [ "$(cat "${HOME}/${cache}")" = "$(stat -c '%s %Y' "${IMAGE}") 6.1.0 ${IMAGE}" ]
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 1 ]
  [[ "${stderr}" != *"@progress 30"* ]]
  [ "$(json_field "${output}" image_jupyterhub)" = 6.1.0 ]
  [ "$(json_field "${output}" jupyterhub_match)" = same ]
  touch -d '2021-01-01 00:00:00' "${IMAGE}"
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 2 ]
  [[ "${stderr}" == *"@progress 30 checking which JupyterHub"* ]]
  truncate -s 4096 "${IMAGE}"
  touch -d '2021-01-01 00:00:00' "${IMAGE}"   # same time, another size
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 3 ]
  [ "$(cat "${HOME}/${cache}")" = "4096 $(date -d '2021-01-01 00:00:00' +%s) 6.1.0 ${IMAGE}" ]
  # Rebuilt with another JupyterHub: refused, though 6.1.0 was cached.
  jupyterhub_image "${IMAGE}" 5.2.1
  touch -d '2022-01-01 00:00:00' "${IMAGE}"
  run -12 --separate-stderr start_server --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 4 ]
  run -12 --separate-stderr start_server --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 4 ]
  [ "${output}" = '{"image_jupyterhub": "5.2.1", "hub_jupyterhub": "6.1.1"}' ]
}

@test "--version-cache: none is remembered, could-not-tell is not; paths with spaces, other lines kept" {
  IMAGE="${BATS_TEST_TMPDIR}/my images/jupyter hub.sif"
  mkdir -p "${IMAGE%/*}"
  local cache="${HOME}/cache dir/versions" other="/images/with space/old one.sif"
  mkdir -p "${cache%/*}"
  # Another image's line, and a stale one of this image.
  printf '2048 1 6.0.0 %s\n9 9 6.1.1 %s\n' "${other}" "${IMAGE}" >"${cache}"
  jupyterhub_image "${IMAGE}" none
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 1 ]
  [ "$(json_field "${output}" image_jupyterhub)" = none ]
  [[ "${stderr}" == *"(its python3 has no jupyterhub package)"* ]]
  local expected
  expected="$(printf '2048 1 6.0.0 %s\n%s none %s' "${other}" "$(stat -c '%s %Y' "${IMAGE}")" "${IMAGE}")"
  [ "$(cat "${cache}")" = "${expected}" ]
  [ "$(stat -c %a "${cache}")" = 600 ]
  jupyterhub_image "${IMAGE}" broken
  touch -d '2021-01-01 00:00:00' "${IMAGE}"
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  start_ok --hub-jupyterhub 6.1.1 --version-cache "${cache}"
  [ "$(python3_calls)" = 3 ]
  [ "$(cat "${cache}")" = "${expected}" ]
}

@test "--slurm-job: the image is asked in a step of the job, with the exec options, without the binds" {
  stand_in srun <<<'while (($#)) && [ "$1" != -- ]; do shift; done; shift; exec "$@"'
  jupyterhub_image "${IMAGE}" 6.1.0
  mkdir -p "${BATS_TEST_TMPDIR}/data"
  start_ok --slurm-job 42 --hub-jupyterhub 6.1.1 --bind "${BATS_TEST_TMPDIR}/data:/mnt" \
    --singularity-arg --cleanenv
  [ "$(stand_in_calls srun)" = 2 ]
  [ "$(stand_in_argv srun 1 | head -n 14)" = "$(printf '%s\n' --jobid=42 --overlap --nodes=1 --ntasks=1 \
    --quiet --kill-on-bad-exit=1 -- "${TEST_BIN}/singularity" exec --cleanenv "${IMAGE}" python3 -B -c)" ]
  [[ "$(stand_in_argv srun 1)" != *--bind* && "$(stand_in_argv srun 2)" == *--bind* ]]
  [ "$(json_field "${output}" jupyterhub_match)" = same ]
  [ "$(python3_calls)" = 1 ]
}

@test "--hub-jupyterhub must be a version" {
  run -64 --separate-stderr bash "${SCRIPTS}/start_singleuser.sh" --exe singularity --image x --server-dir y \
    --port-range 49152-60999 --hub-jupyterhub 'latest' -- cmd
  [[ "${stderr}" == *"--hub-jupyterhub needs a version such as 6.1.1, got 'latest'"* ]]
}
