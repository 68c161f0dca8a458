#!/usr/bin/env bash
#
# Make this node's sshd trust the Hub's SSH certificate authority, or stop
# trusting one (`remote-singularity-spawner deploy`), or say whether it does
# (`remote-singularity-spawner check`). Run as root, fed on stdin after
# common.sh (`bash -s -- ACTION ...`), which is how deploy.py runs it.
# Prints one JSON line: {"ca": STATE, "ca_file": FILE, "why": TEXT}
#
#   check --key LINE [--sshd-config FILE]
#       "yes" if the key is in the file sshd takes its TrustedUserCAKeys from
#       (as `sshd -T` shows it), else "no" and why. Changes nothing.
#   install --key LINE [--sshd-config FILE] [--dry-run]
#       Add the key to remote-singularity-spawner_ca.pub beside FILE (root's,
#       0644; the keys already there stay: a CA is rotated by trusting the old
#       and the new key for a while), write a drop-in DIR/50-remote-singularity-
#       spawner.conf "TrustedUserCAKeys <that file>" into the drop-in directory
#       FILE includes, run `sshd -t`, and only if that passes reload sshd
#       (systemctl, or SIGHUP to the PID in its PidFile). "yes": nothing had to
#       change (no write, no reload); "trusted": done; "would trust": what
#       --dry-run would do; "no" and why, nothing changed: FILE includes no
#       drop-in directory (the line to add), `sshd -t` fails already, or
#       TrustedUserCAKeys names a file of the site's (the line to add there).
#   untrust --key LINE [--sshd-config FILE] [--dry-run]
#       Remove the key from remote-singularity-spawner_ca.pub beside FILE (the
#       other keys stay, the drop-in too), then run `sshd -t`. No reload: sshd
#       reads that file at each login, so the next certificate of that CA is
#       refused. "not trusted": the key is not there, nothing changed;
#       "untrusted": removed; "would untrust": what --dry-run would do; "no"
#       and why, nothing changed: `sshd -t` fails already, or TrustedUserCAKeys
#       names a file of the site's that holds the key (the line to remove).
#
# If a write or `sshd -t` fails on the way, what was there before is put back
# (the same files, or none) and the exit code is 10 (CANNOT_WRITE).
#
# LINE: the CA's public key, "TYPE BASE64 [COMMENT]" (not a secret).
# FILE: sshd's main config, /etc/ssh/sshd_config by default.
set -euo pipefail
umask 077
RSS_NAME=trust_ca.sh  # for die(): fed on stdin, $0 is "bash"

# Fed on stdin, common.sh came first.
# shellcheck source-path=SCRIPTDIR source=common.sh
[[ -n "${RSS_EXIT_OK+x}" ]] || source "${BASH_SOURCE[0]%/*}/common.sh"

readonly CA_FILE_NAME=remote-singularity-spawner_ca.pub
readonly DROP_IN_NAME=50-remote-singularity-spawner.conf
readonly KEY_RE='^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,2}( [[:print:]]*)?$'

usage() {
  cat <<'USAGE'
Usage: trust_ca.sh check --key LINE [--sshd-config FILE]
       trust_ca.sh install --key LINE [--sshd-config FILE] [--dry-run]
       trust_ca.sh untrust --key LINE [--sshd-config FILE] [--dry-run]
LINE: the CA's public key line; FILE: sshd's config (default /etc/ssh/sshd_config)
USAGE
}

# sshd's messages on one line, without its carriage returns.
one_line() {
  local text="${1//$'\r'/}"
  printf '%s' "${text//$'\n'/ }"
}

answer() {
  printf '{"ca": %s, "ca_file": %s, "why": %s}\n' "$(json_str "$1")" "$(json_str "$2")" "$(json_str "$3")"
}

#######################################
# True if FILE holds KEY (the same type and base64; comments do not count).
# Arguments: file, key line
#######################################
key_in() {
  local type blob want_type want_blob
  read -r want_type want_blob _ <<<"$2"
  [[ -f "$1" && -r "$1" ]] || return 1
  while read -r type blob _ || [[ -n "${type:-}" ]]; do
    [[ "${type}" == "${want_type}" && "${blob}" == "${want_blob}" ]] && return 0
    type=""
  done <"$1"
  return 1
}

#######################################
# Print FILE's lines but those that hold KEY (the same type and base64), as
# they are, each with a newline.
# Arguments: file, key line
#######################################
lines_without() {
  local line type blob want_type want_blob
  read -r want_type want_blob _ <<<"$2"
  while IFS= read -r line || [[ -n "${line}" ]]; do
    read -r type blob _ <<<"${line}" || true
    [[ "${type:-}" == "${want_type}" && "${blob:-}" == "${want_blob}" ]] || printf '%s\n' "${line}"
  done <"$1"
}

