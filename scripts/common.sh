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
readonly RSS_EXIT_IMAGE_MISMATCH=12
readonly RSS_EXIT_USAGE=64

# The ports a server may listen on (mirrors calls.PORT_BOUNDS; a unit test keeps them equal).
readonly RSS_PORT_LOW=1024
readonly RSS_PORT_HIGH=65535

# What a Python package's version looks like here (6.1.1, 5.0.0b1, 6.2.0.dev0).
readonly RSS_VERSION_RE='^[0-9]+(\.[0-9A-Za-z+_-]+)*$'

# Run by an image's python3: prints "RSS_JUPYTERHUB=VERSION" of the jupyterhub
# package, or exits 3 if there is none (python3 >= 3.8: importlib.metadata).
readonly RSS_JUPYTERHUB_PY='import sys
try:
    from importlib.metadata import PackageNotFoundError, version
except ImportError:
    sys.exit("its python3 is older than 3.8")
try:
    print("RSS_JUPYTERHUB=" + version("jupyterhub"))
except PackageNotFoundError:
    sys.exit(3)'

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
# before "--" are accepted; a name written "name[]" may be repeated, and its
# values go in order into the caller's array of that name (which the caller
# declares empty). -h/--help prints the caller's usage and exits.
# Arguments: names..., --, the script's arguments
#######################################
parse_options() {
  local -A allowed=() repeats=()
  local name
  while [[ "$1" != -- ]]; do
    allowed[${1%'[]'}]=$1
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
    if [[ "${allowed[${name}]}" == *'[]' ]]; then
      printf -v "${name//-/_}[${repeats[${name}]:-0}]" '%s' "${2?"$1 needs a value"}"
      repeats[${name}]=$((${repeats[${name}]:-0} + 1))
    else
      printf -v "${name//-/_}" '%s' "${2?"$1 needs a value"}"
    fi
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
# Check that a value looks like a Python package's version (6.1.1, 5.0.0b1,
# 6.2.0.dev0: digits first, then dot-separated words), or die with usage.
# Arguments: option name, value
#######################################
require_version() {
  [[ "$2" =~ ${RSS_VERSION_RE} ]] || die "${RSS_EXIT_USAGE}" "$1 needs a version such as 6.1.1, got '$2'"
}

#######################################
# Print the version of the jupyterhub package an image carries, asking its
# python3 (importlib.metadata) through `exec`, with no stdin, within SECONDS
# (coreutils timeout). The container's output, stderr too, is captured, never
# passed on. Prints "none" if python3 ran and has no jupyterhub package.
# Arguments: seconds, image, the words that run `exec` up to the image
#   (the launcher's, if any, the runtime, "exec", exec options...)
# Outputs: the version or "none"; if it could not tell (the runtime failed,
#   no python3, no answer in time), a short reason instead
# Returns: 0 if it could tell, 1 if not
#######################################
image_jupyterhub() {
  local seconds="$1" image="$2" out status=0 line version="" last=""
  shift 2
  out=$(timeout -k 5 "${seconds}" "$@" "${image}" python3 -B -c "${RSS_JUPYTERHUB_PY}" </dev/null 2>&1) \
    || status=$?
  while IFS= read -r line; do
    if [[ "${line}" == RSS_JUPYTERHUB=* ]]; then version=${line#RSS_JUPYTERHUB=}; fi
    if [[ "${line}" == *[![:space:]]* ]]; then last=${line}; fi
  done <<<"${out}"
  if ((status == 0)) && [[ "${version}" =~ ${RSS_VERSION_RE} ]]; then
    printf '%s' "${version}"
    return 0
  fi
  case "${status}" in
    0) last="its python3 answered no version" ;;
    3) printf 'none'; return 0 ;;
    124 | 137) last="no answer within ${seconds}s" ;;
    *)
      [[ "${last}" =~ ^(FATAL|ERROR):[[:space:]]*(.*)$ ]] && last=${BASH_REMATCH[2]}
      [[ -n "${last}" ]] || last="exit status ${status}"
      ;;
  esac
  printf '%s' "${last:0:300}"
  return 1
}

