#!/usr/bin/env bats
# trust_ca.sh: make sshd trust the Hub's CA through a drop-in, or stop trusting
# one, checked by the real `sshd -t` on a config in a temporary directory (as root).
# SC2154: bats' `run --separate-stderr` assigns stderr.
# shellcheck disable=SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() {
  ETC="${BATS_TEST_TMPDIR}/etc-ssh"
  mkdir -p "${ETC}/sshd_config.d"
  chmod 755 "${BATS_TEST_TMPDIR}" "${ETC}" "${ETC}/sshd_config.d"
  [[ -d /run/sshd ]] || mkdir -m 755 /run/sshd  # sshd's privilege separation directory
  ssh-keygen -q -t ed25519 -N '' -f "${ETC}/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C 'hub-ca 2025' -f "${BATS_TEST_TMPDIR}/ca"
  ssh-keygen -q -t ecdsa -N '' -C 'hub-ca 2026' -f "${BATS_TEST_TMPDIR}/ca2"
  KEY=$(<"${BATS_TEST_TMPDIR}/ca.pub")
  KEY2=$(<"${BATS_TEST_TMPDIR}/ca2.pub")
  CONFIG="${ETC}/sshd_config"
  CA_FILE="${ETC}/remote-singularity-spawner_ca.pub"
  DROP_IN="${ETC}/sshd_config.d/50-remote-singularity-spawner.conf"
  write_config "Include ${ETC}/sshd_config.d/*.conf"
}

teardown() {
  kill_started
}

# sshd's config: LINE (an Include, or anything) first, then what every config here has.
write_config() {
  printf '%s\nHostKey %s\nPidFile %s\nListenAddress 127.0.0.1:%s\nUsePAM no\nLogLevel VERBOSE\n%s\n' \
    "$1" "${ETC}/ssh_host_ed25519_key" "${ETC}/sshd.pid" "${PORT:-22}" \
    $'Match User root\n  AuthorizedKeysFile /nonexistent' >"${CONFIG}"
}

# Run trust_ca.sh as deploy.py does: fed on stdin after common.sh.
trust_ca() {
  cat "${SCRIPTS}/common.sh" "${SCRIPTS}/trust_ca.sh" | bash -s -- "$@"
}

# Start sshd on the config, on a free loopback port (PORT), in the foreground (-D) so
# that it is this test's job and ended in teardown; wait until it wrote its PidFile.
start_sshd() {
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  write_config "Include ${ETC}/sshd_config.d/*.conf"
  /usr/sbin/sshd -D -f "${CONFIG}" -E "${BATS_TEST_TMPDIR}/sshd.log" &
  SSHD_PID=$!
  local tries=0
  track_pid "${SSHD_PID}"
  until [[ "$(cat "${ETC}/sshd.pid" 2>/dev/null)" == "${SSHD_PID}" ]] || ((tries++ >= 50)); do sleep 0.1; done
  [ "$(<"${ETC}/sshd.pid")" == "${SSHD_PID}" ]
}

# Log in to that sshd as root with a fresh key and a certificate signed by the CA at PATH
# (root's authorized_keys are off in every config here: only a certificate can do).
cert_login() {
  local user="${BATS_TEST_TMPDIR}/user-$RANDOM"
  ssh-keygen -q -t ed25519 -N '' -f "${user}"
  ssh-keygen -q -s "$1" -I "test ${1##*/}" -n root -V -5m:+1h "${user}.pub"
  ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o IdentitiesOnly=yes -i "${user}" -p "${PORT}" root@127.0.0.1 true
}

# Everything under the config's directory: inode, owner, mode, and for files mtime and content.
snapshot() {
  find "${ETC}" -type d -exec stat -c '%n %i %u %a' {} + | sort
  find "${ETC}" ! -type d -exec stat -c '%n %i %u %a %.9Y' {} + | sort
  find "${ETC}" -type f -exec sha256sum {} + | sort
}

