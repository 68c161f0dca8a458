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

@test "a compute node says where srun is, or that it is not on PATH" {
  stand_in srun <<<'exit 0'
  run -0 --separate-stderr check_node --exe singularity --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *"\"srun\": \"$(command -v srun)\""* ]]
  # A PATH with every command of this machine but srun.
  local bin="${BATS_TEST_TMPDIR}/no-srun" tool
  mkdir -p "${bin}"
  for tool in /usr/bin/* "${TEST_BIN}"/*; do
    [[ "${tool##*/}" == srun ]] || ln -sf "${tool}" "${bin}/"
  done
  run -0 --separate-stderr env PATH="${bin}" bash "${SCRIPTS}/check_node.sh" --exe singularity \
    --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *'"srun": ""'* && "${output}" == *'"image": "ok"'* ]]
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
  [[ "${all_of_it}" == *'"state": "ok", "for_all": true'* ]]
  [[ "${not_the_file}" == *'"image_for_all": false'* ]]
  [[ "${not_the_file}" == *'"state": "ok", "for_all": false'* ]]
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
  jupyterhub_image "${IMAGE}" 6.1.0
  run -0 --separate-stderr bash -s -- --exe singularity --image "${IMAGE}" --hub-jupyterhub 6.1.1 \
    --scripts-dir "${NODE_DIR}" < <(cat "${SCRIPTS}/common.sh" "${SCRIPTS}/check_node.sh")
  [[ "${output}" == *'"image": "ok"'* ]]
  [[ "${output}" == *'"jupyterhub": "6.1.0", "match": "same"'* ]]
  [[ "${output}" == *'"scripts": "missing"'* ]]
}

@test "relative paths are refused" {
  run -64 --separate-stderr check_node --exe singularity --image jupyter.sif --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"absolute --image"* ]]
  run -64 --separate-stderr check_node --exe singularity --image "${IMAGE}" --image jupyter.sif \
    --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"every --image must be absolute, got 'jupyter.sif'"* ]]
}

# --- the images and the JupyterHub each carries --------------------------------------------

# images_of REPLY: the reply's "images", as JSON, without the for_all of each (which
# depends on the directories above the test's).
images_of() {
  python3 -c 'import json, sys
images = json.loads(sys.argv[1])["images"]
print(json.dumps([{k: v for k, v in i.items() if k != "for_all"} for i in images]))' "$1"
}

