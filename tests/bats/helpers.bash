# shellcheck shell=bash disable=SC2034,SC2154  # bats sets status/output/stderr; tests read PID, PORT, START
# Shared set-up for the scripts' bats tests: a private HOME, the stand-in
# singularity on PATH, a stand-in image whose PATH finds fake-singleuser.
#
# Processes: whatever a test starts is recorded by PID, with the start time
# from /proc/PID/stat (so that a reused PID is never mistaken for it), in
# ${BATS_TEST_TMPDIR}/started.pids, and kill_started ends exactly those, their
# process groups and their descendants in teardown. Nothing is killed by name.

REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
SCRIPTS="${REPO_ROOT}/scripts"
TEST_BIN="${REPO_ROOT}/tests/bin"

common_setup() {
  export PATH="${TEST_BIN}:${PATH}"
  export HOME="${BATS_TEST_TMPDIR}/home"
  mkdir -p "${HOME}"
  IMAGE="${BATS_TEST_TMPDIR}/jupyter.sif"
  "${TEST_BIN}/make-fake-image" "${IMAGE}" \
    "PATH=${TEST_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  SERVER_DIR=".rss/servers/test"
  TOKEN="tok-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  HUB_ENV_EXTRA=()
}

common_teardown() {
  kill_started
}

# --- processes ---------------------------------------------------------------------------

#######################################
# Print the start time (field 22 of /proc/PID/stat) of PID if it is alive;
# fail if there is no such process or it is a zombie.
# Arguments:
#   PID
#######################################
proc_start() {
  local stat
  local -a fields
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  # Field 2 (comm) may hold spaces and parentheses: cut after the last ')'.
  read -r -a fields <<<"${stat##*) }"
  [[ "${fields[0]}" != [ZX] ]] || return 1
  printf '%s\n' "${fields[19]}"
}

#######################################
# Succeed if PID is alive (a zombie counts as dead: kill -0 succeeds on
# zombies) and, if START is given, is the process that started at START.
# Arguments:
#   PID, START (optional)
#######################################
alive() {
  local start
  start=$(proc_start "$1") || return 1
  [[ -z "${2:-}" || "${start}" == "$2" ]]
}

#######################################
# Print "PID START" for every live descendant of PID (not PID itself).
# Arguments:
#   PID
#######################################
descendants() {
  # The scripts' own function (scripts/common.sh), in a shell of its own.
  bash -c 'source "$1"; descendants "$2"' _ "${SCRIPTS}/common.sh" "$1"
}

#######################################
# Record processes the test started, for kill_started to end in teardown.
# Globals:
#   BATS_TEST_TMPDIR
# Arguments:
#   PID...
#######################################
track_pid() {
  local pid start
  for pid in "$@"; do
    start=$(proc_start "${pid}") || start=gone
    printf '%s %s\n' "${pid}" "${start}" >>"${BATS_TEST_TMPDIR}/started.pids"
  done
}