@test "install: the key goes into a root-owned 0644 file, a drop-in names it, sshd -T agrees" {
  run -0 trust_ca check --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"sshd trusts no user CA"* ]]
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *"\"ca\": \"not reloaded\", \"ca_file\": \"${CA_FILE}\""* ]]
  [[ "${output}" == *"added the key to ${CA_FILE} and wrote ${DROP_IN}, but no running sshd found"* ]]
  [ "$(<"${CA_FILE}")" == "${KEY}" ]
  [ "$(<"${DROP_IN}")" == "TrustedUserCAKeys ${CA_FILE}" ]
  [ "$(stat -c '%u %a' "${CA_FILE}" "${DROP_IN}")" == $'0 644\n0 644' ]
  [ -z "$(find "${ETC}" -name '.*.rss-*')" ]
  /usr/sbin/sshd -t -f "${CONFIG}"
  [[ "$(/usr/sbin/sshd -T -f "${CONFIG}")" == *"trustedusercakeys ${CA_FILE}"* ]]
  run -0 trust_ca check --key "${KEY}" --sshd-config "${CONFIG}"
  [ "${output}" == "{\"ca\": \"yes\", \"ca_file\": \"${CA_FILE}\", \"why\": \"\"}" ]
}

@test "idempotent: a node that trusts the key is left alone" {
  trust_ca install --key "${KEY}" --sshd-config "${CONFIG}" >/dev/null
  local before
  before=$(snapshot)
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [ "${output}" == "{\"ca\": \"yes\", \"ca_file\": \"${CA_FILE}\", \"why\": \"\"}" ]
  [ "$(snapshot)" == "${before}" ]
}

@test "rotation: a new key is added, the keys already trusted stay" {
  trust_ca install --key "${KEY}" --sshd-config "${CONFIG}" >/dev/null
  run -0 trust_ca install --key "${KEY2}" --sshd-config "${CONFIG}"
  [[ "${output}" == *"added the key to ${CA_FILE}, but no running sshd"* ]]
  [ "$(<"${CA_FILE}")" == "${KEY}"$'\n'"${KEY2}" ]
  run -0 trust_ca check --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "yes"'* ]]
  run -0 trust_ca check --key "${KEY2}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "yes"'* ]]
}

@test "the dry run says what it would change and changes nothing" {
  local before
  before=$(snapshot)
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}" --dry-run
  [[ "${output}" == *'"ca": "would trust"'*"would add the key to ${CA_FILE} and write ${DROP_IN}, check with sshd -t and reload sshd"* ]]
  [ "$(snapshot)" == "${before}" ]
}

@test "without an Include of a drop-in directory nothing changes and the line to add is said" {
  local config
  for config in "# no Include" "Include ${ETC}/sshd_config.d/*.cfg" "in a Match block"; do
    write_config "${config/in a Match block/# no Include}"
    # Appended to the Match block that ends every config here: for its users only.
    [[ "${config}" != "in a Match block" ]] || printf 'Include %s/sshd_config.d/*.conf\n' "${ETC}" >>"${CONFIG}"
    local before
    before=$(snapshot)
    run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
    [[ "${output}" == *'"ca": "no"'*"${CONFIG} includes no drop-in directory: add the line 'Include ${ETC}/sshd_config.d/*.conf' at its top"* ]]
    [ "$(snapshot)" == "${before}" ]
  done
  # Any pattern that takes the drop-in's name will do, in any case, with "=".
  write_config "include=${ETC}/sshd_config.d/[0-9]*"
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "not reloaded"'* && -f "${DROP_IN}" ]]
}

@test "a failing sshd -t after the change puts back exactly what was there (the same inode)" {
  printf '%s\n' "${KEY2}" >"${CA_FILE}"
  chmod 644 "${CA_FILE}"
  local before
  before=$(snapshot)
  # An sshd that refuses the config once the drop-in is there (the real one for the rest).
  mkdir "${BATS_TEST_TMPDIR}/bin"
  cat >"${BATS_TEST_TMPDIR}/bin/sshd" <<STUB
#!/bin/bash
if [[ \$1 == -t && -e "${DROP_IN}" ]]; then
  echo "${DROP_IN}: line 1: Bad configuration option: Nope" >&2
  exit 255
fi
exec /usr/sbin/sshd "\$@"
STUB
  chmod 755 "${BATS_TEST_TMPDIR}/bin/sshd"
  PATH="${BATS_TEST_TMPDIR}/bin:${PATH}" run -10 --separate-stderr \
    trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${stderr}" == *"trust_ca.sh: sshd -t -f ${CONFIG} fails with the change: ${DROP_IN}: line 1: Bad configuration option: Nope; what was there before is back"* ]]
  [[ "${output}" == *'"ca": "no"'*"; nothing changed"* ]]
  [ "$(snapshot)" == "${before}" ]
}

