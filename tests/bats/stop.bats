#!/usr/bin/env bats
# stop.sh: TERM, then KILL; everything the server started goes; idempotent.

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

stop_server() {
  bash "${SCRIPTS}/stop.sh" --pid "${PID}" --start-time "${START}" --server-dir "${SERVER_DIR}" "$@"
}

@test "SIGTERM stops the server; nothing of it is left; the pidfile goes" {
  start_ok
  run --separate-stderr stop_server
  [ "${status}" -eq 0 ]
  [ "${output}" = '{"stopped": true, "signal": "TERM"}' ]
  [ -z "$(group_alive "${PID}")" ]
  [ ! -e "${HOME}/${SERVER_DIR}/server.pid" ]
  run curl -fsS "http://127.0.0.1:${PORT}/"
  [ "${status}" -ne 0 ]
}

@test "a server ignoring SIGTERM is killed after --term-timeout" {
  export FAKE_IGNORE_TERM=1
  start_ok
  SECONDS=0
  run --separate-stderr stop_server --term-timeout 1 --kill-timeout 2
  [ "${status}" -eq 0 ]
  [ "${output}" = '{"stopped": true, "signal": "KILL"}' ]
  ((SECONDS <= 4))
  [ -z "$(group_alive "${PID}")" ]
}

@test "processes the server started in their own session go too" {
  export FAKE_CHILD_SESSION=1 FAKE_IGNORE_TERM=1
  start_ok
  for _ in $(seq 50); do pgrep -f "sleep 1000" >/dev/null && break; sleep 0.1; done
  pgrep -f "sleep 1000"
  run --separate-stderr stop_server --term-timeout 1 --kill-timeout 2
  [ "${status}" -eq 0 ]
  ! pgrep -f "sleep 1000"
}

@test "stopping a server that is gone succeeds, twice" {
  start_ok
  run stop_server
  [ "${status}" -eq 0 ]
  run stop_server
  [ "${status}" -eq 0 ]
  [ "${output}" = '{"stopped": true, "signal": "none"}' ]
}

@test "a PID now used by another process (other start time) is left alone" {
  sleep 1000 &
  newcomer=$!
  PID=${newcomer}
  START=$(($(stat_field "${newcomer}" 22) - 5))
  run stop_server --term-timeout 1
  [ "${status}" -eq 0 ]
  [ "${output}" = '{"stopped": true, "signal": "none"}' ]
  kill -0 "${newcomer}"
  kill "${newcomer}"
}
