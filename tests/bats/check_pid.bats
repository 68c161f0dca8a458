#!/usr/bin/env bats
# check_pid.sh: running only if alive, not a zombie, and the same process.
# SC2154: bats' `run --separate-stderr` assigns stderr.
# shellcheck disable=SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

@test "a running server is reported running" {
  start_ok
  run -0 bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "${START}"
  [ "${output}" = '{"running": true}' ]
}

@test "a different start time (PID reused) is reported not running" {
  start_ok
  run -3 bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "$((START + 1))"
  [ "${output}" = '{"running": false}' ]
}

@test "a dead server is reported not running" {
  start_ok
  kill -KILL -- "-${PID}"
  for _ in $(seq 50); do [ -e "/proc/${PID}" ] || break; sleep 0.1; done
  run -3 bash "${SCRIPTS}/check_pid.sh" --pid "${PID}" --start-time "${START}"
}

@test "a zombie is reported not running" {
  # The child exits; its parent (now sleep) never reaps it.
  bash -c 'sleep 0.2 & exec sleep 1000' &
  local parent=$!
  track_pid "${parent}"
  sleep 0.8
  local zombie
  zombie=$(ps -o pid= --ppid "${parent}" | tr -d ' ')
  [ "$(stat_field "${zombie}" 3)" = Z ]
  run -3 bash "${SCRIPTS}/check_pid.sh" --pid "${zombie}" --start-time "$(stat_field "${zombie}" 22)"
  kill "${parent}"
}

@test "arguments are checked" {
  run -64 --separate-stderr bash "${SCRIPTS}/check_pid.sh" --pid 'x;id' --start-time 1
  [[ "${stderr}" == *"--pid needs a non-negative integer"* ]]
}
