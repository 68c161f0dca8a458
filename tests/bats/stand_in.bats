#!/usr/bin/env bats
# Behaviour of the Singularity/Apptainer test stand-in (tests/bin/singularity) against the
# facts it emulates (apptainer-cli.md).  Runs as root in CI and as an ordinary user.
# SC2016: single-quoted $ is meant for the shell inside the container.
# SC2154: bats' `run --separate-stderr` assigns stderr and stderr_lines.
# shellcheck disable=SC2016,SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() {
  SING="${TEST_BIN}/singularity"
  APPT="${BATS_TEST_TMPDIR}/apptainer"
  ln -s "${SING}" "${APPT}"
  IMG="${BATS_TEST_TMPDIR}/image.sif"
  "${TEST_BIN}/make-fake-image" "${IMG}"
  cd "${BATS_TEST_TMPDIR}" || return 1
}

# The session's process group, orphans included, and the job reaped quietly.
teardown() { kill_started; }

# Start the stand-in like the spawner does: setsid, and the recorded PID is $!.
# Usage: start_background EXECUTABLE [exec options...] IMAGE COMMAND [ARGS...]
start_background() {
  local executable=$1
  shift
  setsid "${executable}" exec "$@" </dev/null >"${BATS_TEST_TMPDIR}/bg.out" 2>&1 3>&- &
  PID=$!
  track_pid "${PID}"
}

# (alive PID, from helpers.bash: a zombie counts as dead.)
dead() {
  ! alive "$1"
}

has_child() {  # has_child PID COMM
  [[ -n $(pgrep -P "$1" -x "$2") ]]
}

bg_output_has() {
  grep -q -- "$1" "${BATS_TEST_TMPDIR}/bg.out"
}

eventually() {  # retry a check for up to 5 seconds
  local try
  for ((try = 0; try < 100; try++)); do
    if "$@"; then return 0; fi
    sleep 0.05
  done
  return 1
}

wait_status() {  # wait_status PID: the exit status of a background job, in STATUS
  STATUS=0
  wait "$1" 2>/dev/null || STATUS=$?  # (no "Killed" job report)
}

has_line() {  # has_line TEXT: ${output} has exactly this line
  printf '%s\n' "${output}" | grep -Fxq -- "$1"
}

bwrap_usable() {
  command -v bwrap >/dev/null &&
    bwrap --dev-bind / / --unshare-pid --proc /proc -- /bin/true 2>/dev/null
}

# --- command line -------------------------------------------------------------------------

@test "--version and version name the flavour by the invoked name" {
  run -0 "${SING}" --version
  [ "${output}" = "singularity-ce version 3.11.5-standin" ]
  run -0 "${APPT}" --version
  [ "${output}" = "apptainer version 1.3.0-standin" ]
  run -0 "${APPT}" version
  [ "${output}" = "1.3.0-standin" ]
}

@test "an unknown flag is a flag error on stderr, exit 1, nothing runs" {
  run -1 --separate-stderr "${SING}" exec --x "${IMG}" touch ran
  [ "${stderr_lines[0]}" = 'Error for command "exec": unknown flag: --x' ]
  [ "${output}" = "" ]
  [ ! -e ran ]
  run -1 --separate-stderr "${SING}" exec -x "${IMG}" true
  [ "${stderr_lines[0]}" = "Error for command \"exec\": unknown shorthand flag: 'x' in -x" ]
}

@test "fewer than two positionals is a usage error, exit 1" {
  run -1 --separate-stderr "${SING}" exec "${IMG}"
  [ "${stderr_lines[0]}" = 'Error for command "exec": requires at least 2 arg(s), only received 1' ]
}

@test "a value-taking flag consumes the next word: --bind swallows the image" {
  run -1 --separate-stderr "${SING}" exec --bind "${IMG}" true
  [ "${stderr_lines[0]}" = 'Error for command "exec": requires at least 2 arg(s), only received 1' ]
}

