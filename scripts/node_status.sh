#!/usr/bin/env bash
#
# Describe this node for the spawn form: how busy it is and how many
# Jupyter servers run on it. Runs as the user who opens the form, so it
# counts the servers that user can see in /proc (with hidepid, their own).
# Prints one JSON line and exits 0:
#   {"load": 0.42, "cpus": 8, "mem_available_kib": N, "mem_total_kib": N,
#    "servers": N, "my_servers": N}
set -euo pipefail
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

# /proc/PID/comm of jupyterhub-singleuser (the kernel keeps 15 characters).
readonly SERVER_COMM="jupyterhub-sing"

usage() {
  printf 'Usage: node_status.sh\n'
}

#######################################
# Print field 2 (kB) of the /proc/meminfo line named $1, or 0.
#######################################
meminfo_kib() {
  local name value _
  while read -r name value _; do
    if [[ "${name}" == "$1:" ]]; then
      printf '%s\n' "${value}"
      return 0
    fi
  done </proc/meminfo
  printf '0\n'
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
  esac
  local load _ dir comm owner
  read -r load _ </proc/loadavg
  local servers=0 my_servers=0 me
  me=$(id -u)
  for dir in /proc/[0-9]*; do
    { read -r comm <"${dir}/comm"; } 2>/dev/null || continue
    [[ "${comm}" == "${SERVER_COMM}" ]] || continue
    is_alive "${dir#/proc/}" || continue
    servers=$((servers + 1))
    owner=$(stat -c %u -- "${dir}" 2>/dev/null) || continue
    if [[ "${owner}" == "${me}" ]]; then my_servers=$((my_servers + 1)); fi
  done
  printf '{"load": %s, "cpus": %s, "mem_available_kib": %s, "mem_total_kib": %s, ' \
    "${load}" "$(nproc)" "$(meminfo_kib MemAvailable)" "$(meminfo_kib MemTotal)"
  printf '"servers": %s, "my_servers": %s}\n' "${servers}" "${my_servers}"
}

main "$@"
