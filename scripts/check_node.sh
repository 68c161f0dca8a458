#!/usr/bin/env bash
#
# Inspect a node for `invoke check` and `invoke deploy`: the container
# runtime and its version, the image, and the node-wide copy of the scripts.
# Changes nothing. Prints one JSON line:
#
#   {"runtime": PATH or "", "runtime_version": first line of --version,
#    "image": "ok" | "missing" | "unreadable", "image_for_all": true|false,
#    "scripts": "missing" | "ok" | "unsafe", "scripts_problem": TEXT,
#    "scripts_sums": "NAME=SHA256 NAME=SHA256 ..."}
#
# "unsafe": the directory, a parent of it or a file in it is not owned by
# root or is writable by group or others, so the spawner will not use it.
# Runs as a file (it sources common.sh beside it), or fed on stdin after
# common.sh (`bash -s -- ARGS`), which is how deploy.py runs it.
set -euo pipefail
umask 077

if [[ -z "${RSS_EXIT_OK+x}" ]]; then
  # shellcheck source-path=SCRIPTDIR source=common.sh
  source "${BASH_SOURCE[0]%/*}/common.sh"
fi

usage() {
  printf 'Usage: check_node.sh --exe SINGULARITY --image IMAGE --scripts-dir DIR\n'
  printf '  DIR: the node-wide directory of one scripts version (absolute)\n'
}

#######################################
# True if users other than the owner and group can read PATH (a file or a
# directory) and search every directory above it.
#######################################
readable_by_all() {
  local path="$1" mode
  mode=$(stat -L -c '%a' -- "${path}") || return 1
  ((8#${mode} & 8#004)) || return 1
  path=${path%/*}
  while [[ -n "${path}" ]]; do
    mode=$(stat -L -c '%a' -- "${path}") || return 1
    ((8#${mode} & 8#001)) || return 1
    path=${path%/*}
  done
}

#######################################
# Print why PATH may not be trusted (not root's, or group/other writable);
# print nothing if it may.
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
# Check DIR, its parents and its files. Sets SCRIPTS_STATE, SCRIPTS_PROBLEM
# and SCRIPTS_SUMS.
#######################################
inspect_scripts() {
  local dir="$1" path file problem="" sum
  SCRIPTS_STATE=missing
  SCRIPTS_PROBLEM=""
  SCRIPTS_SUMS=""
  [[ -d "${dir}" ]] || return 0
  path=${dir}
  while [[ -n "${path}" && -z "${problem}" ]]; do
    problem=$(untrusted_because "${path}")
    path=${path%/*}
  done
  for file in "${dir}"/*; do
    [[ -f "${file}" ]] || continue
    [[ -n "${problem}" ]] || problem=$(untrusted_because "${file}")
    read -r sum _ < <(sha256sum -- "${file}")
    SCRIPTS_SUMS+="${SCRIPTS_SUMS:+ }${file##*/}=${sum}"
  done
  SCRIPTS_STATE=ok
  if [[ -n "${problem}" ]]; then
    SCRIPTS_STATE=unsafe
    SCRIPTS_PROBLEM=${problem}
  fi
}

main() {
  local exe="" image="" scripts_dir=""
  while (($#)); do
    case "$1" in
      --exe) exe="${2?}"; shift 2 ;;
      --image) image="${2?}"; shift 2 ;;
      --scripts-dir) scripts_dir="${2?}"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
    esac
  done
  [[ -n "${exe}" && "${image}" == /* && "${scripts_dir}" == /* ]] \
    || die "${RSS_EXIT_USAGE}" "--exe, an absolute --image and an absolute --scripts-dir are required"

  local runtime="" version="" out
  if runtime=$(command -v -- "${exe}"); then
    out=$(timeout 30 "${exe}" --version 2>&1 </dev/null) || true
    version=${out%%$'\n'*}
  else
    runtime=""
  fi

  local image_state=ok for_all=false
  if [[ ! -e "${image}" ]]; then
    image_state=missing
  elif [[ ! -r "${image}" || (-d "${image}" && ! -x "${image}") ]]; then
    image_state=unreadable
  fi
  if [[ "${image_state}" == ok ]] && readable_by_all "${image}"; then
    for_all=true
  fi

  inspect_scripts "${scripts_dir}"
  printf '{"runtime": %s, "runtime_version": %s, "image": %s, "image_for_all": %s, ' \
    "$(json_str "${runtime}")" "$(json_str "${version}")" "$(json_str "${image_state}")" "${for_all}"
  printf '"scripts": %s, "scripts_problem": %s, "scripts_sums": %s}\n' \
    "$(json_str "${SCRIPTS_STATE}")" "$(json_str "${SCRIPTS_PROBLEM}")" "$(json_str "${SCRIPTS_SUMS}")"
}

main "$@"
