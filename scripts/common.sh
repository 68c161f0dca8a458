# shellcheck shell=bash disable=SC2034  # constants are used by the scripts that source this file
#
# Shared helpers for the remote-singularity-spawner node scripts.
# Sourced by every script (or fed on stdin before put_files.sh and
# check_node.sh); not run alone.
#
# Exit codes: one table, mirrored in remotesingularityspawner/remote/protocol.py
# (ExitCode). A unit test keeps the two in step. They stay clear of
# 1 (generic), 2 (bash misuse), 126, 127, 128+n and 255. NO_SCRIPTS is also
# what the launcher every command goes through (protocol.LAUNCHER) exits with
# when the script file is missing.
readonly RSS_EXIT_OK=0
readonly RSS_EXIT_NOT_RUNNING=3
readonly RSS_EXIT_SERVER_DIED=4
readonly RSS_EXIT_START_TIMEOUT=5
readonly RSS_EXIT_NO_FREE_PORT=6
readonly RSS_EXIT_BAD_INPUT=7
readonly RSS_EXIT_STOP_FAILED=8
readonly RSS_EXIT_NO_SCRIPTS=9
readonly RSS_EXIT_CANNOT_WRITE=10
readonly RSS_EXIT_SLURM=11
readonly RSS_EXIT_USAGE=64

# The ports a server may listen on (mirrors calls.PORT_BOUNDS; a unit test keeps them equal).
readonly RSS_PORT_LOW=1024
readonly RSS_PORT_HIGH=65535

# Environment keys the Hub may not set for the server: they belong to the
# node's login environment or would change how these scripts run.
readonly RSS_RESERVED_ENV_RE='^(PATH|HOME|USER|LOGNAME|SHELL|PWD|OLDPWD|IFS|ENV|BASH_ENV|BASH_FUNC_.*|SHELLOPTS|BASHOPTS|PS4|LD_.*)$'

#######################################
# Print a message to stderr and exit. Messages start with the script's
# name: RSS_NAME (set by the launcher, or by a script fed on stdin), else $0.
# Arguments: exit code, message...
#######################################
die() {
  local code="$1"
  shift
  printf '%s: %s\n' "${RSS_NAME:-${0##*/}}" "$*" >&2
  exit "${code}"
}

#######################################
# Tell the Hub how far a start has come: one "@progress PERCENT MESSAGE"
# line on stderr, shown to the user on the spawn page (so: plain words).
# Arguments: percent (0-100), message
#######################################
progress() {
  printf '@progress %s %s\n' "$1" "$2" >&2
}

#######################################
# Escape a string as a JSON string literal (with the quotes).
#######################################
json_str() {
  local s="$1"
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "${s}"
}

#######################################
# Run a command that writes to the file system; if it fails, die with
# RSS_EXIT_CANNOT_WRITE naming what could not be done and the system's reason
# (Permission denied, Disk quota exceeded, No space left on device, ...).
# Arguments: what (e.g. "create the directory X"), command...
#######################################
try_write() {
  local what="$1" err
  shift
  if ! err=$("$@" 2>&1); then
    die "${RSS_EXIT_CANNOT_WRITE}" "cannot ${what}: ${err##*: }" \
      "(is the home directory full (disk quota) or read-only?)"
  fi
}

#######################################
# Print why PATH may not be trusted (not root's, or writable by group or
# others); print nothing if it may.
#######################################
untrusted_because() {
  local owner mode
  read -r owner mode < <(stat -L -c '%u %a' -- "$1")
  if [[ "${owner}" != 0 ]]; then
    printf '%s is owned by uid %s, not root' "$1" "${owner}"
  elif ((8#${mode} & 8#022)); then
    printf '%s is writable by group or others (mode %s)' "$1" "${mode}"
  fi
}

#######################################
# Print why the node-wide scripts directory DIR may not be used, or nothing
# if it may: DIR, every directory above it and every file in it must belong
# to root and be writable by nobody else, so that no user can change what
# another user's server runs. (The one place of this rule: put_files.sh
# applies it for the spawner, check_node.sh for `invoke check`.)
#######################################
node_wide_problem() {
  local dir="$1" path file problem=""
  if [[ ! -d "${dir}" ]]; then
    printf '%s does not exist' "${dir}"
    return 0
  fi
  path=${dir}
  while [[ -n "${path}" && -z "${problem}" ]]; do
    problem=$(untrusted_because "${path}")
    path=${path%/*}
  done
  for file in "${dir}"/*; do
    [[ -n "${problem}" ]] || problem=$(untrusted_because "${file}")
  done
  printf '%s' "${problem}"
}

#######################################
# Print the version of the scripts in DIR: the first 16 hex digits of the
# SHA-256 of each file's name and content, each followed by a NUL, in name
# order (as ScriptBundle computes it).
#######################################
bundle_version() {
  local LC_ALL=C file sum
  sum=$(
    for file in "$1"/*; do
      [[ -f "${file}" ]] || continue
      printf '%s\0' "${file##*/}"
      cat -- "${file}"
      printf '\0'
    done | sha256sum
  )
  printf '%s' "${sum:0:16}"
}

#######################################
# Parse "--name VALUE" options into the caller's local variables of the same
# name with "_" for "-" (--start-time sets start_time). Only the names given
# before "--" are accepted; -h/--help prints the caller's usage and exits.
# Arguments: names..., --, the script's arguments
#######################################
parse_options() {
  local -A allowed=()
  local name
  while [[ "$1" != -- ]]; do
    allowed[$1]=1
    shift
  done
  shift
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --?*) ;;
      *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
    esac
    name=${1#--}
    [[ -n "${allowed[${name}]:-}" ]] || die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)"
    printf -v "${name//-/_}" '%s' "${2?"$1 needs a value"}"
    shift 2
  done
}

