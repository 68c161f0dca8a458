#!/usr/bin/env bash
#
# Put files on this node from stdin, atomically: the node scripts for the
# spawner, the node-wide copy for `invoke deploy`, or private files (internal
# TLS certificates). Fed on stdin after common.sh (`bash -s -- ACTION ...`),
# followed by the files as NUL-separated NAME, CONTENT records; nothing
# travels by SFTP. Prints one JSON line.
#
#   scripts --user-dir DIR --version V [--node-dir DIR] [--payload]
#       Where this version of the scripts runs from: the node-wide DIR when it
#       holds version V and is safe (see node_wide_problem in common.sh), else
#       the user's DIR (relative paths are under $HOME). With --payload the
#       scripts follow on stdin and the user's copy is written if missing;
#       without, a missing copy is exit code 9 (NO_SCRIPTS).
#       {"dir": DIR, "written": true|false, "node_dir_problem": TEXT}
#   install --dir DIR --version V
#       Write the scripts from stdin into DIR for every user (0755/0644),
#       replacing what is there. {"dir": DIR, "written": true}
#   put --dir DIR
#       Replace DIR by the files from stdin, for the user's eyes only (0600
#       in 0700, also while being written). {"dir": ABSOLUTE DIR}
#   remove --dir DIR
#       Remove DIR and the files in it; nothing to do if gone. {"removed": true}
#
# A directory that cannot be made or a file that cannot be written (a full or
# read-only home) is exit code 10 (CANNOT_WRITE) with the reason.
set -euo pipefail
umask 077
RSS_NAME=put_files.sh  # for die(): fed on stdin, $0 is "bash"

# Fed on stdin, common.sh came first.
# shellcheck source-path=SCRIPTDIR source=common.sh
[[ -n "${RSS_EXIT_OK+x}" ]] || source "${BASH_SOURCE[0]%/*}/common.sh"

usage() {
  cat <<'USAGE'
Usage: put_files.sh scripts --user-dir DIR --version V [--node-dir DIR] [--payload]
       put_files.sh install --dir DIR --version V
       put_files.sh put --dir DIR
       put_files.sh remove --dir DIR
stdin (scripts --payload, install, put): NAME NUL CONTENT NUL ...
USAGE
}

# shellcheck disable=SC2317  # called through try_write
write_file() {
  printf '%s' "$2" >"$1"
}

