# shellcheck shell=bash disable=SC2034  # constants are used by the scripts that source this file
#
# Shared helpers for the remote-singularity-spawner node scripts.
# Sourced by start_singleuser.sh, check_pid.sh and stop.sh; not run alone.
#
# Exit codes: one table, mirrored in remotesingularityspawner/remote.py
# (ExitCode). A unit test keeps the two in step. They stay clear of
# 1 (generic), 2 (bash misuse), 126, 127, 128+n and 255.
readonly RSS_EXIT_OK=0
readonly RSS_EXIT_NOT_RUNNING=3
readonly RSS_EXIT_SERVER_DIED=4
readonly RSS_EXIT_START_TIMEOUT=5
readonly RSS_EXIT_NO_FREE_PORT=6
readonly RSS_EXIT_BAD_INPUT=7
readonly RSS_EXIT_STOP_FAILED=8
readonly RSS_EXIT_USAGE=64

# Environment keys the Hub may not set for the server: they belong to the
# node's login environment or would change how these scripts run.
readonly RSS_RESERVED_ENV_RE='^(PATH|HOME|USER|LOGNAME|SHELL|PWD|OLDPWD|IFS|ENV|BASH_ENV|BASH_FUNC_.*|SHELLOPTS|BASHOPTS|PS4|LD_.*)$'

#######################################
# Print a message to stderr and exit.
# Arguments: exit code, message...
#######################################
die() {
  local code="$1"
  shift
  printf '%s: %s\n' "${0##*/}" "$*" >&2
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
#######################################
descendants() {
  local dir pid
  local -A parent_of=() start_of=()
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    if proc_stat "${pid}" && [[ "${PROC_STATE}" != [ZX] ]]; then
      parent_of[${pid}]=${PROC_PPID}
      start_of[${pid}]=${PROC_START}
    fi
  done
  local -a queue=("$1")
  local current child
  while ((${#queue[@]})); do
    current=${queue[0]}
    queue=("${queue[@]:1}")
    for child in "${!parent_of[@]}"; do
      if [[ "${parent_of[${child}]}" == "${current}" ]]; then
        printf '%s %s\n' "${child}" "${start_of[${child}]}"
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