@test "options stop at the first positional: the rest goes to the command" {
  run -0 "${SING}" exec "${IMG}" echo --bind -e x
  [ "${output}" = "--bind -e x" ]
}

@test "global flags before exec, --flag=value and combined short booleans are accepted" {
  run -0 "${SING}" -q --nocolor exec -ec --pwd=/ "${IMG}" pwd
  [ "${output}" = "/" ]
}

@test "--cwd and --no-pid exist only in the apptainer flavour" {
  run -1 --separate-stderr "${SING}" exec --cwd / "${IMG}" pwd
  [ "${stderr_lines[0]}" = 'Error for command "exec": unknown flag: --cwd' ]
  run -0 "${APPT}" exec --no-pid --cwd / "${IMG}" pwd
  [ "${output}" = "/" ]
}

@test "cgroups flags are accepted, then fail like an unprivileged run, exit 255" {
  run -255 --separate-stderr "${SING}" exec --memory 1G "${IMG}" touch ran
  [[ ${stderr} == "FATAL:   container creation failed: while applying cgroups config: cannot use cgroups - "* ]]
  [ ! -e ran ]
}

# --- images --------------------------------------------------------------------------------

@test "a missing image: exact FATAL text for both flavours, exit 255" {
  local missing="${BATS_TEST_TMPDIR}/missing.sif"
  run -255 --separate-stderr "${SING}" exec missing.sif true
  [ "${stderr}" = "FATAL:   could not open image ${missing}: failed to retrieve path for ${missing}: lstat ${missing}: no such file or directory" ]
  run -255 --separate-stderr "${APPT}" exec missing.sif true
  [ "${stderr}" = "FATAL:   While checking container encryption: could not open image ${missing}: failed to retrieve path for ${missing}: lstat ${missing}: no such file or directory" ]
}

@test "a file that is not an image: image format not recognized, exit 255" {
  local bad="${BATS_TEST_TMPDIR}/bad.sif"
  head -c 4096 /dev/zero >"${bad}"
  run -255 --separate-stderr "${APPT}" exec "${bad}" true
  [ "${stderr}" = "FATAL:   While checking container encryption: could not open image ${bad}: image format not recognized" ]
  printf 'SIF_MAGIC\n' >"${bad}"  # the magic, but too short
  run -255 --separate-stderr "${SING}" exec "${bad}" true
  [ "${stderr}" = "FATAL:   could not open image ${bad}: image format not recognized" ]
}

@test "a sandbox directory is an image, with its environment script" {
  "${TEST_BIN}/make-fake-image" --sandbox sandbox GREETING=hello
  run -0 "${SING}" exec sandbox printenv GREETING
  [ "${output}" = hello ]
}

# --- binds ---------------------------------------------------------------------------------

@test "bind with a missing source: FATAL per flavour, exit 255, nothing runs" {
  run -255 --separate-stderr "${SING}" exec --bind /nonexistent:/mnt "${IMG}" touch ran
  [ "${stderr}" = "FATAL:   container creation failed: mount /nonexistent->/mnt error: while mounting /nonexistent: mount source /nonexistent doesn't exist" ]
  run -255 --separate-stderr "${APPT}" exec -B /nonexistent:/mnt "${IMG}" touch ran
  [ "${stderr}" = "FATAL:   container creation failed: mount hook function failure: mount /nonexistent->/mnt error: while mounting /nonexistent: mount source /nonexistent doesn't exist" ]
  [ ! -e ran ]
}

@test "SINGULARITY_BIND in the caller's environment adds binds" {
  SINGULARITY_BIND=/nonexistent:/mnt run -255 --separate-stderr "${SING}" exec "${IMG}" true
  [[ ${stderr} == *"mount source /nonexistent doesn't exist" ]]
  APPTAINER_BIND=/nonexistent:/mnt run -255 --separate-stderr "${APPT}" exec "${IMG}" true
  [[ ${stderr} == *"mount source /nonexistent doesn't exist" ]]
}

