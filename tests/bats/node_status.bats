#!/usr/bin/env bats
# node_status.sh: the load, memory and servers the spawn form shows.

bats_require_minimum_version 1.5.0

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

status_field() {
  run -0 --separate-stderr bash "${SCRIPTS}/node_status.sh"
  json_field "${output}" "$1"
}

@test "answers one JSON line with the node's load, CPUs and memory" {
  # The kernel updates the load every 5 s: it is read before and after the script,
  # which must report one of the two.
  local before after _
  read -r before _ </proc/loadavg
  run -0 --separate-stderr bash "${SCRIPTS}/node_status.sh"
  read -r after _ </proc/loadavg
  [ "$(printf '%s\n' "${output}" | wc -l)" -eq 1 ]
  [ -z "${stderr}" ]
  local load
  load=$(json_field "${output}" load)
  [ "${load}" = "$(python3 -c "print(float('${before}'))")" ] \
    || [ "${load}" = "$(python3 -c "print(float('${after}'))")" ]
  [ "$(json_field "${output}" cpus)" = "$(nproc)" ]
  local total available
  total=$(json_field "${output}" mem_total_kib)
  available=$(json_field "${output}" mem_available_kib)
  [ "${total}" = "$(awk '$1 == "MemTotal:" {print $2}' /proc/meminfo)" ]
  ((0 < available && available <= total))
}

@test "counts running jupyterhub-singleuser processes, the caller's own apart" {
  # (Other users' servers may come and go meanwhile: only the caller's are counted exactly.)
  local mine_before
  mine_before=$(status_field my_servers)
  # A process whose name is jupyterhub-singleuser, as the container's server is.
  ln -s "$(command -v sleep)" "${BATS_TEST_TMPDIR}/jupyterhub-singleuser"
  "${BATS_TEST_TMPDIR}/jupyterhub-singleuser" 1000 3>&- &
  local fake_server=$!
  track_pid "${fake_server}"
  for _ in $(seq 50); do
    [ "$(cat "/proc/${fake_server}/comm")" = jupyterhub-sing ] && break
    sleep 0.1
  done
  run -0 --separate-stderr bash "${SCRIPTS}/node_status.sh"
  [ "$(json_field "${output}" my_servers)" -eq $((mine_before + 1)) ]
  (($(json_field "${output}" servers) >= $(json_field "${output}" my_servers)))
  kill "${fake_server}"
  wait "${fake_server}" || true
  [ "$(status_field my_servers)" -eq "${mine_before}" ]
}

@test "--help explains, an unknown option is a usage error" {
  run -0 bash "${SCRIPTS}/node_status.sh" --help
  [[ "${output}" == Usage:* ]]
  run -64 bash "${SCRIPTS}/node_status.sh" --bogus
}
