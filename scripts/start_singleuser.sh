#!/usr/bin/env bash
#
# Start a Jupyter single-user server inside a Singularity/Apptainer
# container on this node, for the user running this script.
#
# Run by remote-singularity-spawner over SSH. The server's environment
# (the Hub API token among it) arrives on stdin as NUL-separated KEY=VALUE
# records, never in argv. On success prints one JSON line:
#   {"pid": N, "start_time": N, "port": N, "log": "PATH",
#    "image_jupyterhub": VERSION | "none" | "" (not told, or no check),
#    "jupyterhub_match": "same" | "minor" | "unknown" | "off" (no check)}
# and exits 0. If the image's JupyterHub is of another major version than the
# Hub's (--hub-jupyterhub), prints instead
#   {"image_jupyterhub": VERSION, "hub_jupyterhub": VERSION}
# starts nothing and exits with RSS_EXIT_IMAGE_MISMATCH. While it works,
# prints "@progress PERCENT MESSAGE" lines on stderr for the spawn page. On
# failure prints a diagnostic (with the tail of the server's log) on stderr
# and exits with a code from common.sh.
set -euo pipefail
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

readonly MAX_ATTEMPTS=5
readonly LOG_TAIL_LINES=25

usage() {
  cat <<'USAGE'
Usage: start_singleuser.sh --exe SINGULARITY --image IMAGE --server-dir DIR
                           [--bind SRC[:DEST[:ro|rw]]]... [--singularity-arg ARG]...
                           --port-range LOW-HIGH [--timeout SECONDS]
                           [--slurm-job JOBID] [--hub-jupyterhub VERSION]
                           [--version-cache FILE] -- COMMAND [ARG...]  < environment

  --exe              singularity or apptainer executable (name or path)
  --image            container image (SIF file or sandbox directory)
  --server-dir       directory for this server's pidfile and log (relative
                     paths are under $HOME); created 0700
  --bind             bind path, repeatable; passed to `exec --bind`
  --singularity-arg  extra option for `singularity exec`, repeatable
  --port-range       ports to choose from, within 1024-65535 (the Hub's
                     port_range; the spawner owns its default)
  --timeout          seconds to wait for the server to listen (default 60)
  --slurm-job        start the server as a step of this Slurm job, which holds
                     this node (srun --jobid=JOBID --overlap); srun's PID is
                     the one recorded, and srun forwards signals to the step
  --hub-jupyterhub   the Hub's jupyterhub version: first ask the image's python3
                     which jupyterhub it carries (the same launcher and exec
                     options, without the binds, within --timeout), and refuse
                     another major version (nothing started, exit 12); another
                     minor version, or none found, is a warning. Without it, no check
  --version-cache    file that remembers each image's answer, keyed on its path,
                     size and modification time (relative paths are under $HOME;
                     its directory is created 0700). Without it, asked every time

stdin: NUL-separated KEY=VALUE records exported for the server; must
include JUPYTERHUB_SERVICE_URL, whose port is replaced by the chosen one.
Each is also exported as SINGULARITYENV_KEY and APPTAINERENV_KEY, so it
reaches the server with --cleanenv or --containall too.
USAGE
}

