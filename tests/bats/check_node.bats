#!/usr/bin/env bats
# check_node.sh: what invoke check / deploy learn about a node, changing nothing.
# SC2154: bats' `run --separate-stderr` assigns stderr.
# shellcheck disable=SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() {
  common_setup
  NODE_DIR="${BATS_TEST_TMPDIR}/node-wide/v1"
  OPEN_DIR=""
}

teardown() {
  if [[ -n "${OPEN_DIR}" ]]; then rm -rf -- "${OPEN_DIR}"; fi
  common_teardown
}

check_node() {
  bash "${SCRIPTS}/check_node.sh" "$@"
}

@test "names the runtime with its version and finds a readable image" {
  run -0 --separate-stderr check_node --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *"\"runtime\": \"${TEST_BIN}/singularity\""* ]]
  [[ "${output}" == *'"runtime_version": "singularity-ce version 3.11.5-standin"'* ]]
  [[ "${output}" == *'"image": "ok"'* ]]
  [[ "${output}" == *'"scripts": "missing"'* ]]
}

@test "a missing runtime and a missing image are reported, not fatal" {
  run -0 --separate-stderr check_node --exe no-such-runtime --image "${BATS_TEST_TMPDIR}/none.sif" \
    --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *'"runtime": "", "runtime_version": ""'* ]]
  [[ "${output}" == *'"image": "missing", "image_for_all": false'* ]]
}

@test "an image is readable by all only if it and every directory above are" {
  # Not under BATS_TEST_TMPDIR: the directories above it are private.
  OPEN_DIR=$(mktemp -d /tmp/rss-check-node.XXXXXX)
  chmod 0755 "${OPEN_DIR}"
  cp "${IMAGE}" "${OPEN_DIR}/jupyter.sif"
  chmod 0644 "${OPEN_DIR}/jupyter.sif"
  run -0 --separate-stderr check_node --exe singularity --image "${OPEN_DIR}/jupyter.sif" \
    --scripts-dir "${NODE_DIR}"
  local all_of_it="${output}"
  chmod 0600 "${OPEN_DIR}/jupyter.sif"
  run -0 --separate-stderr check_node --exe singularity --image "${OPEN_DIR}/jupyter.sif" \
    --scripts-dir "${NODE_DIR}"
  local not_the_file="${output}"
  chmod 0644 "${OPEN_DIR}/jupyter.sif"
  chmod 0700 "${OPEN_DIR}"
  run -0 --separate-stderr check_node --exe singularity --image "${OPEN_DIR}/jupyter.sif" \
    --scripts-dir "${NODE_DIR}"
  local not_the_dir="${output}"
  [[ "${all_of_it}" == *'"image": "ok", "image_for_all": true'* ]]
  [[ "${not_the_file}" == *'"image_for_all": false'* ]]
  [[ "${not_the_dir}" == *'"image_for_all": false'* ]]
}

@test "the node-wide scripts are summed, and a copy under a world-writable directory is unsafe" {
  mkdir -p "${NODE_DIR}"
  cp "${SCRIPTS}/common.sh" "${SCRIPTS}/stop.sh" "${NODE_DIR}/"
  chmod 0777 "${NODE_DIR%/*}"
  run -0 --separate-stderr check_node --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  local sum
  read -r sum _ < <(sha256sum "${SCRIPTS}/stop.sh")
  [[ "${output}" == *"stop.sh=${sum}"* ]]
  [[ "${output}" == *'"scripts": "unsafe"'* ]]
  [[ "${output}" == *"\"scripts_problem\": \"${NODE_DIR%/*} "* || "${output}" == *"owned by uid"* ]]
}

@test "fed on stdin after common.sh, as deploy.py runs it" {
  run -0 --separate-stderr bash -s -- --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}" \
    < <(cat "${SCRIPTS}/common.sh" "${SCRIPTS}/check_node.sh")
  [[ "${output}" == *'"image": "ok"'* ]]
}

@test "relative paths are refused" {
  run -64 --separate-stderr check_node --exe singularity --image jupyter.sif --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"absolute --image"* ]]
}