@test "several images: each with its state, the JupyterHub it carries and how it matches the Hub's" {
  local dir="${BATS_TEST_TMPDIR}/images"
  mkdir -p "${dir}"
  jupyterhub_image "${dir}/same.sif" 6.1.0
  jupyterhub_image "${dir}/next.sif" 6.2.0.dev0
  jupyterhub_image "${dir}/old.sif" 5.0.0b1
  jupyterhub_image "${dir}/none.sif" none
  run -0 --separate-stderr check_node --exe singularity --hub-jupyterhub 6.1.1 --image "${dir}/same.sif" \
    --image "${dir}/next.sif" --image "${dir}/old.sif" --image "${dir}/none.sif" --image "${dir}/missing.sif" \
    --scripts-dir "${NODE_DIR}"
  same_json "$(images_of "${output}")" "[
    {\"path\": \"${dir}/same.sif\", \"state\": \"ok\", \"jupyterhub\": \"6.1.0\", \"match\": \"same\",
     \"jupyterhub_problem\": \"\"},
    {\"path\": \"${dir}/next.sif\", \"state\": \"ok\", \"jupyterhub\": \"6.2.0.dev0\", \"match\": \"minor\",
     \"jupyterhub_problem\": \"\"},
    {\"path\": \"${dir}/old.sif\", \"state\": \"ok\", \"jupyterhub\": \"5.0.0b1\", \"match\": \"major\",
     \"jupyterhub_problem\": \"\"},
    {\"path\": \"${dir}/none.sif\", \"state\": \"ok\", \"jupyterhub\": \"none\", \"match\": \"unknown\",
     \"jupyterhub_problem\": \"\"},
    {\"path\": \"${dir}/missing.sif\", \"state\": \"missing\", \"jupyterhub\": \"\", \"match\": \"unknown\",
     \"jupyterhub_problem\": \"the image is missing\"}]"
  # The first image's keys, as before.
  [[ "${output}" == *'"image": "ok", "image_for_all": '* ]]
  [ "$(python3_calls)" = 4 ]
  [ "${stderr}" = "" ]
}

@test "without --hub-jupyterhub the versions are told and match is unknown; why one could not be told" {
  jupyterhub_image "${IMAGE}" 6.1.0
  jupyterhub_image "${BATS_TEST_TMPDIR}/broken.sif" broken
  run -0 --separate-stderr check_node --exe singularity --image "${BATS_TEST_TMPDIR}/broken.sif" \
    --image "${IMAGE}" --scripts-dir "${NODE_DIR}"
  same_json "$(images_of "${output}")" "[
    {\"path\": \"${BATS_TEST_TMPDIR}/broken.sif\", \"state\": \"ok\", \"jupyterhub\": \"\",
     \"match\": \"unknown\", \"jupyterhub_problem\": \"Fatal Python error: init_import_site\"},
    {\"path\": \"${IMAGE}\", \"state\": \"ok\", \"jupyterhub\": \"6.1.0\", \"match\": \"unknown\",
     \"jupyterhub_problem\": \"\"}]"
  [ "${stderr}" = "" ]
  # Without a runtime, nothing is asked.
  run -0 --separate-stderr check_node --exe no-such-runtime --image "${IMAGE}" --hub-jupyterhub 6.1.1 \
    --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *'"jupyterhub": "", "match": "unknown", "jupyterhub_problem": "no container runtime"'* ]]
  [ "$(python3_calls)" = 2 ]
  run -64 --separate-stderr check_node --exe singularity --image "${IMAGE}" --hub-jupyterhub main \
    --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"--hub-jupyterhub needs a version"* ]]
}

# --- role submit: the Slurm client and the nodes sinfo lists --------------------------------

# A directory with only what check_node.sh and the stand-ins run besides Slurm: a PATH
# of it (and the stand-ins) finds no real Slurm command.
tools_only() {
  local dir="${BATS_TEST_TMPDIR}/tools" tool
  mkdir -p "${dir}"
  for tool in bash env mktemp timeout rm stat sha256sum; do
    ln -sf "$(command -v "${tool}")" "${dir}/${tool}"
  done
  printf '%s\n' "${dir}"
}

# same_json ACTUAL EXPECTED: the two JSON texts hold the same value (else both are shown).
same_json() {
  python3 -c 'import json, sys; a, e = map(json.loads, sys.argv[1:]); sys.exit(a != e and f"{a}\n{e}")' \
    "$1" "$2"
}

slurm_client_stand_ins() {
  local command
  for command in sbatch squeue scancel; do stand_in "${command}" <<<'exit 0'; done
}

@test "role submit: the Slurm client is there and sinfo's node lines are passed on as they are" {
  slurm_client_stand_ins
  stand_in sinfo <<<"printf 'rss-node1|10.213.47.2\nrss-node2|10.213.47.3\nrss-node2|10.213.47.3\n'"
  run -0 --separate-stderr bash -s -- --role submit --scripts-dir "${NODE_DIR}" \
    < <(cat "${SCRIPTS}/common.sh" "${SCRIPTS}/check_node.sh")
  same_json "${output}" '{"slurm_missing": "", "sinfo": "ok", "sinfo_error": "",
    "slurm_nodes": ["rss-node1|10.213.47.2", "rss-node2|10.213.47.3", "rss-node2|10.213.47.3"],
    "scripts": "missing", "scripts_problem": "", "scripts_sums": ""}'
  [ "$(stand_in_argv sinfo)" = "$(printf '%s\n' -h -N -o '%N|%o')" ]
}

@test "role submit: a failing sinfo is reported with its message, and the check goes on" {
  slurm_client_stand_ins
  stand_in sinfo <<<"printf 'slurm_load_node: Unable to contact slurm controller\n' >&2; exit 1"
  run -0 --separate-stderr check_node --role submit --scripts-dir "${NODE_DIR}"
  same_json "${output}" '{"slurm_missing": "", "sinfo": "failed",
    "sinfo_error": "slurm_load_node: Unable to contact slurm controller",
    "slurm_nodes": [], "scripts": "missing", "scripts_problem": "", "scripts_sums": ""}'
}

@test "role submit: the Slurm commands that are not on PATH are named" {
  stand_in sbatch <<<'exit 0'
  local tools
  tools=$(tools_only)
  run -0 --separate-stderr env PATH="${BATS_TEST_TMPDIR}/stand-ins:${tools}" \
    "${BASH}" "${SCRIPTS}/check_node.sh" --role submit --scripts-dir "${NODE_DIR}"
  [[ "${output}" == '{"slurm_missing": "squeue scancel sinfo", "sinfo": "missing", "sinfo_error": "", '* ]]
  [[ "${output}" == *'"slurm_nodes": [], "scripts": "missing"'* ]]
}

@test "role submit,compute: the runtime, the image and the Slurm client in one reply" {
  slurm_client_stand_ins
  stand_in sinfo <<<"printf 'rss-node1|rss-node1.cluster\n'"
  run -0 --separate-stderr check_node --role submit,compute --exe singularity --image "${IMAGE}" \
    --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *"\"runtime\": \"${TEST_BIN}/singularity\""* ]]
  [[ "${output}" == *'"image": "ok"'* ]]
  [[ "${output}" == *'"sinfo": "ok", "sinfo_error": "", "slurm_nodes": ["rss-node1|rss-node1.cluster"]'* ]]
  python3 -c 'import json, sys; json.loads(sys.argv[1])' "${output}"
}

@test "a submit host needs no runtime or image; a compute node does; other roles are refused" {
  slurm_client_stand_ins
  stand_in sinfo <<<'exit 0'
  run -0 --separate-stderr check_node --role submit --scripts-dir "${NODE_DIR}"
  [[ "${output}" == *'"slurm_nodes": []'* ]]
  [[ "${output}" != *'"runtime"'* && "${output}" != *'"image"'* ]]
  run -64 --separate-stderr check_node --role submit,compute --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"absolute --image"* ]]
  run -64 --separate-stderr check_node --role submit --scripts-dir relative/v1
  [[ "${stderr}" == *"an absolute --scripts-dir is required"* ]]
  run -64 --separate-stderr check_node --role login --scripts-dir "${NODE_DIR}"
  [[ "${stderr}" == *"--role must be compute, submit or submit,compute"* ]]
  [ "${output}" = "" ]
}
