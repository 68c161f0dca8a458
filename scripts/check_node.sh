#!/usr/bin/env bash
#
# Inspect a node for `invoke check` and `invoke deploy`: on a compute node
# the container runtime and its version and the image; on a Slurm submit
# host the Slurm client and the nodes sinfo lists; on both the node-wide
# copy of the scripts. Changes nothing. Prints one JSON line:
#
#   {"runtime": PATH or "", "runtime_version": first line of --version,
#    "image": "ok" | "missing" | "unreadable", "image_for_all": true|false,
#    "srun": PATH or "" (a server in a Slurm job starts with it),
#                                                       (role compute)
#    "slurm_missing": "sbatch squeue ..." (those not on PATH, or ""),
#    "sinfo": "ok" | "failed" | "missing", "sinfo_error": its stderr,
#    "slurm_nodes": ["NAME|NODEADDR", ...] (one per node and partition),
#                                                       (role submit)
#    "scripts": "missing" | "ok" | "unsafe", "scripts_problem": TEXT,
#    "scripts_sums": "NAME=SHA256 NAME=SHA256 ..."}
#
# The node names and addresses are sinfo's, reported as they are: the
# caller validates them.
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

# What users run on a submit host (placement slurm).
readonly SLURM_CLIENT=(sbatch squeue scancel sinfo)

usage() {
  printf 'Usage: check_node.sh [--role compute] --exe SINGULARITY --image IMAGE --scripts-dir DIR\n'
  printf '       check_node.sh --role submit --scripts-dir DIR\n'
  printf '       check_node.sh --role submit,compute --exe SINGULARITY --image IMAGE --scripts-dir DIR\n'
  printf '  compute: the runtime and the image (absolute) for the servers\n'
  printf '  submit: the Slurm client (%s on PATH) and the nodes sinfo lists\n' "${SLURM_CLIENT[*]}"
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

#######################################
# Print the compute node's fields of the reply (each followed by ", "):
# the runtime EXE and its version, and the IMAGE.
#######################################
runtime_and_image() {
  local exe="$1" image="$2" runtime="" version="" out
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
  local srun
  srun=$(command -v srun) || srun=""
  printf '"runtime": %s, "runtime_version": %s, "image": %s, "image_for_all": %s, "srun": %s, ' \
    "$(json_str "${runtime}")" "$(json_str "${version}")" "$(json_str "${image_state}")" "${for_all}" \
    "$(json_str "${srun}")"
}

#######################################
# Print the submit host's fields of the reply (each followed by ", "): the
# Slurm client commands missing from PATH, and each line of
# `sinfo -h -N -o '%N|%o'` (node name and NodeAddr) or why it failed.
#######################################
slurm_client() {
  local command missing="" state=ok error="" out="" line nodes="" err_file
  for command in "${SLURM_CLIENT[@]}"; do
    command -v -- "${command}" >/dev/null || missing+="${missing:+ }${command}"
  done
  if ! command -v sinfo >/dev/null; then
    state=missing
  else
    err_file=$(mktemp) || die "${RSS_EXIT_CANNOT_WRITE}" "cannot create a temporary file"
    out=$(timeout 30 sinfo -h -N -o '%N|%o' 2>"${err_file}" </dev/null) || state=failed
    error=$(<"${err_file}")
    rm -f -- "${err_file}"
  fi
  if [[ "${state}" == ok ]]; then
    while IFS= read -r line; do
      [[ -z "${line}" ]] || nodes+="${nodes:+, }$(json_str "${line}")"
    done <<<"${out}"
  fi
  printf '"slurm_missing": %s, "sinfo": %s, "sinfo_error": %s, "slurm_nodes": [%s], ' \
    "$(json_str "${missing}")" "$(json_str "${state}")" "$(json_str "${error}")" "${nodes}"
}

main() {
  local role=compute exe="" image="" scripts_dir=""
  parse_options role exe image scripts-dir -- "$@"
  [[ "${role}" =~ ^(compute|submit|submit,compute)$ ]] \
    || die "${RSS_EXIT_USAGE}" "--role must be compute, submit or submit,compute"
  if [[ "${role}" == *compute ]]; then
    [[ -n "${exe}" && "${image}" == /* && "${scripts_dir}" == /* ]] \
      || die "${RSS_EXIT_USAGE}" "--exe, an absolute --image and an absolute --scripts-dir are required"
  fi
  [[ "${scripts_dir}" == /* ]] || die "${RSS_EXIT_USAGE}" "an absolute --scripts-dir is required"

  local reply="{"
  if [[ "${role}" == *compute ]]; then reply+=$(runtime_and_image "${exe}" "${image}"); fi
  if [[ "${role}" == submit* ]]; then reply+=$(slurm_client); fi
  inspect_scripts "${scripts_dir}"
  printf '%s"scripts": %s, "scripts_problem": %s, "scripts_sums": %s}\n' "${reply}" \
    "$(json_str "${SCRIPTS_STATE}")" "$(json_str "${SCRIPTS_PROBLEM}")" "$(json_str "${SCRIPTS_SUMS}")"
}

# Fed on stdin, bash would read on after main: nothing that follows is to run.
main "$@"; exit
