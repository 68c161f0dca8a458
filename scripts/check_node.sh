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
RSS_NAME=check_node.sh  # for die(): fed on stdin, $0 is "bash"

# Fed on stdin, common.sh came first.
# shellcheck source-path=SCRIPTDIR source=common.sh
[[ -n "${RSS_EXIT_OK+x}" ]] || source "${BASH_SOURCE[0]%/*}/common.sh"

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
# Check DIR, its parents and its files. Sets SCRIPTS_STATE, SCRIPTS_PROBLEM
# and SCRIPTS_SUMS.
#######################################
inspect_scripts() {
  local dir="$1" file problem sum
  SCRIPTS_STATE=missing
  SCRIPTS_PROBLEM=""
  SCRIPTS_SUMS=""
  [[ -d "${dir}" ]] || return 0
  problem=$(node_wide_problem "${dir}")
  for file in "${dir}"/*; do
    [[ -f "${file}" ]] || continue
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
  parse_options exe image scripts-dir -- "$@"
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

# Fed on stdin, bash would read on after main: nothing that follows is to run.
main "$@"; exit
