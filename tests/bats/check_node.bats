#!/usr/bin/env bats
# check_node.sh: what invoke check / deploy learn about a node, changing nothing.

load helpers

setup() {
  common_setup
  NODE_DIR="${BATS_TEST_TMPDIR}/node-wide/v1"
}
teardown() { common_teardown; }

check_node() {
  run --separate-stderr bash "${SCRIPTS}/check_node.sh" "$@"
}

@test "names the runtime with its version and finds a readable image" {
  check_node --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"\"runtime\": \"${TEST_BIN}/singularity\""* ]]
  [[ "${output}" == *'"runtime_version": "singularity-ce version 3.11.5-standin"'* ]]
  [[ "${output}" == *'"image": "ok"'* ]]
  [[ "${output}" == *'"scripts": "missing"'* ]]
}

@test "a missing runtime and a missing image are reported, not fatal" {
  check_node --exe no-such-runtime --image "${BATS_TEST_TMPDIR}/none.sif" --scripts-dir "${NODE_DIR}"
  [ "${status}" -eq 0 ]
  [[ "${output}" == *'"runtime": "", "runtime_version": ""'* ]]
  [[ "${output}" == *'"image": "missing", "image_for_all": false'* ]]
}

@test "an image is readable by all only if it and every directory above are" {
  local open_dir
  open_dir=$(mktemp -d /tmp/rss-check-node.XXXXXX)
  chmod 0755 "${open_dir}"
  cp "${IMAGE}" "${open_dir}/jupyter.sif"
  chmod 0644 "${open_dir}/jupyter.sif"
  check_node --exe singularity --image "${open_dir}/jupyter.sif" --scripts-dir "${NODE_DIR}"
  local all_of_it="${output}"
  chmod 0600 "${open_dir}/jupyter.sif"
  check_node --exe singularity --image "${open_dir}/jupyter.sif" --scripts-dir "${NODE_DIR}"
  local not_the_file="${output}"
  chmod 0644 "${open_dir}/jupyter.sif"
  chmod 0700 "${open_dir}"
  check_node --exe singularity --image "${open_dir}/jupyter.sif" --scripts-dir "${NODE_DIR}"
  local not_the_dir="${output}"
  rm -rf "${open_dir}"
  [[ "${all_of_it}" == *'"image": "ok", "image_for_all": true'* ]]
  [[ "${not_the_file}" == *'"image_for_all": false'* ]]
  [[ "${not_the_dir}" == *'"image_for_all": false'* ]]
}

@test "the node-wide scripts are summed, and a copy under a world-writable directory is unsafe" {
  mkdir -p "${NODE_DIR}"
  cp "${SCRIPTS}/common.sh" "${SCRIPTS}/stop.sh" "${NODE_DIR}/"
  chmod 0777 "${NODE_DIR%/*}"
  check_node --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  [ "${status}" -eq 0 ]
  local sum
  read -r sum _ < <(sha256sum "${SCRIPTS}/stop.sh")
  [[ "${output}" == *"stop.sh=${sum}"* ]]
  [[ "${output}" == *'"scripts": "unsafe"'* ]]
  [[ "${output}" == *"\"scripts_problem\": \"${NODE_DIR%/*} "* || "${output}" == *"owned by uid"* ]]
}

@test "fed on stdin after common.sh, as deploy.py runs it" {
  run --separate-stderr bash -s -- --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}" \
    < <(cat "${SCRIPTS}/common.sh" "${SCRIPTS}/check_node.sh")
  [ "${status}" -eq 0 ]
  [[ "${output}" == *'"image": "ok"'* ]]
}

@test "relative paths are refused" {
  check_node --exe singularity --image jupyter.sif --scripts-dir "${NODE_DIR}"
  [ "${status}" -eq 64 ]
  [[ "${stderr}" == *"absolute --image"* ]]
}