#######################################
# SIGKILL every process recorded in started.pids that is still the process
# recorded, its process group (members that outlived it included) and its
# descendants; reap those that are this shell's jobs; wait until all are
# gone. A PID now used by another process is left alone, and so is the
# group of that ID (the kernel does not reuse a PID while a process group
# of that ID exists, so that group is not ours).
# Globals:
#   BATS_TEST_TMPDIR
# Returns:
#   1 if something survived SIGKILL for 5 seconds
#######################################
kill_started() {
  local file="${BATS_TEST_TMPDIR}/started.pids"
  [[ -f "${file}" ]] || return 0
  local pid start now victim
  local -a groups=() victims=()
  # First list everything (killing a parent would orphan its descendants).
  while read -r pid start; do
    if now=$(proc_start "${pid}"); then
      [[ "${now}" == "${start}" ]] || continue
      victims+=("${pid} ${start}")
      mapfile -t -O "${#victims[@]}" victims < <(descendants "${pid}")
    fi
    groups+=("${pid}")
  done <"${file}"
  # (stderr: no "Killed" job reports, no complaint about a PID that is not a job of this shell)
  {
    for pid in "${groups[@]}"; do
      kill -KILL -- "-${pid}" || true
    done
    for victim in "${victims[@]}"; do
      read -r pid start <<<"${victim}"
      if alive "${pid}" "${start}"; then kill -KILL -- "${pid}" || true; fi
    done
    for pid in "${groups[@]}"; do
      wait "${pid}" || true   # reap those that are this shell's own jobs
    done
  } 2>/dev/null
  local -a left
  for _ in $(seq 100); do
    left=()
    for victim in "${victims[@]}"; do
      read -r pid start <<<"${victim}"
      if alive "${pid}" "${start}"; then left+=("${pid}"); fi
    done
    ((${#left[@]})) || return 0
    sleep 0.05
  done
  printf 'teardown: still running after SIGKILL: %s\n' "${left[*]}" >&2
  return 1
}

# The subreaper of `reaped`: runs argv[3:], reaps orphans while it runs, then
# writes "PID START" of every live process left behind to argv[1] and appends
# them to argv[2]; exits with the command's status (128+N if killed by signal N).
REAPER_PY='
import ctypes, os, signal, sys

left_file, started_file, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
PR_SET_CHILD_SUBREAPER = 36
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"reaped: prctl: {os.strerror(ctypes.get_errno())}")
child = os.fork()
if child == 0:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a shell would leave it
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"reaped: {cmd[0]}: {e.strerror}", file=sys.stderr)
        os._exit(127)
while True:
    pid, wstatus = os.wait()
    if pid == child:
        break
code = os.waitstatus_to_exitcode(wstatus)
code = 128 - code if code < 0 else code

procs = {}
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            procs[int(name)] = (int(fields[1]), fields[19])
left, queue = [], [os.getpid()]
while queue:
    parent = queue.pop()
    for pid, (ppid, start) in procs.items():
        if ppid == parent:
            left.append(f"{pid} {start}\n")
            queue.append(pid)
with open(left_file, "w") as f:
    f.writelines(left)
with open(started_file, "a") as f:
    f.writelines(left)
sys.exit(code)
'

#######################################
# Run a command as the child of a subreaper, so that every process it leaves
# behind, however detached (setsid, double fork), stays findable by PID:
# they are written to left.pids and recorded for kill_started.
# Globals:
#   BATS_TEST_TMPDIR, REAPER_PY
# Arguments:
#   COMMAND [ARG...]
# Returns:
#   COMMAND's exit status
#######################################
reaped() {
  python3 -c "${REAPER_PY}" \
    "${BATS_TEST_TMPDIR}/left.pids" "${BATS_TEST_TMPDIR}/started.pids" "$@"
}

#######################################
# Print the PIDs, one a line, of the processes the last `reaped` command left
# behind that are still alive.
# Globals:
#   BATS_TEST_TMPDIR
#######################################
left_alive() {
  local pid start
  while read -r pid start; do
    if alive "${pid}" "${start}"; then printf '%s\n' "${pid}"; fi
  done <"${BATS_TEST_TMPDIR}/left.pids"
}

#######################################
# Print the live members of a process group, one PID a line.
# Arguments:
#   PGID
#######################################
group_alive() {
  ps -e -o pid= -o pgid= -o stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'
}

# --- the scripts -------------------------------------------------------------------------

# The environment a Hub would send, NUL-separated, on stdout.
hub_env() {
  printf '%s\0' \
    "JUPYTERHUB_API_TOKEN=${TOKEN}" \
    "JUPYTERHUB_SERVICE_URL=http://127.0.0.1:0/user/alice/" \
    "$@"
}

# start_singleuser.sh with the usual arguments, under `reaped`; extra ones
# before "--".
start_server() {
  local -a extra=("$@")
  hub_env "${HUB_ENV_EXTRA[@]}" | reaped bash "${SCRIPTS}/start_singleuser.sh" \
    --exe "${EXE:-singularity}" --image "${IMAGE}" --server-dir "${SERVER_DIR}" --timeout 20 \
    --port-range 49152-60999 "${extra[@]}" -- fake-singleuser
}

# json_field JSON KEY: print one field of a flat JSON object.
json_field() {
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# stat_field PID N: field N (1-based) of /proc/PID/stat.
stat_field() {
  local stat
  local -a fields
  stat=$(<"/proc/$1/stat")
  read -r -a fields <<<"${stat##*) }"
  printf '%s\n' "${fields[$(($2 - 3))]}"
}

# Start a server and set PID, PORT, START from its reply. The server, and
# all it started, are recorded for teardown by `reaped`.
start_ok() {
  run -0 --separate-stderr start_server "$@" || {
    printf 'stderr: %s\n' "${stderr}"
    return 1
  }
  PID=$(json_field "${output}" pid)
  PORT=$(json_field "${output}" port)
  START=$(json_field "${output}" start_time)
}

# --- stand-ins for other commands (Slurm's) ----------------------------------------------

#######################################
# Write an executable stand-in for COMMAND into ${BATS_TEST_TMPDIR}/stand-ins,
# which goes first on PATH. Each call records its argv, NUL-separated, in
# stand-ins/COMMAND.N.argv (N = 1, 2, ...), then runs the bash body read
# from stdin (what the test wants it to answer).
# Globals:
#   BATS_TEST_TMPDIR, PATH
# Arguments:
#   COMMAND
#######################################
stand_in() {
  local dir="${BATS_TEST_TMPDIR}/stand-ins"
  mkdir -p "${dir}"
  [[ ":${PATH}:" == *":${dir}:"* ]] || PATH="${dir}:${PATH}"
  {
    printf '#!/usr/bin/env bash\nlog=%q\n' "${dir}/$1"
    cat <<'HEAD'
n=1
while [[ -e "${log}.${n}.argv" ]]; do n=$((n + 1)); done
printf '%s\0' "$@" >"${log}.${n}.argv"
HEAD
    cat
  } >"${dir}/$1"
  chmod +x "${dir}/$1"
}

#######################################
# Print the argv of call N (default 1) of a stand-in, one word a line.
# Arguments:
#   COMMAND, N (optional)
#######################################
stand_in_argv() {
  tr '\0' '\n' <"${BATS_TEST_TMPDIR}/stand-ins/$1.${2:-1}.argv"
}

#######################################
# Print how many times a stand-in was called.
# Arguments:
#   COMMAND
#######################################
stand_in_calls() {
  local n=0
  while [[ -e "${BATS_TEST_TMPDIR}/stand-ins/$1.$((n + 1)).argv" ]]; do n=$((n + 1)); done
  printf '%s\n' "${n}"
}

# --- images that carry a JupyterHub ------------------------------------------------------

#######################################
# Make IMAGE (a stand-in SIF) an image whose python3, first on its PATH,
# answers as one with jupyterhub VERSION installed: the host's python3
# without its site-packages (-S), on a directory holding only
# jupyterhub-VERSION.dist-info, runs the program it is given. ANSWER "none":
# no jupyterhub package; "broken": a python3 that fails with a message;
# "slow": one that never answers. Each call appends its argv (%q-quoted, one
# line) to ${BATS_TEST_TMPDIR}/python3.calls.
# Globals:
#   BATS_TEST_TMPDIR, TEST_BIN
# Arguments:
#   IMAGE, ANSWER (a version, none, broken or slow)
#######################################
jupyterhub_image() {
  local image="$1" answer="$2" dir="$1.python"
  rm -rf -- "${dir}"
  mkdir -p "${dir}/bin" "${dir}/site"
  if [[ "${answer}" =~ ^[0-9] ]]; then
    mkdir "${dir}/site/jupyterhub-${answer}.dist-info"
    printf 'Metadata-Version: 2.1\nName: jupyterhub\nVersion: %s\n' "${answer}" \
      >"${dir}/site/jupyterhub-${answer}.dist-info/METADATA"
  fi
  {
    printf '#!/bin/bash\ncalls=%q site=%q\n' "${BATS_TEST_TMPDIR}/python3.calls" "${dir}/site"
    # shellcheck disable=SC2016  # the fake's own code, expanded when it runs
    printf '%s\n' 'printf "%q " "$0" "$@" >>"${calls}"' 'printf "\n" >>"${calls}"'
    # shellcheck disable=SC2016  # the fake's own code, expanded when it runs
    case "${answer}" in
      broken) printf '%s\n' "printf 'Fatal Python error: init_import_site\n' >&2" 'exit 1' ;;
      slow) printf 'exec sleep 60\n' ;;
      *) printf 'PYTHONPATH="${site}" exec /usr/bin/python3 -S "$@"\n' ;;
    esac
  } >"${dir}/bin/python3"
  chmod +x "${dir}/bin/python3"
  "${TEST_BIN}/make-fake-image" "${image}" \
    "PATH=${dir}/bin:${TEST_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

#######################################
# Print how many times the python3 of a jupyterhub_image was run.
# Globals:
#   BATS_TEST_TMPDIR
#######################################
python3_calls() {
  local file="${BATS_TEST_TMPDIR}/python3.calls"
  if [[ -e "${file}" ]]; then grep -c '^/' "${file}"; else printf '0\n'; fi
}