#######################################
# Check that a value is a non-negative integer, or die with usage.
# Arguments: option name, value
#######################################
require_uint() {
  [[ "$2" =~ ^[0-9]+$ ]] || die "${RSS_EXIT_USAGE}" "$1 needs a non-negative integer, got '$2'"
}

#######################################
# Read /proc/PID/stat. Sets PROC_STATE, PROC_PPID, PROC_PGRP and
# PROC_START (start time in clock ticks since boot, field 22).
# Returns 1 if there is no such process.
#######################################
proc_stat() {
  local stat rest
  local -a fields
  # `read` rather than $(<file): a failed $(<file) ends a `set -e` script.
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  # Field 2 (comm) may hold spaces and parentheses: cut after the last ')'.
  rest=${stat##*) }
  read -r -a fields <<<"${rest}"
  PROC_STATE=${fields[0]}
  PROC_PPID=${fields[1]}
  PROC_PGRP=${fields[2]}
  PROC_START=${fields[19]}
}

#######################################
# True if PID runs, is not a zombie, and started at START (when given).
# Arguments: pid, [start time]
#######################################
is_alive() {
  proc_stat "$1" || return 1
  [[ "${PROC_STATE}" != [ZX] ]] || return 1
  [[ -z "${2:-}" || "${PROC_START}" == "$2" ]]
}

#######################################
# Print the PIDs of the live members of process group PGID, one per line.
#######################################
group_members() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    if proc_stat "${pid}" && [[ "${PROC_PGRP}" == "$1" && "${PROC_STATE}" != [ZX] ]]; then
      printf '%s\n' "${pid}"
    fi
  done
}

#######################################
# Print "PID START" for every live descendant of PID (not PID itself).
# The process table comes from one `ps` (a start looks twice a second, for
# every server starting on the node at once, and bash reading each
# /proc/PID/stat costs tens of milliseconds a look); without ps, from /proc.
#######################################
descendants() {
  local -A children_of=()
  local pid ppid dir
  if command -v ps >/dev/null; then
    while read -r pid ppid; do
      children_of[${ppid}]+=" ${pid}"
    done < <(ps -e -o pid=,ppid=)
  else
    for dir in /proc/[0-9]*; do
      pid=${dir#/proc/}
      if proc_stat "${pid}"; then children_of[${PROC_PPID}]+=" ${pid}"; fi
    done
  fi
  local -a queue=("$1")
  local current child
  while ((${#queue[@]})); do
    current=${queue[0]}
    queue=("${queue[@]:1}")
    for child in ${children_of[${current}]:-}; do
      if proc_stat "${child}" && [[ "${PROC_STATE}" != [ZX] ]]; then
        printf '%s %s\n' "${child}" "${PROC_START}"
        queue+=("${child}")
      fi
    done
  done
}

#######################################
# Print the PIDs still alive out of the group PGID and the processes listed
# ("PID START" lines) in STOP_DESCENDANTS.
#######################################
survivors() {
  local pid start
  group_members "$1"
  while read -r pid start; do
    [[ -n "${pid}" ]] && is_alive "${pid}" "${start}" && printf '%s\n' "${pid}"
  done <<<"${STOP_DESCENDANTS}"
  return 0
}

#######################################
# Wait until nothing of group PGID survives or SECONDS pass; 1 on timeout.
#######################################
wait_gone() {
  local deadline=$((SECONDS + $2))
  while [[ -n "$(survivors "$1")" ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

#######################################
# The stop ladder for a server whose PID leads its process group: SIGTERM
# to the group, wait TERM_TIMEOUT, then SIGKILL to the group and to every
# process that descended from the server (kernels in their own session
# too), wait KILL_TIMEOUT. A PID now used by another process (different
# start time) is left alone. Sets STOP_SIGNAL (none, TERM or KILL) and,
# if something survived, STOP_SURVIVORS and returns 1.
# Arguments: pid, start time, term timeout, kill timeout, [descendants seen
#   earlier, "PID START" lines: found even after the server died and they
#   were reparented]
#######################################
stop_server() {
  local pid="$1" start="$2" other other_start
  STOP_SIGNAL=none
  STOP_SURVIVORS=""
  STOP_DESCENDANTS="${5:-}"
  if is_alive "${pid}" "${start}"; then
    STOP_DESCENDANTS+=$'\n'$(descendants "${pid}")
  elif proc_stat "${pid}" && [[ "${PROC_STATE}" != [ZX] ]]; then
    # The PID was reused: the server is gone, and so is its group (the
    # kernel does not reuse a PID that is still some group's ID).
    return 0
  fi
  [[ -n "$(survivors "${pid}")" ]] || return 0
  STOP_SIGNAL=TERM
  kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM -- "${pid}" 2>/dev/null || true
  wait_gone "${pid}" "$3" && return 0
  STOP_SIGNAL=KILL
  kill -KILL -- "-${pid}" 2>/dev/null || true
  while read -r other other_start; do
    [[ -n "${other}" ]] && is_alive "${other}" "${other_start}" && kill -KILL -- "${other}" 2>/dev/null
  done <<<"${STOP_DESCENDANTS}"
  wait_gone "${pid}" "$4" && return 0
  STOP_SURVIVORS=$(survivors "${pid}" | tr '\n' ' ')
  return 1
}
