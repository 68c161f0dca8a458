#!/usr/bin/env bats
# stop.sh: TERM, then KILL; everything the server started goes; idempotent.
# SC2030,SC2031: each @test runs in a subshell of its own; shellcheck sees them as one.
# shellcheck disable=SC2030,SC2031

bats_require_minimum_version 1.5.0

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

stop_server() {
  bash "${SCRIPTS}/stop.sh" --pid "${PID}" --start-time "${START}" --server-dir "${SERVER_DIR}" "$@"
}

@test "SIGTERM stops the server; nothing of it is left; the pidfile goes" {
  start_ok
  run -0 --separate-stderr stop_server
  [ "${output}" = '{"stopped": true, "signal": "TERM"}' ]
  [ -z "$(group_alive "${PID}")" ]
  [ ! -e "${HOME}/${SERVER_DIR}/server.pid" ]
  run ! curl -fsS "http://127.0.0.1:${PORT}/"
}

@test "a server ignoring SIGTERM is killed after --term-timeout" {
  export FAKE_IGNORE_TERM=1
  start_ok
  SECONDS=0
  run -0 --separate-stderr stop_server --term-timeout 1 --kill-timeout 2
  [ "${output}" = '{"stopped": true, "signal": "KILL"}' ]
  ((SECONDS <= 4))
  [ -z "$(group_alive "${PID}")" ]
}

@test "processes the server started in their own session go too" {
  export FAKE_CHILD_SESSION=1 FAKE_IGNORE_TERM=1
  start_ok
  # The server's `sleep 1000`, in a session of its own: find it among the
  # server's descendants and record it, should stop.sh leave it behind.
  local pid start sleeper="" sleeper_start=""
  for _ in $(seq 50); do
    while read -r pid start; do
      if [[ "$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" == "sleep 1000 " ]]; then
        sleeper=${pid} sleeper_start=${start}
      fi
    done < <(descendants "${PID}")
    [[ -z "${sleeper}" ]] || break
    sleep 0.1
  done
  [ -n "${sleeper}" ]
  track_pid "${sleeper}"
  run -0 --separate-stderr stop_server --term-timeout 1 --kill-timeout 2
  run ! alive "${sleeper}" "${sleeper_start}"
}

@test "stopping a server that is gone succeeds, twice" {
  start_ok
  run -0 stop_server
  run -0 stop_server
  [ "${output}" = '{"stopped": true, "signal": "none"}' ]
}

@test "a PID now used by another process (other start time) is left alone" {
  sleep 1000 &
  local newcomer=$!
  track_pid "${newcomer}"
  PID=${newcomer}
  START=$(($(stat_field "${newcomer}" 22) - 5))
  run -0 stop_server --term-timeout 1
  [ "${output}" = '{"stopped": true, "signal": "none"}' ]
  kill -0 "${newcomer}"
  kill "${newcomer}"
}