@test "bind with a relative destination: exit 255" {
  run -255 --separate-stderr "${SING}" exec -B /tmp:mnt "${IMG}" true
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ ${stderr} == "FATAL:   "*"destination must be an absolute path" ]]
}

@test "bind with more than three fields: bad bind syntax, exit 255" {
  run -255 --separate-stderr "${APPT}" exec -B /tmp:/mnt:ro:x "${IMG}" true
  [[ ${stderr} == "FATAL:   "*'bad bind syntax "/tmp:/mnt:ro:x"'* ]]
}

@test "bind with an unknown option: not a valid bind option, exit 255" {
  run -255 --separate-stderr "${SING}" exec -B /tmp:/mnt:rox "${IMG}" true
  [[ ${stderr} == "FATAL:   "*"rox is not a valid bind option" ]]
  run -0 "${SING}" exec -B /tmp:/tmp:ro,rw "${IMG}" true  # several options, comma separated
}

@test "bind to a destination missing in the container: exit 255" {
  run -255 --separate-stderr "${APPT}" exec -B /tmp:/nonexistent "${IMG}" true
  [ "${stderr}" = "FATAL:   container creation failed: mount hook function failure: mount /tmp->/nonexistent error: while mounting /tmp: destination /nonexistent doesn't exist in container" ]
}

@test "binds are real mounts; ro is read-only" {
  bwrap_usable || skip "bubblewrap cannot create namespaces here"
  mkdir src dst dst2
  printf 'inside\n' >src/file
  run -0 "${SING}" exec -B "${PWD}/src:${PWD}/dst,${PWD}/src:${PWD}/dst2" "${IMG}" cat dst/file dst2/file
  [ "${output}" = $'inside\ninside' ]
  [ ! -e dst/file ]  # only inside
  run -1 --separate-stderr "${SING}" exec -B "${PWD}/src:${PWD}/dst:ro" "${IMG}" touch "${PWD}/dst/new"
  [[ ${stderr} == *"Read-only file system"* ]]
}

# --- environment ---------------------------------------------------------------------------

@test "HOME and PATH are reset, LD_LIBRARY_PATH replaced, SINGULARITY_* stripped" {
  local home
  home=$(getent passwd "$(id -u)" | cut -d: -f6)
  HOME=/bogus PATH="/bogus:${PATH}" LD_LIBRARY_PATH=/bogus SINGULARITY_FOO=x APPTAINER_FOO=y \
    KEPT='a$b' run -0 "${SING}" exec "${IMG}" env
  has_line "HOME=${home}"
  has_line "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  has_line "SINGULARITY_CONTAINER=${IMG}"
  has_line "SINGULARITY_NAME=image.sif"
  has_line 'KEPT=a$b'  # inherited values are not evaluated again
  [[ ${output} != *bogus* ]]
  [[ ${output} != *_FOO=* ]]
  run -0 "${SING}" exec --home /srv/h "${IMG}" printenv HOME
  [ "${output}" = /srv/h ]
}

@test "--nv and --rocm on a host without GPU warn and still run the container" {
  run -0 --separate-stderr "${SING}" exec --nv "${IMG}" echo ran
  [ "${output}" = ran ]
  [ "${stderr}" = "WARNING: Could not find any nv files on this host!" ]
  run -0 --separate-stderr "${APPT}" exec --rocm "${IMG}" true
  [ "${stderr}" = "WARNING: Could not find any rocm files on this host!" ]
  run -0 --separate-stderr "${SING}" exec "${IMG}" true
  [ "${stderr}" = "" ]
}

@test "SINGULARITYENV_X sets X; apptainer prefers APPTAINERENV_X and warns" {
  SINGULARITYENV_X=one run -0 "${SING}" exec "${IMG}" printenv X
  [ "${output}" = one ]
  SINGULARITYENV_X=one APPTAINERENV_X=two run -0 --separate-stderr "${APPT}" exec "${IMG}" printenv X
  [ "${output}" = two ]
  [ "${stderr}" = "WARNING: Environment variable SINGULARITYENV_X is set, but APPTAINERENV_X is preferred" ]
  APPTAINERENV_X=two run -1 "${SING}" exec "${IMG}" printenv X  # SingularityCE reads only SINGULARITYENV_
}