#######################################
# Print the value of sshd's setting NAME (lower case, as `sshd -T` prints
# it) for CONFIG; fail if `sshd -T` does.
# Arguments: config, name
#######################################
sshd_setting() {
  local out
  out=$("${SSHD}" -T -f "$1" 2>/dev/null) || return 1
  awk -v name="$2" '$1 == name { sub(/^[^ ]+ /, ""); print; exit }' <<<"${out}"
}

#######################################
# Print the directory of the first Include of CONFIG (before any Match) whose
# pattern takes our drop-in's name, e.g. /etc/ssh/sshd_config.d for
# "Include /etc/ssh/sshd_config.d/*.conf"; nothing if there is none.
#######################################
drop_in_dir() {
  local line keyword word
  local -a words
  while IFS= read -r line || [[ -n "${line}" ]]; do
    [[ "${line}" =~ ^[[:space:]]*([A-Za-z]+)[[:space:]]*[=[:space:]][[:space:]]*(.*)$ ]] || continue
    keyword=${BASH_REMATCH[1],,}
    [[ "${keyword}" != match ]] || return 0
    [[ "${keyword}" == include ]] || continue
    read -r -a words <<<"${BASH_REMATCH[2]}"
    for word in "${words[@]}"; do
      word=${word//\"/}
      [[ "${word}" == /* ]] || word="/etc/ssh/${word}"  # as sshd reads a relative Include
      # shellcheck disable=SC2053  # the Include's last part is a glob pattern
      if [[ "${word%/*}" != *[][*?]* && "${DROP_IN_NAME}" == ${word##*/} ]]; then
        printf '%s' "${word%/*}"
        return 0
      fi
    done
  done <"$1"
}

#######################################
# Replace PATH by TEXT (root's, 0644): written beside it, then renamed over
# it, the previous file kept as a hard link (the same inode) until commit or
# undo. A failure undoes everything so far (see fail).
#######################################
put_file() {
  local path="$1" text="$2" dir="${1%/*}" tmp
  tmp="${dir}/.${path##*/}.rss-new"
  [[ ! -d "${path}" ]] || fail "cannot write ${path}: it is a directory"
  if [[ ! -d "${dir}" ]]; then
    attempt "create the directory ${dir}" mkdir -m 755 -- "${dir}"
    MADE_DIRS+=("${dir}")
  fi
  STARTED+=("${path}")
  attempt "write ${path}" write_new "${tmp}" "${text}"
  if [[ -e "${path}" || -L "${path}" ]]; then
    attempt "keep a copy of ${path}" ln -f -- "${path}" "${dir}/.${path##*/}.rss-old"
    REPLACED+=("${path}")
  else
    CREATED+=("${path}")
  fi
  attempt "write ${path}" mv -f -T -- "${tmp}" "${path}"
}

# shellcheck disable=SC2317  # called through attempt
write_new() {
  rm -f -- "$1"
  printf '%s' "$2" >"$1"
  chown 0:0 -- "$1"
  chmod 644 -- "$1"
}

# Run a command that changes a file; on failure, fail naming what and why.
attempt() {
  local what="$1" err
  shift
  if ! err=$("$@" 2>&1); then
    fail "cannot ${what}: ${err##*: }"
  fi
}

#######################################
# Put back what put_file changed: the previous files (their
# inodes), no file where there was none, no directory made. Idempotent.
#######################################
undo() {
  local path
  for path in "${CREATED[@]}"; do rm -f -- "${path}"; done
  for path in "${REPLACED[@]}"; do mv -f -T -- "${path%/*}/.${path##*/}.rss-old" "${path}"; done
  for path in "${MADE_DIRS[@]}"; do rmdir -- "${path}" 2>/dev/null || true; done
  for path in "${STARTED[@]}"; do rm -f -- "${path%/*}/.${path##*/}.rss-new"; done
  CREATED=() REPLACED=() MADE_DIRS=() STARTED=()
}

# The changes stand: drop the copies of the previous files.
commit() {
  local path
  for path in "${REPLACED[@]}"; do rm -f -- "${path%/*}/.${path##*/}.rss-old"; done
  CREATED=() REPLACED=() MADE_DIRS=() STARTED=()
  trap - EXIT
}

# Undo, answer "no" with the reason, and exit 10 (CANNOT_WRITE).
fail() {
  undo
  answer no "${CA_FILE}" "$1; nothing changed"
  die "${RSS_EXIT_CANNOT_WRITE}" "$1; what was there before is back"
}