@test "a drop-in path that is a directory: the new CA file goes again, exit 10 says why" {
  mkdir -m 755 "${DROP_IN}"
  local before
  before=$(snapshot)
  run -10 --separate-stderr trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${stderr}" == *"trust_ca.sh: cannot write ${DROP_IN}: it is a directory; what was there before is back"* ]]
  [ "$(snapshot)" == "${before}" ]
  [ ! -e "${CA_FILE}" ]
}

@test "a config that fails sshd -t already is not touched" {
  printf 'Nonsense yes\n' >"${ETC}/sshd_config.d/10-broken.conf"
  local before
  before=$(snapshot)
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"fails already, so sshd was not touched: "*"Bad configuration option: Nonsense"* ]]
  [ "$(snapshot)" == "${before}" ]
  run -0 trust_ca check --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"sshd -T -f ${CONFIG} fails: "*"Nonsense"* ]]
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"fails already, so sshd was not touched: "*"Bad configuration option: Nonsense"* ]]
  [ "$(snapshot)" == "${before}" ]
}

@test "TrustedUserCAKeys of the site's own: the line to add there, or yes if it is there" {
  local site="${ETC}/site_ca.pub"
  write_config "TrustedUserCAKeys ${site}"$'\n'"Include ${ETC}/sshd_config.d/*.conf"
  printf '%s\n' "${KEY2}" >"${site}"
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"sshd takes its CA keys from ${site} (TrustedUserCAKeys), not from ${CA_FILE}: add this line to ${site}: ${KEY}\""* ]]
  [ ! -e "${CA_FILE}" ] && [ ! -e "${DROP_IN}" ]
  printf '%s\n' "${KEY}" >>"${site}"
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *"\"ca\": \"yes\", \"ca_file\": \"${site}\""* ]]
}

@test "a running sshd is reloaded (SIGHUP, the same PID), and not when nothing changed" {
  start_sshd
  local pid="${SSHD_PID}"
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *"\"ca\": \"trusted\""*"reloaded sshd (SIGHUP to sshd (PID ${pid}))"* ]]
  alive "${pid}"
  [ "$(grep -c 'Received SIGHUP' "${BATS_TEST_TMPDIR}/sshd.log")" == 1 ]
  run -0 trust_ca install --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "yes"'* ]]
  [ "$(grep -c 'Received SIGHUP' "${BATS_TEST_TMPDIR}/sshd.log")" == 1 ]
}

@test "untrust: the key goes at once, without a reload; the other keys and the drop-in stay" {
  start_sshd
  trust_ca install --key "${KEY}" --sshd-config "${CONFIG}" >/dev/null
  trust_ca install --key "${KEY2}" --sshd-config "${CONFIG}" >/dev/null
  cert_login "${BATS_TEST_TMPDIR}/ca"
  cert_login "${BATS_TEST_TMPDIR}/ca2"
  local reloads drop_in
  reloads=$(grep -c 'Received SIGHUP' "${BATS_TEST_TMPDIR}/sshd.log")
  drop_in=$(stat -c '%i %.9Y' "${DROP_IN}")
  # Another comment on the same key: still that key.
  run -0 trust_ca untrust --key "${KEY% *} another comment" --sshd-config "${CONFIG}"
  [ "${output}" == "{\"ca\": \"untrusted\", \"ca_file\": \"${CA_FILE}\", \"why\": \"removed the key from ${CA_FILE} (sshd reads it at each login: no reload needed)\"}" ]
  [ "$(<"${CA_FILE}")" == "${KEY2}" ]
  [ "$(stat -c '%u %a' "${CA_FILE}")" == "0 644" ]
  [ "$(stat -c '%i %.9Y' "${DROP_IN}")" == "${drop_in}" ]
  [ -z "$(find "${ETC}" -name '.*.rss-*')" ]
  run ! cert_login "${BATS_TEST_TMPDIR}/ca"
  cert_login "${BATS_TEST_TMPDIR}/ca2"
  alive "${SSHD_PID}"
  [ "$(grep -c 'Received SIGHUP' "${BATS_TEST_TMPDIR}/sshd.log")" == "${reloads}" ]
  run -0 trust_ca check --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"the CA key is not in ${CA_FILE}"* ]]
}

