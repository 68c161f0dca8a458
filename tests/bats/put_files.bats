#!/usr/bin/env bats
# put_files.sh: the scripts, the node-wide copy and private files, sent on stdin.
# SC2154: bats sets stderr. SC2016: the script run by `bash -c` expands its own "$1".
# shellcheck disable=SC2016,SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() {
  common_setup
  SRC="${BATS_TEST_TMPDIR}/src"
  mkdir -p "${SRC}"
  printf 'echo a\n' >"${SRC}/a.sh"
  printf 'echo b\n' >"${SRC}/b.sh"
  VERSION=$(version_of "${SRC}")
  # Under a root-owned directory nobody else may write: /tmp would make any copy unsafe.
  NODE_ROOT=$(mktemp -d /run/rss-bats.XXXXXX)
  chmod 755 "${NODE_ROOT}"
}

teardown() {
  rm -rf -- "${NODE_ROOT}"
  common_teardown
}

version_of() {
  bash -c 'source "$1"; bundle_version "$2"' _ "${SCRIPTS}/common.sh" "$1"
}

# The records put_files.sh reads after itself: NAME NUL CONTENT NUL for each file of DIR.
records_of() {
  local file
  for file in "$1"/*; do
    printf '%s\0' "${file##*/}"
    cat -- "${file}"
    printf '\0'
  done
}

# Run put_files.sh as the spawner does: fed on stdin after common.sh, then the files of $1.
feed() {
  local dir="$1"
  shift
  { cat "${SCRIPTS}/common.sh" "${SCRIPTS}/put_files.sh"; [[ -z "${dir}" ]] || records_of "${dir}"; } \
    | bash -s -- "$@"
}

@test "scripts: a missing copy is exit 9 without the files, written 0600 in 0700 with them" {
  run -9 feed "" scripts --user-dir .rss/scripts/"${VERSION}" --version "${VERSION}"
  [[ "${output}" == *'"missing": true'* ]]
  run -0 feed "${SRC}" scripts --user-dir .rss/scripts/"${VERSION}" --version "${VERSION}" --payload
  [[ "${output}" == *"\"dir\": \".rss/scripts/${VERSION}\", \"written\": true"* ]]
  [ "$(stat -c %a "${HOME}/.rss" "${HOME}/.rss/scripts/${VERSION}" "${HOME}/.rss/scripts/${VERSION}/a.sh")" \
    == $'700\n700\n600' ]
  cmp "${SRC}/b.sh" "${HOME}/.rss/scripts/${VERSION}/b.sh"
  run -0 feed "" scripts --user-dir .rss/scripts/"${VERSION}" --version "${VERSION}"
  [[ "${output}" == *'"written": false'* ]]
  [ "$(ls -A "${HOME}/.rss/scripts")" == "${VERSION}" ]
}

@test "scripts that arrive as another version are refused, and nothing is left" {
  run -7 --separate-stderr feed "${SRC}" scripts --user-dir .rss/scripts/0123456789abcdef \
    --version 0123456789abcdef --payload
  [[ "${stderr}" == *"put_files.sh: the scripts arrived as version ${VERSION}, not 0123456789abcdef"* ]]
  [ -z "$(ls -A "${HOME}/.rss/scripts")" ]
}

@test "an invalid file name fails the transfer half-way, and no staging copy is left" {
  mkdir "${BATS_TEST_TMPDIR}/bad"
  printf 'x' >"${BATS_TEST_TMPDIR}/bad/ok.sh"
  printf 'y' >"${BATS_TEST_TMPDIR}/bad/-bad"
  run -7 --separate-stderr feed "${BATS_TEST_TMPDIR}/bad" put --dir .rss/certs
  [[ "${stderr}" == *"invalid file name on stdin: '-bad'"* ]]
  [ -z "$(ls -A "${HOME}/.rss")" ]
}