@test "injected values are shell-evaluated again unless --no-eval" {
  SINGULARITYENV_SECRET='pa$word' run -0 "${SING}" exec "${IMG}" printenv SECRET
  [ "${output}" = pa ]
  SINGULARITYENV_SECRET='pa$word' run -0 "${SING}" exec --no-eval "${IMG}" printenv SECRET
  [ "${output}" = 'pa$word' ]
  run -0 "${SING}" exec --env 'SECRET=a\\b`true`' "${IMG}" printenv SECRET
  [ "${output}" = 'a\b' ]
}

@test "--cleanenv keeps only TERM and the proxies and sets LANG=C" {
  TERM=xterm-test http_proxy=http://proxy:3128 FOO=bar LANG=en_US.UTF-8 \
    run -0 "${SING}" exec --cleanenv "${IMG}" env
  has_line "TERM=xterm-test"
  has_line "http_proxy=http://proxy:3128"
  has_line "LANG=C"
  [[ ${output} != *FOO=* ]]
}

@test "--cleanenv and --containall still set the SINGULARITYENV_/APPTAINERENV_ variables" {
  FOO=host SINGULARITYENV_FOO=prefixed run -0 "${SING}" exec --cleanenv "${IMG}" printenv FOO
  [ "${output}" = prefixed ]
  FOO=host APPTAINERENV_FOO=prefixed run -0 "${APPT}" exec --containall "${IMG}" printenv FOO
  [ "${output}" = prefixed ]
  FOO=host run -1 "${SING}" exec --cleanenv "${IMG}" printenv FOO
}

@test "precedence: host < image %environment < SINGULARITYENV_ < --env-file < --env" {
  "${TEST_BIN}/make-fake-image" "${IMG}" A=image B=image C=image D=image
  printf 'export C=file\nD=file\n' >env.file
  A=host B=host SINGULARITYENV_B=prefixed SINGULARITYENV_C=prefixed \
    run -0 "${SING}" exec --env-file env.file --env D=flag "${IMG}" sh -c 'echo $A $B $C $D'
  [ "${output}" = "image prefixed file flag" ]
}

@test "the image %environment PATH makes a command in a non-standard directory found" {
  mkdir -p opt/bin
  printf '#!/bin/sh\necho found\n' >opt/bin/standin-tool
  chmod +x opt/bin/standin-tool
  run -255 --separate-stderr "${SING}" exec "${IMG}" standin-tool
  [ "${stderr}" = 'FATAL:   "standin-tool": executable file not found in $PATH' ]
  "${TEST_BIN}/make-fake-image" "${IMG}" "PATH=${PWD}/opt/bin:\$PATH"
  run -0 "${SING}" exec "${IMG}" standin-tool
  [ "${output}" = found ]
  run -0 "${SING}" exec "${IMG}" printenv PATH
  [ "${output}" = "${PWD}/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" ]
}

# --- processes and status ------------------------------------------------------------------

@test "a missing command: FATAL, exit 255" {
  run -255 --separate-stderr "${APPT}" exec "${IMG}" no-such-command
  [ "${stderr}" = 'FATAL:   "no-such-command": executable file not found in $PATH' ]
}

@test "exit status passes through, 128+N for a payload killed by signal N" {
  run -7 "${SING}" exec "${IMG}" sh -c 'exit 7'
  run -143 "${SING}" exec "${IMG}" sh -c 'kill -TERM $$'
  run -137 "${SING}" exec "${IMG}" sh -c 'kill -KILL $$'
}

@test "--pwd sets the working directory; by default it is the caller's" {
  run -0 "${SING}" exec "${IMG}" pwd
  [ "${output}" = "${BATS_TEST_TMPDIR}" ]
  run -0 "${SING}" exec --pwd /usr "${IMG}" pwd
  [ "${output}" = /usr ]
}