@test "untrust: a key not trusted changes nothing; the dry run says what it would do; the last key" {
  local before
  before=$(snapshot)
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}"
  [ "${output}" == "{\"ca\": \"not trusted\", \"ca_file\": \"${CA_FILE}\", \"why\": \"\"}" ]
  [ "$(snapshot)" == "${before}" ]
  trust_ca install --key "${KEY}" --sshd-config "${CONFIG}" >/dev/null
  before=$(snapshot)
  run -0 trust_ca untrust --key "${KEY2}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "not trusted"'* ]]
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}" --dry-run
  [[ "${output}" == *'"ca": "would untrust"'*"would remove the key from ${CA_FILE} and check with sshd -t"* ]]
  [ "$(snapshot)" == "${before}" ]
  # The last key: an empty file, which sshd reads as no CA at all.
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "untrusted"'* ]]
  [ -f "${CA_FILE}" ] && [ ! -s "${CA_FILE}" ]
  /usr/sbin/sshd -t -f "${CONFIG}"
}

@test "untrust: a key in the site's own TrustedUserCAKeys is the site's to remove: the line is said" {
  local site="${ETC}/site_ca.pub"
  write_config "TrustedUserCAKeys ${site}"$'\n'"Include ${ETC}/sshd_config.d/*.conf"
  printf '%s\n' "${KEY}" >"${site}"
  local before
  before=$(snapshot)
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "no"'*"sshd takes its CA keys from ${site} (TrustedUserCAKeys), not from ${CA_FILE}: remove this line from ${site}: ${KEY}\""* ]]
  [ "$(snapshot)" == "${before}" ]
  # Our file, not in use there, is still cleaned up.
  printf '%s\n' "${KEY2}" >"${site}"
  printf '%s\n' "${KEY}" >"${CA_FILE}"
  run -0 trust_ca untrust --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${output}" == *'"ca": "untrusted"'*"(sshd's TrustedUserCAKeys is ${site}, not this file)"* ]]
  [ ! -s "${CA_FILE}" ]
}

@test "bad input: not a public key line, no config, an unknown action; not root" {
  run -7 --separate-stderr trust_ca check --key "ssh-ed25519 AAAA!x" --sshd-config "${CONFIG}"
  [[ "${stderr}" == *"--key needs one OpenSSH public key line"* ]]
  run -7 --separate-stderr trust_ca check --key "${KEY}" --sshd-config "${ETC}/none"
  [[ "${stderr}" == *"no sshd config at '${ETC}/none'"* ]]
  run -64 --separate-stderr trust_ca remove --key "${KEY}" --sshd-config "${CONFIG}"
  [[ "${stderr}" == *"unknown action 'remove'"* ]]
  local action
  for action in install untrust; do
    run -0 setpriv --reuid=65534 --regid=65534 --clear-groups \
      bash -c "cat ${SCRIPTS}/common.sh ${SCRIPTS}/trust_ca.sh | bash -s -- ${action} --key '${KEY}'"
    [[ "${output}" == *'"ca": "no"'*"only root can ask sshd (sshd -T) or change its config"* ]]
  done
  run -0 trust_ca --help
  [[ "${output}" == *"Usage: trust_ca.sh check --key LINE"*"trust_ca.sh untrust --key LINE"* ]]
}
