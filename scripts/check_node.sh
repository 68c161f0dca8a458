#!/usr/bin/env bash
#
# Inspect a node for `invoke check` and `invoke deploy`: on a compute node
# the container runtime and its version and the images, with the JupyterHub
# each carries; on a Slurm submit host the Slurm client and the nodes sinfo
# lists; on both the node-wide copy of the scripts. Changes nothing. Prints
# one JSON line:
#
#   {"runtime": PATH or "", "runtime_version": first line of --version,
#    "image": "ok" | "missing" | "unreadable", "image_for_all": true|false,
#                                        (the first --image's, as "images" says)
#    "images": [{"path": PATH, "state": "ok" | "missing" | "unreadable",
#                "for_all": true|false, "jupyterhub": VERSION | "none" | "",
#                "match": "same" | "minor" | "major" | "unknown",
#                "jupyterhub_problem": why "" (could not tell), or ""}, ...],
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
# Seconds an image may take to say which jupyterhub it carries.
readonly VERSION_TIMEOUT=120

usage() {
  printf 'Usage: check_node.sh [--role compute] --exe SINGULARITY --image IMAGE... --scripts-dir DIR\n'
  printf '                     [--hub-jupyterhub VERSION]\n'
  printf '       check_node.sh --role submit --scripts-dir DIR\n'
  printf '       check_node.sh --role submit,compute --exe SINGULARITY --image IMAGE... --scripts-dir DIR\n'
  printf '  compute: the runtime and the images (absolute; --image is repeatable) for the\n'
  printf '           servers, and the jupyterhub each image carries (its python3 is asked)\n'
  printf '  VERSION: the Hub'"'"'s jupyterhub, which each image'"'"'s is compared with\n'
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
# Set IMAGE_STATE (ok, missing or unreadable) and IMAGE_FOR_ALL (true if
# every user can read it) of IMAGE.
#######################################
image_state() {
  local image="$1"
  IMAGE_STATE=ok
  IMAGE_FOR_ALL=false
  if [[ ! -e "${image}" ]]; then
    IMAGE_STATE=missing
  elif [[ ! -r "${image}" || (-d "${image}" && ! -x "${image}") ]]; then
    IMAGE_STATE=unreadable
  fi
  if [[ "${IMAGE_STATE}" == ok ]] && readable_by_all "${image}"; then
    IMAGE_FOR_ALL=true
  fi
}

#######################################
# Print one entry of "images": IMAGE's state and the jupyterhub it carries,
# asked with RUNTIME ("" if there is none), compared with the Hub's VERSION
# ("" for no comparison).
# Arguments: runtime, the Hub's version, image
#######################################
image_entry() {
  local runtime="$1" hub="$2" image="$3" version="" problem="" answer
  image_state "${image}"
  if [[ "${IMAGE_STATE}" != ok ]]; then
    problem="the image is ${IMAGE_STATE}"
  elif [[ -z "${runtime}" ]]; then
    problem="no container runtime"
  elif answer=$(image_jupyterhub "${VERSION_TIMEOUT}" "${image}" "${runtime}" exec); then
    version=${answer}
  else
    problem=${answer}
  fi
  printf '{"path": %s, "state": %s, "for_all": %s, "jupyterhub": %s, "match": %s, "jupyterhub_problem": %s}' \
    "$(json_str "${image}")" "$(json_str "${IMAGE_STATE}")" "${IMAGE_FOR_ALL}" "$(json_str "${version}")" \
    "$(json_str "$(jupyterhub_match "${hub}" "${version}")")" "$(json_str "${problem}")"
}

#######################################
# Print the compute node's fields of the reply (each followed by ", "):
# the runtime EXE and its version, and the IMAGEs with the jupyterhub each
# carries (compared with the Hub's VERSION, if given).
# Arguments: runtime, the Hub's version or "", images...
#######################################
runtime_and_images() {
  local exe="$1" hub="$2" runtime="" version="" out image entries=""
  shift 2
  if runtime=$(command -v -- "${exe}"); then
    out=$(timeout 30 "${exe}" --version 2>&1 </dev/null) || true
    version=${out%%$'\n'*}
  else
    runtime=""
  fi
  for image in "$@"; do
    entries+="${entries:+, }$(image_entry "${runtime}" "${hub}" "${image}")"
  done
  image_state "$1"
  local srun
  srun=$(command -v srun) || srun=""
  printf '"runtime": %s, "runtime_version": %s, "image": %s, "image_for_all": %s, "images": [%s], "srun": %s, ' \
    "$(json_str "${runtime}")" "$(json_str "${version}")" "$(json_str "${IMAGE_STATE}")" "${IMAGE_FOR_ALL}" \
    "${entries}" "$(json_str "${srun}")"
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
  local role=compute exe="" scripts_dir="" hub_jupyterhub="" one
  local -a image=()
  parse_options role exe 'image[]' scripts-dir hub-jupyterhub -- "$@"
  [[ "${role}" =~ ^(compute|submit|submit,compute)$ ]] \
    || die "${RSS_EXIT_USAGE}" "--role must be compute, submit or submit,compute"
  if [[ "${role}" == *compute ]]; then
    [[ -n "${exe}" && "${image[0]:-}" == /* && "${scripts_dir}" == /* ]] \
      || die "${RSS_EXIT_USAGE}" "--exe, an absolute --image and an absolute --scripts-dir are required"
    for one in "${image[@]}"; do
      [[ "${one}" == /* ]] || die "${RSS_EXIT_USAGE}" "every --image must be absolute, got '${one}'"
    done
  fi
  [[ "${scripts_dir}" == /* ]] || die "${RSS_EXIT_USAGE}" "an absolute --scripts-dir is required"
  [[ -z "${hub_jupyterhub}" ]] || require_version --hub-jupyterhub "${hub_jupyterhub}"

  local reply="{"
  if [[ "${role}" == *compute ]]; then reply+=$(runtime_and_images "${exe}" "${hub_jupyterhub}" "${image[@]}"); fi
  if [[ "${role}" == submit* ]]; then reply+=$(slurm_client); fi
  inspect_scripts "${scripts_dir}"
  printf '%s"scripts": %s, "scripts_problem": %s, "scripts_sums": %s}\n' "${reply}" \
    "$(json_str "${SCRIPTS_STATE}")" "$(json_str "${SCRIPTS_PROBLEM}")" "$(json_str "${SCRIPTS_SUMS}")"
}

# Fed on stdin, bash would read on after main: nothing that follows is to run.
main "$@"; exit