@test "install: every user may read it (0755, 0644); a copy with wrong modes is replaced" {
  local dir="${NODE_ROOT}/scripts/${VERSION}"
  run -0 feed "${SRC}" install --dir "${dir}" --version "${VERSION}"
  [ "$(stat -c %a "${NODE_ROOT}/scripts" "${dir}" "${dir}/a.sh")" == $'755\n755\n644' ]
  chmod 666 "${dir}/a.sh"
  run -0 feed "${SRC}" install --dir "${dir}" --version "${VERSION}"
  [ "$(stat -c %a "${dir}/a.sh")" == 644 ]
  [ "$(ls -A "${NODE_ROOT}/scripts")" == "${VERSION}" ]
}

@test "the node-wide copy is used only when root's, writable by nobody else, and of this version" {
  local dir="${NODE_ROOT}/scripts/${VERSION}"
  local -a look=(scripts --user-dir .rss/scripts/"${VERSION}" --version "${VERSION}" --node-dir "${dir}")
  run -9 feed "" "${look[@]}"
  feed "${SRC}" install --dir "${dir}" --version "${VERSION}" >/dev/null
  run -0 feed "" "${look[@]}"
  [[ "${output}" == *"\"dir\": \"${dir}\""* ]]
  # Each way it can be unsafe: the user's own copy is sent instead, and the log says why.
  chown 1000 "${dir}/a.sh"
  run -0 feed "${SRC}" "${look[@]}" --payload
  [[ "${output}" == *"\"dir\": \".rss/scripts/${VERSION}\""* ]]
  [[ "${output}" == *"${dir}/a.sh is owned by uid 1000, not root"* ]]
  chown 0 "${dir}/a.sh"
  chmod 664 "${dir}/a.sh"
  run -0 feed "" "${look[@]}"
  [[ "${output}" == *"${dir}/a.sh is writable by group or others (mode 664)"* ]]
  chmod 644 "${dir}/a.sh"
  chmod 777 "${NODE_ROOT}"
  run -0 feed "" "${look[@]}"
  [[ "${output}" == *"${NODE_ROOT} is writable by group or others (mode 777)"* ]]
  chmod 755 "${NODE_ROOT}"
  printf 'echo changed\n' >"${dir}/b.sh"
  run -0 feed "" "${look[@]}"
  [[ "${output}" == *"${dir} does not hold version ${VERSION}"* ]]
}

@test "put: private files 0600 in 0700 replace the previous ones; remove twice is fine" {
  run -0 feed "${SRC}" put --dir .rss/servers/x/certs
  [[ "${output}" == *"\"dir\": \"${HOME}/.rss/servers/x/certs\""* ]]
  [ "$(stat -c %a "${HOME}/.rss/servers/x/certs" "${HOME}/.rss/servers/x/certs/a.sh")" == $'700\n600' ]
  rm "${SRC}/b.sh"
  printf 'new\n' >"${SRC}/c.crt"
  run -0 feed "${SRC}" put --dir .rss/servers/x/certs
  [ "$(ls "${HOME}/.rss/servers/x/certs")" == $'a.sh\nc.crt' ]
  run -0 feed "" remove --dir .rss/servers/x/certs
  run -0 feed "" remove --dir .rss/servers/x/certs
  [ -z "$(ls -A "${HOME}/.rss/servers/x")" ]
}

@test "a home the user cannot write: exit 10 naming the directory, the reason and the likely cause" {
  local home="${NODE_ROOT}/home"
  mkdir -m 755 "${home}"
  run -10 --separate-stderr bash -c '{ cat "$1" "$2"; printf "a.sh\0echo\0"; } \
    | setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$3" \
      bash -s -- scripts --user-dir .rss/scripts/0123456789abcdef --version 0123456789abcdef --payload' \
    _ "${SCRIPTS}/common.sh" "${SCRIPTS}/put_files.sh" "${home}"
  [[ "${stderr}" == *"cannot create the directory .rss/scripts: Permission denied"* ]]
  [[ "${stderr}" == *"full (disk quota) or read-only"* ]]
  [ -z "$(ls -A "${home}")" ]
}
