#!/usr/bin/env bash
#
# Tell whether a server started by start_singleuser.sh still runs.
#
# Running means: the PID exists, is not a zombie, and started at the
# recorded time (so a recycled PID is not mistaken for the server).
# Prints {"running": true|false} and exits 0 (running) or 3 (not running).
set -euo pipefail
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

usage() {
  printf 'Usage: check_pid.sh --pid PID --start-time TICKS\n'
}

main() {
  local pid="" start_time=""
  parse_options pid start-time -- "$@"
  require_uint --pid "${pid}"
  require_uint --start-time "${start_time}"
  if is_alive "${pid}" "${start_time}"; then
    printf '{"running": true}\n'
    return "${RSS_EXIT_OK}"
  fi
  printf '{"running": false}\n'
  return "${RSS_EXIT_NOT_RUNNING}"
}

main "$@"
