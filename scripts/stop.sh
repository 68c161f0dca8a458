#!/usr/bin/env bash
#
# Stop a server started by start_singleuser.sh, and everything it started.
#
# SIGTERM to the server's process group (the runtime parent forwards it to
# the container), wait up to --term-timeout, then SIGKILL to the group and to
# every process that descended from the server (kernels that started their
# own session included), wait up to --kill-timeout. A PID that now belongs
# to another process (different start time) is left alone. Idempotent:
# stopping a server that is gone succeeds.
# Prints {"stopped": true, "signal": "none|TERM|KILL"} and exits 0, or exits 8
# if something survived.
set -euo pipefail
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

usage() {
  cat <<'USAGE'
Usage: stop.sh --pid PID --start-time TICKS [--server-dir DIR]
               [--term-timeout SECONDS] [--kill-timeout SECONDS]
USAGE
}

main() {
  local pid="" start_time="" server_dir="" term_timeout=10 kill_timeout=5
  parse_options pid start-time server-dir term-timeout kill-timeout -- "$@"
  require_uint --pid "${pid}"
  require_uint --start-time "${start_time}"
  require_uint --term-timeout "${term_timeout}"
  require_uint --kill-timeout "${kill_timeout}"
  cd "${HOME}"

  stop_server "${pid}" "${start_time}" "${term_timeout}" "${kill_timeout}" \
    || die "${RSS_EXIT_STOP_FAILED}" "still running after SIGKILL: ${STOP_SURVIVORS}"
  if [[ -n "${server_dir}" ]]; then
    rm -f -- "${server_dir}/server.pid"
  fi
  printf '{"stopped": true, "signal": "%s"}\n' "${STOP_SIGNAL}"
}

main "$@"