#######################################
# Compare the Hub's jupyterhub version with an image's (the one place of this
# rule): the major version is the first component, the minor the digits at
# the start of the second (6.2.0.dev0: 6 and 2; 5.0.0b1: 5 and 0).
# Arguments: the Hub's version, the image's
# Outputs: "same" (same major and minor), "minor" (same major, another
#   minor), "major" (another major), or "unknown" if one is no version
#   ("none", "")
#######################################
jupyterhub_match() {
  local hub="$1" image="$2"
  if [[ ! "${hub}" =~ ${RSS_VERSION_RE} || ! "${image}" =~ ${RSS_VERSION_RE} ]]; then
    printf 'unknown'
  elif [[ "${hub%%.*}" != "${image%%.*}" ]]; then
    printf 'major'
  elif [[ "$(minor_digits "${hub}")" != "$(minor_digits "${image}")" ]]; then
    printf 'minor'
  else
    printf 'same'
  fi
}

# The digits at the start of a version's second component ("" if none).
minor_digits() {
  local rest=""
  [[ "$1" != *.* ]] || rest=${1#*.}
  rest=${rest%%[!0-9]*}
  printf '%s' "${rest}"
}

#######################################
# Look IMAGE up in the version cache FILE: lines "SIZE MTIME VERSION PATH"
# (the path last, spaces and all), each valid while the image's size and
# modification time (stat -L: a symlink's target; a sandbox's directory)
# are those. The only process it starts is one `stat`. Sets
# VERSION_CACHE_KEY ("SIZE MTIME", or "" if the image cannot be stat'ed)
# for version_cache_put, and VERSION_CACHE_HIT (the version or "none").
# Arguments: cache file, image
# Returns: 0 on a hit, 1 on a miss
#######################################
version_cache_get() {
  local file="$1" image="$2" line
  VERSION_CACHE_HIT=""
  VERSION_CACHE_KEY=$(stat -L -c '%s %Y' -- "${image}" 2>/dev/null) || VERSION_CACHE_KEY=""
  [[ -n "${VERSION_CACHE_KEY}" && -r "${file}" ]] || return 1
  while IFS= read -r line; do
    if [[ "${line}" == "${VERSION_CACHE_KEY} "* && "${line#* * * }" == "${image}" ]]; then
      line=${line#"${VERSION_CACHE_KEY} "}
      line=${line%% *}
      [[ "${line}" == none || "${line}" =~ ${RSS_VERSION_RE} ]] || return 1
      VERSION_CACHE_HIT=${line}
      return 0
    fi
  done <"${file}"
  return 1
}

#######################################
# Record in the version cache FILE what IMAGE carries (a version or "none";
# never "could not tell"), keyed on VERSION_CACHE_KEY from the
# version_cache_get just before. The file is replaced whole (a private
# temporary file beside it, then mv), without the image's stale line.
# Arguments: cache file, image, version
# Returns: 1 if the file could not be written
#######################################
version_cache_put() {
  local file="$1" image="$2" version="$3" tmp line
  [[ -n "${VERSION_CACHE_KEY}" && "${image}" != *$'\n'* ]] || return 0
  tmp=$(mktemp -- "${file}.XXXXXX" 2>/dev/null) || return 1
  if {
    if [[ -r "${file}" ]]; then
      while IFS= read -r line; do
        if [[ "${line}" =~ ^[0-9]+\ [0-9]+\ [^\ ]+\ (.+)$ && "${BASH_REMATCH[1]}" != "${image}" ]]; then
          printf '%s\n' "${line}"
        fi
      done <"${file}"
    fi
    printf '%s %s %s\n' "${VERSION_CACHE_KEY}" "${version}" "${image}"
  } >"${tmp}" 2>/dev/null && mv -f -- "${tmp}" "${file}" 2>/dev/null; then
    return 0
  fi
  rm -f -- "${tmp}"
  return 1
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