#######################################
# Make the sshd that runs with CONFIG read it again. Sets RELOADED (how);
# returns 1 (RELOADED: why not) if no running sshd was found or it died.
#######################################
reload_sshd() {
  local config="$1" init="" unit pid_file pid=""
  { read -r init </proc/1/comm; } 2>/dev/null || true
  if [[ "${init}" == systemd && "${config}" == /etc/ssh/sshd_config ]] && command -v systemctl >/dev/null; then
    for unit in ssh sshd; do
      systemctl is-active --quiet "${unit}.service" || continue
      RELOADED="systemctl reload ${unit}"
      systemctl reload "${unit}.service" >/dev/null 2>&1 && return 0
      RELOADED="systemctl reload ${unit} failed"
      return 1
    done
  fi
  pid_file=$(sshd_setting "${config}" pidfile) || true
  { read -r pid <"${pid_file}"; } 2>/dev/null || true
  RELOADED="no running sshd found to reload (PidFile ${pid_file:-unknown}): restart sshd"
  [[ "${pid}" =~ ^[0-9]+$ && "$(cat "/proc/${pid}/comm" 2>/dev/null)" == sshd ]] || return 1
  kill -HUP "${pid}"
  sleep 0.5  # sshd re-executes itself under the same PID
  RELOADED="sshd (PID ${pid}) exited after SIGHUP: start it again"
  is_alive "${pid}" || return 1
  RELOADED="SIGHUP to sshd (PID ${pid})"
}

check_ca() {
  local config="$1" key="$2" found err
  if ! found=$(sshd_setting "${config}" trustedusercakeys); then
    err=$("${SSHD}" -t -f "${config}" 2>&1) || true
    answer no "" "sshd -T -f ${config} fails: $(one_line "${err}")"
  elif [[ -z "${found}" || "${found}" == none ]]; then
    answer no "" "sshd trusts no user CA: no TrustedUserCAKeys in ${config} or its drop-ins"
  elif key_in "${found}" "${key}"; then
    answer yes "${found}" "$(untrusted_because "${found}")"
  else
    answer no "${found}" "the CA key is not in ${found} (sshd's TrustedUserCAKeys)"
  fi
}

#######################################
# Before a change: set CA_KEYS to the file sshd takes its TrustedUserCAKeys
# from ("none" if none) for CONFIG. If `sshd -t` or `sshd -T` fails, answer
# "no" (sshd is not touched) and fail.
# Arguments: config
#######################################
sshd_ca_keys() {
  local err
  if ! err=$("${SSHD}" -t -f "$1" 2>&1); then
    answer no "" "sshd -t -f $1 fails already, so sshd was not touched: $(one_line "${err}")"
    return 1
  fi
  if ! CA_KEYS=$(sshd_setting "$1" trustedusercakeys); then
    answer no "" "sshd -T -f $1 fails, so sshd was not touched"
    return 1
  fi
}

