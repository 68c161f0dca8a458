#!/usr/bin/env bats
# check_pid.sh: running only if alive, not a zombie, and the same process.

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

@test "a running server is reported running" {
  start_ok
  run bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "${START}"
  [ "${status}" -eq 0 ]
  [ "${output}" = '{"running": true}' ]
}

@test "a different start time (PID reused) is reported not running" {
  start_ok
  run bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "$((START + 1))"
  [ "${status}" -eq 3 ]
  [ "${output}" = '{"running": false}' ]
}

@test "a dead server is reported not running" {
  start_ok
  kill -KILL -- "-${PID}"
  for _ in $(seq 50); do [ -e "/proc/${PID}" ] || break; sleep 0.1; done
  run bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "${START}"
  [ "${status}" -eq 3 ]
}

@test "a zombie is reported not running" {
  # The child exits; its parent (now sleep) never reaps it.
  bash -c 'sleep 0.2 & exec sleep 1000' &
  parent=$!
  sleep 0.8
  zombie=$(ps -o pid= --ppid "${parent}" | tr -d ' ')
  [ "$(stat_field "${zombie}" 3)" = Z ]
  run bash "${SCRIPTS}/check_pid.sh" --pid "${zombie}" --start-time "$(stat_field "${zombie}" 22)"
  kill "${parent}"
  [ "${status}" -eq 3 ]
}

@test "arguments are checked" {
  run --separate-stderr bash "${SCRIPTS}/check_pid.sh" --pid 'x;id' --start-time 1
  [ "${status}" -eq 64 ]
  [[ "${stderr}" == *"--pid needs a non-negative integer"* ]]
}