#######################################
# Read the NAME, CONTENT records on stdin into a new directory beside DIR
# (mode MODE from the start) and print its path. Dies on a bad name or a
# write that fails. Missing parents are made with the umask's mode.
# Arguments: dir, mode
#######################################
receive() {
  local dir="$1" mode="$2" staging name content
  if [[ "${dir}" == */* && ! -d "${dir%/*}" ]]; then
    try_write "create the directory ${dir%/*}" mkdir -p -- "${dir%/*}"
  fi
  staging="${dir}.tmp-${RANDOM}${RANDOM}"
  try_write "create the directory ${staging}" mkdir -m "${mode}" -- "${staging}"
  # receive runs in $(...): a transfer that fails half-way leaves no half-written copy.
  RSS_STAGING=${staging}
  trap 'remove_dir "${RSS_STAGING}"' EXIT
  while IFS= read -r -d '' name; do
    IFS= read -r -d '' content || die "${RSS_EXIT_BAD_INPUT}" "file ${name} arrived incomplete"
    [[ "${name}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] \
      || die "${RSS_EXIT_BAD_INPUT}" "invalid file name on stdin: '${name:0:40}'"
    try_write "write ${staging}/${name}" write_file "${staging}/${name}" "${content}"
  done
  trap - EXIT
  printf '%s\n' "${staging}"
}

#######################################
# Remove DIR and the files in it (not recursive: it holds files only).
#######################################
remove_dir() {
  [[ -d "$1" ]] || return 0
  rm -f -- "$1"/* "$1"/.[!.]* 2>/dev/null || true
  rmdir -- "$1"
}

#######################################
# Die unless the scripts in STAGING are version V; then make them DIR. With
# "keep", a DIR that already holds version V stays (another start of this
# user may have put it there meanwhile, and may be running from it); with
# "replace" it is replaced too (deploy: its owner or modes may be wrong).
# Arguments: staging, dir, version, keep|replace
#######################################
settle() {
  local staging="$1" dir="$2" version="$3" found aside
  found=$(bundle_version "${staging}")
  if [[ "${found}" != "${version}" ]]; then
    remove_dir "${staging}"
    die "${RSS_EXIT_BAD_INPUT}" "the scripts arrived as version ${found}, not ${version}"
  fi
  if mv -T -- "${staging}" "${dir}" 2>/dev/null; then
    return 0
  fi
  if [[ "$4" == keep && "$(bundle_version "${dir}")" == "${version}" ]]; then
    remove_dir "${staging}"
    return 0
  fi
  aside="${dir%/*}/.${dir##*/}.old-${RANDOM}${RANDOM}"
  try_write "replace ${dir}" mv -T -- "${dir}" "${aside}"
  mv -T -- "${staging}" "${dir}"
  remove_dir "${aside}"
}

find_scripts() {
  local user_dir="$1" version="$2" node_dir="$3" payload="$4" problem="" written=false staging
  if [[ -n "${payload}" ]]; then
    staging=$(receive "${user_dir}" 700)  # all of stdin, whatever is done with it
  fi
  if [[ -n "${node_dir}" ]]; then
    problem=$(node_wide_problem "${node_dir}")
    if [[ -z "${problem}" && "$(bundle_version "${node_dir}")" != "${version}" ]]; then
      problem="${node_dir} does not hold version ${version}"
    fi
    if [[ -z "${problem}" ]]; then
      [[ -z "${payload}" ]] || remove_dir "${staging}"
      printf '{"dir": %s, "written": false, "node_dir_problem": ""}\n' "$(json_str "${node_dir}")"
      return 0
    fi
  fi
  if [[ -d "${user_dir}" && "$(bundle_version "${user_dir}")" == "${version}" ]]; then
    [[ -z "${payload}" ]] || remove_dir "${staging}"
  elif [[ -z "${payload}" ]]; then
    printf '{"missing": true}\n'
    return "${RSS_EXIT_NO_SCRIPTS}"
  else
    settle "${staging}" "${user_dir}" "${version}" keep
    written=true
  fi
  printf '{"dir": %s, "written": %s, "node_dir_problem": %s}\n' \
    "$(json_str "${user_dir}")" "${written}" "$(json_str "${problem}")"
}

main() {
  local action="${1:-}" dir="" user_dir="" node_dir="" version="" payload="" staging
  (($#)) && shift
  while (($#)); do
    case "$1" in
      --dir) dir="${2?}"; shift 2 ;;
      --user-dir) user_dir="${2?}"; shift 2 ;;
      --node-dir) node_dir="${2?}"; shift 2 ;;
      --version) version="${2?}"; shift 2 ;;
      --payload) payload=yes; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
    esac
  done
  cd "${HOME}"
  case "${action}" in
    scripts)
      [[ -n "${user_dir}" && "${version}" =~ ^[0-9a-f]{16}$ ]] \
        || die "${RSS_EXIT_USAGE}" "scripts needs --user-dir and a --version"
      find_scripts "${user_dir%/}" "${version}" "${node_dir%/}" "${payload}"
      ;;
    install)
      [[ "${dir}" == /* && "${version}" =~ ^[0-9a-f]{16}$ ]] \
        || die "${RSS_EXIT_USAGE}" "install needs an absolute --dir and a --version"
      dir=${dir%/}
      umask 022  # for every user: directories 0755, files 0644
      staging=$(receive "${dir}" 755)
      settle "${staging}" "${dir}" "${version}" replace
      printf '{"dir": %s, "written": true}\n' "$(json_str "${dir}")"
      ;;
    put)
      [[ -n "${dir}" ]] || die "${RSS_EXIT_USAGE}" "put needs --dir"
      dir=${dir%/}
      staging=$(receive "${dir}" 700)
      remove_dir "${dir}"
      mv -T -- "${staging}" "${dir}"
      printf '{"dir": %s}\n' "$(json_str "$(cd -- "${dir}" && pwd -P)")"
      ;;
    remove)
      [[ -n "${dir}" ]] || die "${RSS_EXIT_USAGE}" "remove needs --dir"
      remove_dir "${dir%/}"
      printf '{"removed": true}\n'
      ;;
    -h | --help) usage ;;
    *) die "${RSS_EXIT_USAGE}" "unknown action '${action}' (see --help)" ;;
  esac
}

# Fed on stdin, bash would read on after main: what follows is data, never to run.
main "$@"; exit