install_ca() {
  local config="$1" key="$2" dry_run="$3" err found dir drop_in="" text="" ca_text=""
  local -a changes=() did=()
  sshd_ca_keys "${config}" || return 0
  found="${CA_KEYS}"
  if [[ "${found}" != none && "${found}" != "${CA_FILE}" ]]; then
    if key_in "${found}" "${key}"; then
      answer yes "${found}" ""
    else
      answer no "${found}" "sshd takes its CA keys from ${found} (TrustedUserCAKeys), not from ${CA_FILE}: add this line to ${found}: ${key}"
    fi
    return 0
  fi
  [[ ! -f "${CA_FILE}" ]] || ca_text=$(cat -- "${CA_FILE}")
  if ! key_in "${CA_FILE}" "${key}"; then
    ca_text+="${ca_text:+$'\n'}${key}"$'\n'
    changes+=("add the key to ${CA_FILE}")
    did+=("added the key to ${CA_FILE}")
  elif [[ -n "$(untrusted_because "${CA_FILE}")" ]]; then
    ca_text+=$'\n'
    changes+=("make ${CA_FILE} root's, 0644")
    did+=("made ${CA_FILE} root's, 0644")
  else
    ca_text=""
  fi
  if [[ "${found}" == none ]]; then
    dir=$(drop_in_dir "${config}")
    if [[ -z "${dir}" ]]; then
      answer no "" "${config} includes no drop-in directory: add the line 'Include ${config%/*}/sshd_config.d/*.conf' at its top, then deploy again"
      return 0
    fi
    drop_in="${dir}/${DROP_IN_NAME}"
    text="TrustedUserCAKeys ${CA_FILE}"$'\n'
    if [[ "$(cat -- "${drop_in}" 2>/dev/null)"$'\n' != "${text}" || -n "$(untrusted_because "${drop_in}")" ]]; then
      changes+=("write ${drop_in}")
      did+=("wrote ${drop_in}")
    else
      text=""
    fi
  fi
  if ((${#changes[@]} == 0)); then
    if [[ "${found}" == "${CA_FILE}" ]]; then
      answer yes "${CA_FILE}" ""
    else
      answer no "" "${drop_in} is in place, but sshd -T says TrustedUserCAKeys ${found}: is it set in ${config} above the Include line? (sshd takes the first value)"
    fi
    return 0
  fi
  if [[ -n "${dry_run}" ]]; then
    answer "would trust" "${CA_FILE}" "would $(join_words "${changes[@]}"), check with sshd -t and reload sshd"
    return 0
  fi
  trap undo EXIT
  [[ -z "${ca_text}" ]] || put_file "${CA_FILE}" "${ca_text}"
  [[ -z "${text}" ]] || put_file "${drop_in}" "${text}"
  if ! err=$("${SSHD}" -t -f "${config}" 2>&1); then
    fail "sshd -t -f ${config} fails with the change: $(one_line "${err}")"
  fi
  found=$(sshd_setting "${config}" trustedusercakeys)
  if [[ "${found}" != "${CA_FILE}" ]]; then
    fail "sshd -T still says TrustedUserCAKeys ${found}: is it set in ${config} above the Include line? (sshd takes the first value)"
  fi
  commit
  if reload_sshd "${config}"; then
    answer trusted "${CA_FILE}" "$(join_words "${did[@]}"), reloaded sshd (${RELOADED})"
  else
    answer "not reloaded" "${CA_FILE}" "$(join_words "${did[@]}"), but ${RELOADED}"
  fi
}

untrust_ca() {
  local config="$1" key="$2" dry_run="$3" err found text how
  sshd_ca_keys "${config}" || return 0
  found="${CA_KEYS}"
  if [[ "${found}" != none && "${found}" != "${CA_FILE}" ]] && key_in "${found}" "${key}"; then
    answer no "${found}" "sshd takes its CA keys from ${found} (TrustedUserCAKeys), not from ${CA_FILE}: remove this line from ${found}: ${key}"
    return 0
  fi
  if ! key_in "${CA_FILE}" "${key}"; then
    answer "not trusted" "${CA_FILE}" ""
    return 0
  fi
  if [[ -n "${dry_run}" ]]; then
    answer "would untrust" "${CA_FILE}" "would remove the key from ${CA_FILE} and check with sshd -t"
    return 0
  fi
  text=$(lines_without "${CA_FILE}" "${key}")
  trap undo EXIT
  put_file "${CA_FILE}" "${text:+${text}$'\n'}"
  if ! err=$("${SSHD}" -t -f "${config}" 2>&1); then
    fail "sshd -t -f ${config} fails with the change: $(one_line "${err}")"
  fi
  commit
  how="sshd reads it at each login: no reload needed"
  [[ "${found}" == "${CA_FILE}" ]] || how="sshd's TrustedUserCAKeys is ${found}, not this file"
  answer untrusted "${CA_FILE}" "removed the key from ${CA_FILE} (${how})"
}

# "a", "a and b": what was (or would be) changed.
join_words() {
  local IFS=$'\x1f'
  local all="$*"
  printf '%s' "${all//$'\x1f'/ and }"
}

main() {
  local action="${1:-}" key="" config=/etc/ssh/sshd_config dry_run=""
  (($#)) && shift
  while (($#)); do
    case "$1" in
      --key) key="${2?}"; shift 2 ;;
      --sshd-config) config="${2?}"; shift 2 ;;
      --dry-run) dry_run=yes; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
    esac
  done
  [[ "${action}" != -h && "${action}" != --help ]] || { usage; exit 0; }
  if ((EUID != 0)) && [[ "${action}" =~ ^(check|install|untrust)$ ]]; then
    answer no "" "only root can ask sshd (sshd -T) or change its config: log in as root (--user root)"
    return 0
  fi
  [[ "${key}" =~ ${KEY_RE} ]] || die "${RSS_EXIT_BAD_INPUT}" "--key needs one OpenSSH public key line (ssh-ed25519 AAAA... comment)"
  [[ "${config}" == /* && -f "${config}" ]] || die "${RSS_EXIT_BAD_INPUT}" "no sshd config at '${config}'"
  SSHD=$(command -v sshd) || SSHD=/usr/sbin/sshd
  CA_FILE="${config%/*}/${CA_FILE_NAME}"
  CREATED=() REPLACED=() MADE_DIRS=() STARTED=() CA_KEYS=""
  case "${action}" in
    check) check_ca "${config}" "${key}" ;;
    install) install_ca "${config}" "${key}" "${dry_run}" ;;
    untrust) untrust_ca "${config}" "${key}" "${dry_run}" ;;
    *) die "${RSS_EXIT_USAGE}" "unknown action '${action}' (see --help)" ;;
  esac
}

# Fed on stdin, bash would read on after main: nothing that follows is to run.
main "$@"; exit