@test "process layout: the recorded PID is the runtime parent, its child the payload" {
  start_background "${SING}" "${IMG}" sleep 100
  eventually has_child "${PID}" sleep
  [ "$(cat "/proc/${PID}/comm")" = "Singularity run" ]
  [ "$(ps -o args= -p "${PID}" | sed 's/ *$//')" = "Singularity runtime parent" ]
  local child
  child=$(pgrep -P "${PID}")
  [ "$(ps -o ppid= -p "${child}" | tr -d ' ')" = "${PID}" ]
  [ "$(cat "/proc/${child}/comm")" = sleep ]
  [ "$(ps -o sid= -p "${child}" | tr -d ' ')" = "${PID}" ]  # setsid: PID = session = group
}

@test "process layout, apptainer flavour: the title names the image" {
  start_background "${APPT}" "${IMG}" sleep 100
  eventually has_child "${PID}" sleep
  [ "$(cat "/proc/${PID}/comm")" = "Apptainer runti" ]
  [ "$(ps -o args= -p "${PID}" | sed 's/ *$//')" = "Apptainer runtime parent: ${IMG}" ]
}

@test "SIGTERM to the runtime parent ends the payload; the parent exits 143" {
  start_background "${SING}" "${IMG}" sleep 100
  eventually has_child "${PID}" sleep
  local child
  child=$(pgrep -P "${PID}")
  kill -TERM "${PID}"
  wait_status "${PID}"
  [ "${STATUS}" -eq 143 ]
  eventually dead "${child}"
}

@test "a payload that traps SIGTERM shuts down gracefully; its status passes through" {
  start_background "${SING}" "${IMG}" sh -c 'trap "echo graceful; exit 0" TERM; echo ready; sleep 100 & wait'
  eventually bg_output_has ready
  kill -TERM "${PID}"
  wait_status "${PID}"
  [ "${STATUS}" -eq 0 ]
  bg_output_has graceful
}

@test "a SIGTERM-ignoring payload keeps running; the parent keeps waiting" {
  start_background "${SING}" "${IMG}" sh -c 'trap "" TERM; echo ready; while :; do sleep 0.1; done'
  eventually bg_output_has ready
  local child
  child=$(pgrep -P "${PID}")
  kill -TERM "${PID}"
  sleep 0.5
  alive "${PID}"
  alive "${child}"
  kill -KILL "${PID}"
  wait_status "${PID}"
  [ "${STATUS}" -eq 137 ]
  eventually dead "${child}"
}

@test "SIGKILL to the runtime parent kills the payload (PDEATHSIG) and orphans its children" {
  start_background "${SING}" "${IMG}" sh -c 'sleep 100 & wait'
  eventually has_child "${PID}" sh
  local child grandchild
  child=$(pgrep -P "${PID}")
  eventually has_child "${child}" sleep
  grandchild=$(pgrep -P "${child}")
  kill -KILL "${PID}"
  eventually dead "${child}"
  alive "${grandchild}"  # without --pid, as with the real runtime
}

@test "with --pid, SIGKILL to the runtime parent tears the whole tree down" {
  bwrap_usable || skip "bubblewrap cannot create namespaces here"
  start_background "${SING}" --pid "${IMG}" sh -c 'sleep 100 & wait'
  eventually pgrep -s "${PID}" -x sleep
  local sleeper
  sleeper=$(pgrep -s "${PID}" -x sleep)
  kill -KILL "${PID}"
  eventually dead "${sleeper}"
}

@test "with binds, SIGTERM still reaches the payload inside bwrap" {
  bwrap_usable || skip "bubblewrap cannot create namespaces here"
  start_background "${SING}" -B /tmp "${IMG}" sh -c 'trap "echo graceful; exit 3" TERM; echo ready; sleep 100 & wait'
  eventually bg_output_has ready
  kill -TERM "${PID}"
  wait_status "${PID}"
  [ "${STATUS}" -eq 3 ]
  bg_output_has graceful
}