#######################################
# Export the KEY=VALUE records read from stdin (shell builtins only, so
# no value ever shows in a process's argv). Their keys go to HUB_ENV_KEYS.
#######################################
import_environment() {
  local record key
  HUB_ENV_KEYS=()
  while IFS= read -r -d '' record; do
    key=${record%%=*}
    if [[ "${record}" != *=* || ! "${key}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      die "${RSS_EXIT_BAD_INPUT}" "invalid environment record on stdin (key '${key:0:40}')"
    fi
    if [[ "${key}" =~ ${RSS_RESERVED_ENV_RE} ]]; then
      printf '%s: not overriding %s from the Hub\n' "${RSS_NAME:-${0##*/}}" "${key}" >&2
      continue
    fi
    export "${record?}"
    HUB_ENV_KEYS+=("${key}")
  done
}

#######################################
# Also export each variable from the Hub as SINGULARITYENV_KEY and
# APPTAINERENV_KEY (the same value, so Apptainer does not warn): the runtime
# sets those inside the container even with --cleanenv or --containall, and
# above the image's %environment. The runtime evaluates them once more as
# `export KEY="VALUE"`, so \ $ ` and " are escaped, unless --no-eval is on.
# Arguments: "eval" or "no-eval"
#######################################
export_for_container() {
  local key value
  for key in "${HUB_ENV_KEYS[@]}"; do
    value=${!key}
    if [[ "$1" == eval ]]; then
      value=${value//\\/\\\\}
      value=${value//\$/\\\$}
      value=${value//\`/\\\`}
      value=${value//\"/\\\"}
    fi
    export "SINGULARITYENV_${key}=${value}" "APPTAINERENV_${key}=${value}"
  done
}

#######################################
# Print the TCP ports on which something listens in this network namespace;
# with a UID ($1), only those of that user's sockets.
# Each /proc file is read in one go: bash reads a /proc file byte by byte,
# and the kernel regenerates it on every read.
#######################################
listening_ports() {
  local owner="${1:-}" file table local_address state uid _
  for file in /proc/net/tcp /proc/net/tcp6; do
    [[ -r "${file}" ]] || continue
    table="$(<"${file}")"
    # "N: LOCAL:PORT REMOTE:PORT STATE TX:RX TR:WHEN RETRANSMITS UID ...", 0A: listening.
    while read -r _ local_address _ state _ _ _ uid _; do
      [[ "${state}" == "0A" && ( -z "${owner}" || "${uid}" == "${owner}" ) ]] \
        && printf '%d\n' "0x${local_address##*:}"
    done <<<"${table}"
  done
  return 0
}

#######################################
# Succeed if a socket of this user listens on TCP port $1 in this network
# namespace. Another user's server that picked the same port at the same
# moment does not count: taking its socket for ours would send this server's
# users to that other server, while ours dies of "address already in use"
# (seen in a storm of 48 starts). Then ours is found dead and starts again on
# another port.
# Asked with `ss` (netlink: the listening sockets only) when there is one.
# /proc/net/tcp walks the kernel's whole established-connections table
# (about 4 ms of CPU per read with 262144 buckets, on every start's wait
# loop at once in a storm of starts), so it is only the fallback.
#######################################
is_listening() {
  local out
  if [[ -n "${SS_EXE:-}" ]] && out=$("${SS_EXE}" -Hltne "sport = :$1" 2>/dev/null); then
    # ss names a socket's owner as uid:N, except root's.
    if ((EUID == 0)); then [[ -n "${out}" ]]; else [[ "${out}" == *" uid:${EUID} "* ]]; fi
    return
  fi
  out=$(listening_ports "${EUID}")
  [[ $'\n'"${out}"$'\n' == *$'\n'"$1"$'\n'* ]]
}

#######################################
# Print a random port in [LOW, HIGH] on which nothing listens.
#######################################
pick_port() {
  local low="$1" high="$2" try port
  local -A busy=()
  for port in $(listening_ports); do busy[${port}]=1; done
  for ((try = 0; try < 100; try++)); do
    port=$((low + (RANDOM * 32768 + RANDOM) % (high - low + 1)))
    if [[ -z "${busy[${port}]:-}" ]]; then
      printf '%s\n' "${port}"
      return 0
    fi
  done
  return 1
}

# shellcheck disable=SC2317  # called through try_write
truncate_file() {
  : >"$1"
}

#######################################
# Set LAUNCH to the words that run the server as a step of Slurm job $1,
# or to none without a job.
#######################################
slurm_launcher() {
  LAUNCH=()
  [[ -n "$1" ]] || return 0
  local srun
  srun=$(command -v srun) \
    || die "${RSS_EXIT_USAGE}" "srun not found on PATH: --slurm-job needs the Slurm client on this node"
  LAUNCH=("${srun}" "--jobid=$1" --overlap --nodes=1 --ntasks=1 --quiet --kill-on-bad-exit=1 --)
}

#######################################
# Check the jupyterhub the image carries against the Hub's VERSION (none
# given: no check), asking the image unless the cache FILE knows it. Another
# minor version, or none found, is a warning; another major version prints
# the reply's JSON line and dies. Sets IMAGE_JUPYTERHUB (the version, "none"
# or "") and JUPYTERHUB_MATCH (same, minor, unknown, or off without a check).
# Globals: LAUNCH (the words that run the server as a Slurm step, or none)
# Arguments: the Hub's version or "", cache file or "", seconds, runtime,
#   image, exec options...
#######################################
check_image_jupyterhub() {
  local hub="$1" cache="$2" seconds="$3" exe="$4" image="$5" name=${5##*/} answer status=0
  shift 5
  IMAGE_JUPYTERHUB=""
  JUPYTERHUB_MATCH=off
  [[ -n "${hub}" ]] || return 0
  if [[ -n "${cache}" ]] && version_cache_get "${cache}" "${image}"; then
    answer=${VERSION_CACHE_HIT}
  else
    progress 30 "checking which JupyterHub the image ${name} carries"
    answer=$(image_jupyterhub "${seconds}" "${image}" "${LAUNCH[@]}" "${exe}" exec "$@") || status=$?
    if ((status == 0)) && [[ -n "${cache}" ]] && ! version_cache_put "${cache}" "${image}" "${answer}"; then
      printf '%s: could not write the version cache %s\n' "${RSS_NAME:-${0##*/}}" "${cache}" >&2
    fi
  fi
  ((status)) || IMAGE_JUPYTERHUB=${answer}
  [[ "${answer}" != none ]] || answer="its python3 has no jupyterhub package"
  JUPYTERHUB_MATCH=$(jupyterhub_match "${hub}" "${IMAGE_JUPYTERHUB}")
  case "${JUPYTERHUB_MATCH}" in
    major)
      printf '{"image_jupyterhub": %s, "hub_jupyterhub": %s}\n' "$(json_str "${answer}")" "$(json_str "${hub}")"
      die "${RSS_EXIT_IMAGE_MISMATCH}" "the image ${image} carries JupyterHub ${answer}, the Hub runs ${hub}:" \
        "a server of another major version cannot work with this Hub (install jupyterhub==${hub} in the image)"
      ;;
    minor) progress 35 "warning: the image ${name} carries JupyterHub ${answer}, the Hub runs ${hub}" ;;
    unknown) progress 35 "warning: could not tell which JupyterHub the image ${name} carries (${answer})" ;;
  esac
}

#######################################
# Make the version cache's directory (0700) and print the cache file's
# absolute path; print nothing (no cache), with a note, if it cannot be made.
# Arguments: cache file as given ("" for none)
#######################################
cache_file() {
  local file="$1"
  [[ -n "${file}" ]] || return 0
  [[ "${file}" == /* ]] || file="${HOME}/${file}"
  # Under umask 077 every directory made is 0700.
  if ! mkdir -p -- "${file%/*}/" 2>/dev/null; then
    printf '%s: cannot create the directory of the version cache %s: not using it\n' \
      "${RSS_NAME:-${0##*/}}" "${file}" >&2
    return 0
  fi
  printf '%s' "${file}"
}

log_tail() {
  printf -- '--- last lines of %s ---\n' "$1" >&2
  tail -n "${LOG_TAIL_LINES}" -- "$1" >&2 || true
}

main() {
  local exe="" image="" server_dir="" port_range="" timeout=60 slurm_job=""
  local hub_jupyterhub="" version_cache=""
  local -a binds=() extra=()
  local evaluation=eval
  while (($#)); do
    case "$1" in
      --exe) exe="${2?}"; shift 2 ;;
      --image) image="${2?}"; shift 2 ;;
      --server-dir) server_dir="${2?}"; shift 2 ;;
      --bind) binds+=(--bind "${2?}"); shift 2 ;;
      --singularity-arg)
        extra+=("${2?}")
        [[ "$2" =~ ^--no-eval(=(1|t|T|true|TRUE|True))?$ ]] && evaluation=no-eval
        shift 2
        ;;
      --port-range) port_range="${2?}"; shift 2 ;;
      --timeout) timeout="${2?}"; shift 2 ;;
      --slurm-job) slurm_job="${2?}"; shift 2 ;;
      --hub-jupyterhub) hub_jupyterhub="${2?}"; shift 2 ;;
      --version-cache) version_cache="${2?}"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; break ;;
      *) die "${RSS_EXIT_USAGE}" "unknown option '$1' (see --help)" ;;
    esac
  done
  (($#)) || die "${RSS_EXIT_USAGE}" "no command given after --"
  [[ -n "${exe}" && -n "${image}" && -n "${server_dir}" ]] \
    || die "${RSS_EXIT_USAGE}" "--exe, --image and --server-dir are required"
  [[ -n "${port_range}" ]] || die "${RSS_EXIT_USAGE}" "--port-range is required (the Hub's port_range)"
  [[ "${port_range}" =~ ^([0-9]+)-([0-9]+)$ ]] \
    || die "${RSS_EXIT_USAGE}" "--port-range must be LOW-HIGH, got '${port_range}'"
  local low=${BASH_REMATCH[1]} high=${BASH_REMATCH[2]}
  ((RSS_PORT_LOW <= low && low <= high && high <= RSS_PORT_HIGH)) \
    || die "${RSS_EXIT_USAGE}" "--port-range ${port_range} is outside ${RSS_PORT_LOW}-${RSS_PORT_HIGH}"
  require_uint --timeout "${timeout}"
  [[ -z "${slurm_job}" ]] || require_uint --slurm-job "${slurm_job}"
  [[ -z "${hub_jupyterhub}" ]] || require_version --hub-jupyterhub "${hub_jupyterhub}"
  # Read stdin to its end before anything can fail: a command that exits with its
  # input unread can make sshd drop the connection the Hub shares with other commands.
  import_environment
  SS_EXE=$(command -v ss) || SS_EXE=""
  local cmd_exe
  cmd_exe=$(command -v -- "${exe}") || die "${RSS_EXIT_USAGE}" "'${exe}' not found on PATH (remote-singularity-spawner check shows each node's)"
  slurm_launcher "${slurm_job}"

  cd "${HOME}"
  local service_url=${JUPYTERHUB_SERVICE_URL:-}
  [[ "${service_url}" =~ ^(https?://[^/]+):[0-9]+(/.*)?$ ]] \
    || die "${RSS_EXIT_BAD_INPUT}" "JUPYTERHUB_SERVICE_URL missing or malformed on stdin"
  local url_head=${BASH_REMATCH[1]} url_tail=${BASH_REMATCH[2]}
  [[ -z "${hub_jupyterhub}" ]] || version_cache=$(cache_file "${version_cache}")
  check_image_jupyterhub "${hub_jupyterhub}" "${version_cache}" "${timeout}" "${cmd_exe}" "${image}" "${extra[@]}"

  try_write "create the server's directory ${server_dir}" mkdir -p -m 700 -- "${server_dir}"
  chmod 700 -- "${server_dir}"
  local log="${server_dir}/server.log" pidfile="${server_dir}/server.pid"
  [[ "${log}" == /* ]] || log="${HOME}/${log}"

  local attempt port pid start deadline seen next_look now
  for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
    port=$(pick_port "${low}" "${high}") \
      || die "${RSS_EXIT_NO_FREE_PORT}" "no free port in ${port_range}"
    export JUPYTERHUB_SERVICE_URL="${url_head}:${port}${url_tail}"
    export_for_container "${evaluation}"
    try_write "write the server's log ${log}" truncate_file "${log}"
    progress 40 "starting the container ${image##*/}${slurm_job:+ in Slurm job ${slurm_job}}"
    # setsid makes the server a session and process-group leader: its PID
    # is the group to signal, and it survives the end of this SSH session.
    setsid "${LAUNCH[@]}" "${cmd_exe}" exec "${extra[@]}" "${binds[@]}" "${image}" "$@" \
      </dev/null >>"${log}" 2>&1 &
    pid=$!
    start=""
    if proc_stat "${pid}"; then start=${PROC_START}; fi
    deadline=$((SECONDS + timeout))
    seen=""
    next_look=0
    progress 60 "waiting for the server to listen on port ${port}"
    while is_alive "${pid}" "${start}" && ! is_listening "${port}"; do
      # Twice a second, note what the server started: a helper in a session
      # of its own is found by nothing else once the server died.
      now=${EPOCHREALTIME/./}
      if ((now >= next_look)); then
        seen+=$(descendants "${pid}")$'\n'
        next_look=$((now + 500000))
      fi
      if ((SECONDS >= deadline)); then
        # Leave nothing of the failed start behind (same ladder as stop.sh).
        stop_server "${pid}" "${start}" 2 2 "${seen}" || true
        log_tail "${log}"
        die "${RSS_EXIT_START_TIMEOUT}" "the server did not listen on port ${port} within ${timeout}s"
      fi
      # Ten looks a second for the first two seconds, then four: a server takes
      # seconds to start, and every look costs CPU the starting servers need.
      if ((SECONDS - deadline + timeout < 2)); then sleep 0.1; else sleep 0.25; fi
    done
    if is_alive "${pid}" "${start}"; then
      printf '%s %s %s\n' "${pid}" "${start}" "${port}" >"${pidfile}"
      printf '{"pid": %s, "start_time": %s, "port": %s, "log": %s, "image_jupyterhub": %s, "jupyterhub_match": %s}\n' \
        "${pid}" "${start}" "${port}" "$(json_str "${log}")" "$(json_str "${IMAGE_JUPYTERHUB}")" \
        "$(json_str "${JUPYTERHUB_MATCH}")"
      return 0
    fi
    # The server died: end what it left behind (its process group, the
    # helpers seen above), or a failed start leaves processes on the node.
    stop_server "${pid}" "${start}" 2 2 "${seen}" || true
    local status=0
    wait "${pid}" || status=$?
    if grep -qiE 'address already in use|port [0-9]+ is already in use' -- "${log}"; then
      printf '%s: port %s was taken meanwhile, retrying\n' "${RSS_NAME:-${0##*/}}" "${port}" >&2
      continue
    fi
    log_tail "${log}"
    die "${RSS_EXIT_SERVER_DIED}" "the server exited with status ${status} during start"
  done
  die "${RSS_EXIT_NO_FREE_PORT}" "gave up after ${MAX_ATTEMPTS} ports were taken"
}

main "$@"
