#!/usr/bin/env bash
#
# Hold a Slurm allocation for a single-user server, on a submit host, as
# the user: submit a job that only sleeps, tell its state, cancel it, and
# describe the partitions for the spawn form. start_singleuser.sh
# --slurm-job then starts the server as a step of the job on its node.
#
# Run by remote-singularity-spawner over SSH. Prints one JSON line (see
# --help) and exits 0, or exits 11 (RSS_EXIT_SLURM) with the Slurm
# command's own message on stderr, or 64 on a usage error.
set -euo pipefail
umask 077

# shellcheck source-path=SCRIPTDIR source=common.sh
source "${BASH_SOURCE[0]%/*}/common.sh"

# Which job states mean what is the spawner's to decide (slurm_request.py): this
# script reports them as squeue prints them, and `cancel` is told which to wait out.
readonly STATES_RE='^[A-Z_]+(,[A-Z_]+)*$'
# What Slurm says of a job it no longer knows or that has already ended.
readonly JOB_GONE_RE='Invalid job id specified|already completing or completed'
# The lines of `scontrol show config` that tell whether Slurm keeps accounts, and where.
readonly CONFIG_LINE_RE='^(AccountingStorageType|ClusterName) *= *([^ ]*)'

usage() {
  cat <<'USAGE'
Usage: slurm_job.sh submit --job-name NAME --partition P --cpus N --memory MB
                           --time MINUTES [--gpus G [--gpu-type T]] [--nodelist HOST]
                           [--account A] [--qos Q] [--reservation R] [--constraint C]
                           --output-dir DIR [--sbatch-arg ARG]...
       slurm_job.sh state --job JOBID
       slurm_job.sh cancel --job JOBID --while-states STATE[,STATE]... [--wait SECONDS]
       slurm_job.sh partitions [--associations]

  submit      sbatch a job that holds one node (N CPUs, MB megabytes, G GPUs
              of type T, or of any type, if G > 0) for MINUTES; its log goes to DIR/slurm-JOBID.log
              (relative DIR is under $HOME; created 0700). A, Q, R and C
              (the spawner has checked them) go to sbatch as --account=A
              and so on, one word each. Each ARG is one more sbatch
              option. Prints {"job_id": "JOBID"}.
  state       Prints {"job_id", "state" (GONE if Slurm no longer knows the
              job), "reason", "node", "address", "partition", "position"
              (1-based among the partition's pending jobs, 0 if not pending)}.
  cancel      scancel the job (a job already gone is fine) and wait up to
              SECONDS (default 10) while its state is one of the
              --while-states. Prints {"job_id", "state"}.
  partitions  Prints the partitions sinfo shows this user: {"partitions": [...]},
              each time limit ("max_time") as sinfo prints it, and the GPUs
              of its nodes: "gpus_total", "gpus_idle" (no job holds them)
              and the GRES types ("gpu_types"). With
              --associations also "accounting" (false: AccountingStorageType
              is accounting_storage/none) and, when true, the user's
              "associations" on this cluster ([{"account", "partition"}],
              partition "" for any), or null and "associations_error".
USAGE
}

# Die with RSS_EXIT_SLURM if the Slurm command $1 is not on PATH.
require_slurm() {
  command -v -- "$1" >/dev/null \
    || die "${RSS_EXIT_SLURM}" "$1 not found on PATH (is the Slurm client installed on this host?)"
}

#######################################
# Run a Slurm command: its stdout goes to SLURM_OUT, its stderr to
# SLURM_ERR. Dies if the command is not on PATH; returns its status.
# Arguments: command, args...
#######################################
slurm() {
  local err_file status=0
  require_slurm "$1"
  err_file=$(mktemp) || die "${RSS_EXIT_CANNOT_WRITE}" "cannot create a temporary file"
  SLURM_OUT=$("$@" 2>"${err_file}") || status=$?
  SLURM_ERR=$(<"${err_file}")
  rm -f -- "${err_file}"
  if ((status == 0)) && [[ -n "${SLURM_ERR}" ]]; then printf '%s\n' "${SLURM_ERR}" >&2; fi
  return "${status}"
}

#######################################
# Run a Slurm command as slurm() does; die with RSS_EXIT_SLURM and its
# message if it fails.
#######################################
slurm_or_die() {
  slurm "$@" || die "${RSS_EXIT_SLURM}" "$1 failed: ${SLURM_ERR:-no message, exit status $?}"
}

#######################################
# squeue's line for job $1 in format $2 into SLURM_OUT; empty if Slurm no
# longer knows the job.
#######################################
squeue_job() {
  if ! slurm squeue -h -j "$1" -o "$2"; then
    [[ "${SLURM_ERR}" =~ ${JOB_GONE_RE} ]] || die "${RSS_EXIT_SLURM}" "squeue failed: ${SLURM_ERR}"
    SLURM_OUT=""
  fi
  SLURM_OUT=${SLURM_OUT%%$'\n'*}
}

submit() {
  local job_name="" partition="" cpus="" memory="" time="" gpus=0 nodelist output_dir=""
  # shellcheck disable=SC2034  # set by parse_options, read below as ${!option}
  local account qos reservation constraint option gpu_type
  local -a rest=() site=()
  while (($#)); do
    case "$1" in
      --sbatch-arg) site+=("${2?"$1 needs a value"}"); shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) rest+=("$1" "${2?"$1 needs a value"}"); shift 2 ;;
    esac
  done
  parse_options job-name partition cpus memory time gpus gpu-type nodelist account qos reservation \
    constraint output-dir -- "${rest[@]}"
  require_uint --cpus "${cpus}"
  require_uint --memory "${memory}"
  require_uint --time "${time}"
  require_uint --gpus "${gpus}"
  # sbatch reads --mem=0 as all of the node's memory and --time=0 as no limit.
  ((10#${cpus} > 0 && 10#${memory} > 0 && 10#${time} > 0)) \
    || die "${RSS_EXIT_USAGE}" "--cpus, --memory and --time must be more than 0"
  [[ -n "${job_name}" && -n "${partition}" && -n "${output_dir}" ]] \
    || die "${RSS_EXIT_USAGE}" "--job-name, --partition and --output-dir are required"
  # --no-requeue: a job whose node failed must end (the server is gone), not wait
  # in the queue again as a job without a server.
  local -a args=(--parsable "--job-name=${job_name}" "--partition=${partition}" --nodes=1 --ntasks=1
    "--cpus-per-task=${cpus}" "--mem=${memory}M" "--time=${time}" --no-requeue)
  if [[ -v gpu_type ]]; then
    [[ "${gpu_type}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] \
      || die "${RSS_EXIT_USAGE}" "--gpu-type needs a GPU type name"
    ((10#${gpus} > 0)) || die "${RSS_EXIT_USAGE}" "--gpu-type needs --gpus of at least 1"
  fi
  if ((10#${gpus} > 0)); then args+=("--gpus=${gpu_type:+${gpu_type}:}${gpus}"); fi
  if [[ -v nodelist ]]; then
    [[ -n "${nodelist}" ]] || die "${RSS_EXIT_USAGE}" "--nodelist needs a host name"
    args+=("--nodelist=${nodelist}")
  fi
  for option in account qos reservation constraint; do
    [[ -v "${option}" ]] || continue
    [[ -n "${!option}" ]] || die "${RSS_EXIT_USAGE}" "--${option} needs a value"
    args+=("--${option}=${!option}")
  done

  require_slurm sbatch
  cd "${HOME}"
  try_write "create the directory ${output_dir}" mkdir -p -m 700 -- "${output_dir}"
  [[ "${output_dir}" == /* ]] || output_dir="${HOME}/${output_dir}"
  # A % in the directory is literal, not one of sbatch's file name patterns.
  args+=("--output=${output_dir//%/%%}/slurm-%j.log" "--chdir=${HOME}" "${site[@]}"
    "--wrap=exec sleep infinity")
  slurm_or_die sbatch "${args[@]}"
  local job_id=${SLURM_OUT##*$'\n'}
  job_id=${job_id%%;*}
  [[ "${job_id}" =~ ^[0-9]+$ ]] || die "${RSS_EXIT_SLURM}" "sbatch answered '${SLURM_OUT}', not a job id"
  printf '{"job_id": %s}\n' "$(json_str "${job_id}")"
}

#######################################
# Print the 1-based position of job $1 among the pending jobs of partition
# $2, in the order Slurm will consider them; 0 if it is not among them.
#######################################
queue_position() {
  local id position=0
  slurm_or_die squeue -h -p "$2" -t PENDING --sort=-p,i -o %i
  while read -r id; do
    position=$((position + 1))
    if [[ "${id}" == "$1" ]]; then
      printf '%s' "${position}"
      return 0
    fi
  done <<<"${SLURM_OUT}"
  printf '0'
}

state() {
  local job=""
  parse_options job -- "$@"
  require_uint --job "${job}"
  local state reason node partition address="" position=0
  squeue_job "${job}" '%T|%r|%N|%P'
  IFS='|' read -r state reason node partition <<<"${SLURM_OUT}"
  case "${state:=GONE}" in
    PENDING) position=$(queue_position "${job}" "${partition}") ;;
    RUNNING)
      slurm_or_die sinfo -h -N -n "${node}" -o %o
      address=${SLURM_OUT%%$'\n'*}
      ;;
  esac
  printf '{"job_id": %s, "state": %s, "reason": %s, "node": %s, "address": %s, "partition": %s, "position": %s}\n' \
    "$(json_str "${job}")" "$(json_str "${state}")" "$(json_str "${reason}")" "$(json_str "${node}")" \
    "$(json_str "${address}")" "$(json_str "${partition}")" "${position}"
}

cancel() {
  local job="" wait=10 while_states=""
  parse_options job wait while-states -- "$@"
  require_uint --job "${job}"
  require_uint --wait "${wait}"
  [[ "${while_states}" =~ ${STATES_RE} ]] \
    || die "${RSS_EXIT_USAGE}" "--while-states needs STATE[,STATE]..., got '${while_states}'"
  if ! slurm scancel "${job}"; then
    [[ "${SLURM_ERR}" =~ ${JOB_GONE_RE} ]] || die "${RSS_EXIT_SLURM}" "scancel failed: ${SLURM_ERR}"
  fi
  local steps=$((10#${wait} * 5))
  squeue_job "${job}" %T
  while [[ -n "${SLURM_OUT}" && ",${while_states}," == *",${SLURM_OUT},"* ]]; do
    ((steps-- > 0)) || die "${RSS_EXIT_SLURM}" "job ${job} is still ${SLURM_OUT} after ${wait}s"
    sleep 0.2
    squeue_job "${job}" %T
  done
  printf '{"job_id": %s, "state": %s}\n' "$(json_str "${job}")" "$(json_str "${SLURM_OUT:-GONE}")"
}

# --- partitions ----------------------------------------------------------------------------

# Per partition name, in the order sinfo lists them.
declare -a PART_NAMES=()
declare -A PART_UP=() PART_DEFAULT=() PART_NODES=() PART_SEEN=() PART_LIMIT=()
declare -A PART_NODES_IDLE=() PART_NODES_TOTAL=() PART_CPUS_IDLE=() PART_CPUS_TOTAL=()
declare -A PART_CPN=() PART_MEM=() PART_GPUS=()
declare -A PART_GPUS_TOTAL=() PART_GPUS_USED=() PART_GPU_TYPES=()

#######################################
# Print the leading digits of $1 as a number (sinfo writes "4+" for "4 or
# more"), or 0.
#######################################
leading_uint() {
  if [[ "$1" =~ ^[0-9]+ ]]; then printf '%d' "$((10#${BASH_REMATCH[0]}))"; else printf '0'; fi
}

#######################################
# Print the GPU entries of a GRES string one per line, as TYPE COUNT (TYPE
# "-" when the entry names none): "a100 4" and "v100 2" of
# "gpu:a100:4(S:0,1),gpu:v100:2,mps:100"; "- 2" of "gpu:2"; nothing for
# "(null)".
#######################################
gpu_entries() {
  local gres="$1" entry
  while [[ "${gres}" =~ ^(.*)\([^\)]*\)(.*)$ ]]; do
    gres="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
  done
  local -a entries
  IFS=, read -r -a entries <<<"${gres}"
  for entry in "${entries[@]}"; do
    if [[ "${entry}" =~ ^gpu(:([^:]*))?:([0-9]+)$ ]]; then
      printf '%s %d\n' "${BASH_REMATCH[2]:--}" "$((10#${BASH_REMATCH[3]}))"
    fi
  done
}

# Print the number of GPUs in a GRES string (gpu_entries); 0 for "(null)".
gpu_count() {
  local type count total=0
  while read -r type count; do total=$((total + count)); done < <(gpu_entries "$1")
  printf '%s' "${total}"
}

# Set the element $2 of the associative array named $1 to $3 if that is larger.
set_max() {
  local -n table="$1"
  local old=${table[$2]:-0}
  table[$2]=$((old > $3 ? old : $3))
}

#######################################
# Add one line of `sinfo -o '%P|%a|%F|%C|%c|%m|%G|%l'` to the PART_ tables:
# counts are summed over a partition's lines, per-node values are the max.
#######################################
add_partition_line() {
  local name avail nodes cpus cpn mem gres limit _ idle total
  IFS='|' read -r name avail nodes cpus cpn mem gres limit <<<"$1"
  [[ -n "${name}" ]] || return 0
  if [[ "${name}" == *'*' ]]; then
    name=${name%'*'}
    PART_DEFAULT[${name}]=1
  fi
  if [[ -z "${PART_LIMIT[${name}]+set}" ]]; then
    PART_NAMES+=("${name}")
    PART_LIMIT[${name}]=${limit}
  fi
  [[ "${avail}" != up ]] || PART_UP[${name}]=1
  IFS=/ read -r _ idle _ total <<<"${nodes}"
  PART_NODES_IDLE[${name}]=$((${PART_NODES_IDLE[${name}]:-0} + $(leading_uint "${idle}")))
  PART_NODES_TOTAL[${name}]=$((${PART_NODES_TOTAL[${name}]:-0} + $(leading_uint "${total}")))
  IFS=/ read -r _ idle _ total <<<"${cpus}"
  PART_CPUS_IDLE[${name}]=$((${PART_CPUS_IDLE[${name}]:-0} + $(leading_uint "${idle}")))
  PART_CPUS_TOTAL[${name}]=$((${PART_CPUS_TOTAL[${name}]:-0} + $(leading_uint "${total}")))
  set_max PART_CPN "${name}" "$(leading_uint "${cpn}")"
  set_max PART_MEM "${name}" "$(leading_uint "${mem}")"
  set_max PART_GPUS "${name}" "$(gpu_count "${gres}")"
}

#######################################
# Add one line of `sinfo -N -O Partition,NodeList,Gres,GresUsed` (fields
# separated by |) to its partition: the node's name, its GPUs, those in
# use, their types (a node appears once per partition).
#######################################
add_node_line() {
  local name node gres used key type _
  IFS='|' read -r name node gres used <<<"$1"
  name=${name%'*'}
  key="${name}|${node}"
  [[ -n "${node}" && -z "${PART_SEEN[${key}]:-}" ]] || return 0
  PART_SEEN[${key}]=1
  PART_NODES[${name}]+="${PART_NODES[${name}]:+,}$(json_str "${node}")"
  PART_GPUS_TOTAL[${name}]=$((${PART_GPUS_TOTAL[${name}]:-0} + $(gpu_count "${gres}")))
  PART_GPUS_USED[${name}]=$((${PART_GPUS_USED[${name}]:-0} + $(gpu_count "${used}")))
  while read -r type _; do
    [[ "${type}" != - && ",${PART_GPU_TYPES[${name}]:-}," != *",$(json_str "${type}"),"* ]] || continue
    PART_GPU_TYPES[${name}]+="${PART_GPU_TYPES[${name}]:+,}$(json_str "${type}")"
  done < <(gpu_entries "${gres}")
}

# Print partition $1 of the PART_ tables as one JSON object.
partition_json() {
  local name="$1" up=false default=false
  [[ -z "${PART_UP[${name}]:-}" ]] || up=true
  [[ -z "${PART_DEFAULT[${name}]:-}" ]] || default=true
  printf '{"name": %s, "default": %s, "available": %s, "nodes": [%s], ' \
    "$(json_str "${name}")" "${default}" "${up}" "${PART_NODES[${name}]:-}"
  printf '"nodes_idle": %s, "nodes_total": %s, "cpus_idle": %s, "cpus_total": %s, ' \
    "${PART_NODES_IDLE[${name}]}" "${PART_NODES_TOTAL[${name}]}" \
    "${PART_CPUS_IDLE[${name}]}" "${PART_CPUS_TOTAL[${name}]}"
  printf '"cpus_per_node": %s, "memory_mb_per_node": %s, "gpus_per_node": %s, "max_time": %s, ' \
    "${PART_CPN[${name}]}" "${PART_MEM[${name}]}" "${PART_GPUS[${name}]}" "$(json_str "${PART_LIMIT[${name}]}")"
  local total=${PART_GPUS_TOTAL[${name}]:-0} used=${PART_GPUS_USED[${name}]:-0}
  printf '"gpus_idle": %s, "gpus_total": %s, "gpu_types": [%s]}' \
    "$((used < total ? total - used : 0))" "${total}" "${PART_GPU_TYPES[${name}]:-}"
}

# Print the JSON members that say the associations are unknown: accounting $1, why $2.
no_associations() {
  printf '"accounting": %s, "associations": null, "associations_error": %s' "$1" "$(json_str "$2")"
}

#######################################
# Print, for the partitions reply, the JSON members that tell whether Slurm
# keeps accounts ("accounting") and the user's associations on this cluster
# ("associations": [{"account", "partition"}]), or null and why
# ("associations_error"). The spawner decides what they allow.
#######################################
associations_json() {
  local line storage="" cluster="" account partition separator=""
  slurm scontrol show config || {
    no_associations null "scontrol show config failed: ${SLURM_ERR}"
    return 0
  }
  while IFS= read -r line; do
    [[ "${line}" =~ ${CONFIG_LINE_RE} ]] || continue
    case "${BASH_REMATCH[1]}" in
      ClusterName) cluster=${BASH_REMATCH[2]} ;;
      *) storage=${BASH_REMATCH[2]} ;;
    esac
  done <<<"${SLURM_OUT}"
  if [[ -z "${storage}" || "${storage}" == accounting_storage/none ]]; then
    printf '"accounting": false'
    return 0
  fi
  command -v sacctmgr >/dev/null || {
    no_associations true "sacctmgr not found on PATH"
    return 0
  }
  local -a where=("user=$(id -un)")
  [[ -z "${cluster}" ]] || where+=("cluster=${cluster}")
  slurm sacctmgr -n -P show associations where "${where[@]}" format=account,partition || {
    no_associations true "sacctmgr failed: ${SLURM_ERR}"
    return 0
  }
  printf '"accounting": true, "associations": ['
  while IFS='|' read -r account partition; do
    [[ -n "${account}" ]] || continue
    printf '%s{"account": %s, "partition": %s}' "${separator}" "$(json_str "${account}")" \
      "$(json_str "${partition}")"
    separator=", "
  done <<<"${SLURM_OUT}"
  printf ']'
}

partitions() {
  local associations=""
  if [[ "${1:-}" == --associations ]]; then
    associations=1
    shift
  fi
  parse_options -- "$@"
  local line name separator=""
  slurm_or_die sinfo -h -o '%P|%a|%F|%C|%c|%m|%G|%l'
  while IFS= read -r line; do add_partition_line "${line}"; done <<<"${SLURM_OUT}"
  slurm_or_die sinfo -h -N -O 'Partition:0|,NodeList:0|,Gres:0|,GresUsed:0'
  while IFS= read -r line; do add_node_line "${line}"; done <<<"${SLURM_OUT}"
  printf '{"partitions": ['
  for name in "${PART_NAMES[@]}"; do
    printf '%s' "${separator}"
    partition_json "${name}"
    separator=", "
  done
  printf ']'
  if [[ -n "${associations}" ]]; then
    printf ', '
    associations_json
  fi
  printf '}\n'
}

main() {
  local command="${1:-}"
  shift || true
  case "${command}" in
    submit | state | cancel | partitions) "${command}" "$@" ;;
    -h | --help) usage ;;
    "") die "${RSS_EXIT_USAGE}" "no command given (see --help)" ;;
    *) die "${RSS_EXIT_USAGE}" "unknown command '${command}' (see --help)" ;;
  esac
}

main "$@"
