#!/usr/bin/env bats
# slurm_job.sh against stand-in sbatch, squeue, scancel and sinfo (helpers.bash:
# stand_in), which record their argv and answer what each test scripts.
# SC2016: single-quoted $ and backquotes are meant literally (stand-in bodies, hostile values).
# SC2154: bats' `run --separate-stderr` assigns stderr; the stand-ins' header sets n.
# shellcheck disable=SC2016,SC2154

bats_require_minimum_version 1.5.0

load helpers

setup() { common_setup; }
teardown() { common_teardown; }

slurm_job() {
  bash "${SCRIPTS}/slurm_job.sh" "$@"
}

# slurm_job.sh with a PATH that finds no Slurm command (nor anything else).
slurm_job_without_slurm() {
  mkdir -p "${BATS_TEST_TMPDIR}/empty"
  PATH="${BATS_TEST_TMPDIR}/empty" "${BASH}" "${SCRIPTS}/slurm_job.sh" "$@"
}

# json_is ACTUAL EXPECTED: the two JSON texts hold the same value.
json_is() {
  python3 - "$1" "$2" <<'PY'
import json, sys
actual, expected = (json.loads(text) for text in sys.argv[1:])
if actual != expected:
    sys.exit(f"got      {json.dumps(actual)}\nexpected {json.dumps(expected)}")
PY
}

# words WORD...: the words one a line, as stand_in_argv prints an argv.
words() {
  printf '%s\n' "$@"
}

submit() {
  slurm_job submit --job-name jupyter-alice --partition debug --cpus 2 --memory 1500 --time 60 \
    --output-dir .rss/slurm "$@"
}

# --- submit -------------------------------------------------------------------------------

@test "submit: sbatch gets one word per value, site options before --wrap; the reply is the job id" {
  stand_in sbatch <<<'printf "123;cluster1\n"'
  run -0 --separate-stderr submit --sbatch-arg --account=proj1 --sbatch-arg '--comment=a b'
  [ "${output}" = '{"job_id": "123"}' ]
  [ "$(stand_in_argv sbatch)" = "$(words --parsable --job-name=jupyter-alice --partition=debug \
    --nodes=1 --ntasks=1 --cpus-per-task=2 --mem=1500M --time=60 --no-requeue \
    "--output=${HOME}/.rss/slurm/slurm-%j.log" "--chdir=${HOME}" --account=proj1 '--comment=a b' \
    '--wrap=exec sleep infinity')" ]
  [ "$(stat -c %a "${HOME}/.rss/slurm")" = 700 ]
}

@test "submit: --gpus and --nodelist are passed when given; --gpus 0 is not passed" {
  stand_in sbatch <<<'printf "7\n"'
  run -0 --separate-stderr submit --gpus 2 --nodelist rss-node2 --output-dir "${HOME}/abs dir"
  [ "${output}" = '{"job_id": "7"}' ]
  run -0 grep -c -e '^--gpus=2$' -e '^--nodelist=rss-node2$' < <(stand_in_argv sbatch)
  [ "${output}" = 2 ]
  [ "$(stand_in_argv sbatch | grep '^--output=')" = "--output=${HOME}/abs dir/slurm-%j.log" ]
  run -0 --separate-stderr submit --gpus 0
  run ! grep -q -e '^--gpus' -e '^--nodelist' < <(stand_in_argv sbatch 2)
}

@test "submit: a GPU type goes with the count, --gpus=TYPE:COUNT; without a count, or malformed, exit 64" {
  stand_in sbatch <<<'printf "7\n"'
  run -0 --separate-stderr submit --gpus 1 --gpu-type a100
  [ "$(stand_in_argv sbatch | grep '^--gpus')" = "--gpus=a100:1" ]
  run -64 --separate-stderr submit --gpu-type a100
  [[ "${stderr}" == *"--gpu-type needs --gpus of at least 1"* ]]
  run -64 --separate-stderr submit --gpus 1 --gpu-type 'a100:2,b'
  [[ "${stderr}" == *"--gpu-type needs a GPU type name"* ]]
  [ "$(stand_in_calls sbatch)" = 1 ]
}

@test "submit: account, QOS, reservation and constraint go to sbatch as one word each" {
  stand_in sbatch <<<'printf "8\n"'
  run -0 --separate-stderr submit --account proj1 --qos high --reservation maint,rsv2 \
    --constraint '[rack1|rack2]&ib' --sbatch-arg '--exclude=node[01-04]'
  [ "${output}" = '{"job_id": "8"}' ]
  [ "$(stand_in_argv sbatch)" = "$(words --parsable --job-name=jupyter-alice --partition=debug \
    --nodes=1 --ntasks=1 --cpus-per-task=2 --mem=1500M --time=60 --no-requeue \
    --account=proj1 --qos=high --reservation=maint,rsv2 '--constraint=[rack1|rack2]&ib' \
    "--output=${HOME}/.rss/slurm/slurm-%j.log" "--chdir=${HOME}" '--exclude=node[01-04]' \
    '--wrap=exec sleep infinity')" ]
}

@test "submit: a site option's value is never an option of its own, nor run; an empty one is exit 64" {
  stand_in sbatch <<<'printf "9\n"'
  local pwned="${BATS_TEST_TMPDIR}/pwned"
  run -0 --separate-stderr submit --account '--wrap=id' --qos "x;touch ${pwned}" \
    --reservation "\$(touch ${pwned})" --constraint "a|\`touch ${pwned}\`"
  run -0 grep -cxF -e "--account=--wrap=id" -e "--qos=x;touch ${pwned}" -e "--reservation=\$(touch ${pwned})" \
    -e "--constraint=a|\`touch ${pwned}\`" < <(stand_in_argv sbatch)
  [ "${output}" = 4 ]
  [ "$(stand_in_argv sbatch | grep -c '^--wrap=')" = 1 ]
  [ ! -e "${pwned}" ]
  local option
  for option in account qos reservation constraint; do
    run -64 --separate-stderr submit "--${option}" ''
    [[ "${stderr}" == *"--${option} needs a value"* ]]
  done
  [ "$(stand_in_calls sbatch)" = 1 ]
}

@test "submit: sbatch's own error is passed on with exit 11" {
  stand_in sbatch <<'EOF'
printf 'sbatch: error: Batch job submission failed: Invalid partition name specified\n' >&2
exit 1
EOF
  run -11 --separate-stderr submit
  [ "${output}" = "" ]
  [[ "${stderr}" == *"sbatch: error: Batch job submission failed: Invalid partition name specified"* ]]
}

@test "submit: an answer that is not a job id is exit 11" {
  stand_in sbatch <<<'printf "Submitted batch job\n"'
  run -11 --separate-stderr submit
  [[ "${stderr}" == *"sbatch answered 'Submitted batch job', not a job id"* ]]
}

@test "submit: no sbatch on PATH is exit 11 saying so; nothing is created" {
  run -11 --separate-stderr slurm_job_without_slurm submit --job-name j --partition debug --cpus 1 \
    --memory 100 --time 5 --output-dir .rss/slurm
  [ "${stderr}" = "slurm_job.sh: sbatch not found on PATH (is the Slurm client installed on this host?)" ]
  [ ! -e "${HOME}/.rss" ]
}

@test "submit: hostile values travel as one word each and nothing runs them" {
  stand_in sbatch <<<'printf "9\n"'
  local pwned="${BATS_TEST_TMPDIR}/pwned"
  run -0 --separate-stderr submit --partition "debug;touch ${pwned}" --job-name "\$(touch ${pwned})" \
    --sbatch-arg "--comment=\`touch ${pwned}\`"
  run -0 grep -cxF -e "--partition=debug;touch ${pwned}" -e "--job-name=\$(touch ${pwned})" \
    -e "--comment=\`touch ${pwned}\`" < <(stand_in_argv sbatch)
  [ "${output}" = 3 ]
  [ ! -e "${pwned}" ]
}

@test "submit: numbers and names are checked before anything runs: exit 64" {
  stand_in sbatch <<<'printf "9\n"'
  run -64 --separate-stderr submit --cpus 'x;id'
  [[ "${stderr}" == *"--cpus needs a non-negative integer, got 'x;id'"* ]]
  run -64 --separate-stderr submit --gpus -1
  run -64 --separate-stderr submit --memory 0
  [[ "${stderr}" == *"--cpus, --memory and --time must be more than 0"* ]]
  run -64 --separate-stderr submit --time 00
  run -64 --separate-stderr submit --partition ''
  [[ "${stderr}" == *"--job-name, --partition and --output-dir are required"* ]]
  run -64 --separate-stderr submit --nodelist ''
  [[ "${stderr}" == *"--nodelist needs a host name"* ]]
  run -64 --separate-stderr submit --bogus 1
  [ "$(stand_in_calls sbatch)" = 0 ]
}

# --- state --------------------------------------------------------------------------------

@test "state: a pending job, with its place among the partition's pending jobs" {
  stand_in squeue <<'EOF'
case "$*" in
  "-h -j 42 -o %T|%r|%N|%P") printf 'PENDING|Priority||debug\n' ;;
  "-h -p debug -t PENDING --sort=-p,i -o %i") printf '40\n41\n42\n43\n' ;;
  *) exit 99 ;;
esac
EOF
  run -0 --separate-stderr slurm_job state --job 42
  [ "${output}" = '{"job_id": "42", "state": "PENDING", "reason": "Priority", "node": "", "address": "", "partition": "debug", "position": 3}' ]
}

@test "state: a pending job not in the pending list is at position 0" {
  stand_in squeue <<'EOF'
case "$*" in
  *" -j 42 "*) printf 'PENDING|BeginTime||debug\n' ;;
  *) printf '40\n' ;;
esac
EOF
  run -0 --separate-stderr slurm_job state --job 42
  [ "$(json_field "${output}" position)" = 0 ]
}

@test "state: a running job, with its node and the node's address" {
  stand_in squeue <<<'printf "RUNNING|None|rss-node1|debug\n"'
  stand_in sinfo <<'EOF'
[ "$*" = "-h -N -n rss-node1 -o %o" ] || exit 99
printf '10.213.47.11\n10.213.47.11\n'
EOF
  run -0 --separate-stderr slurm_job state --job 42
  [ "${output}" = '{"job_id": "42", "state": "RUNNING", "reason": "None", "node": "rss-node1", "address": "10.213.47.11", "partition": "debug", "position": 0}' ]
}

@test "state: a job Slurm no longer knows is GONE, exit 0" {
  stand_in squeue <<'EOF'
printf 'slurm_load_jobs error: Invalid job id specified\n' >&2
exit 1
EOF
  run -0 --separate-stderr slurm_job state --job 42
  [ "${output}" = '{"job_id": "42", "state": "GONE", "reason": "", "node": "", "address": "", "partition": "", "position": 0}' ]
  stand_in squeue <<<'exit 0'
  run -0 --separate-stderr slurm_job state --job 42
  [ "$(json_field "${output}" state)" = GONE ]
}

@test "state: squeue failing otherwise, or missing, is exit 11 with its message" {
  stand_in squeue <<'EOF'
printf 'squeue: error: Unable to contact slurm controller (connect failure)\n' >&2
exit 1
EOF
  run -11 --separate-stderr slurm_job state --job 42
  [[ "${stderr}" == *"squeue: error: Unable to contact slurm controller (connect failure)"* ]]
  run -11 --separate-stderr slurm_job_without_slurm state --job 42
  [[ "${stderr}" == *"squeue not found on PATH"* ]]
  run -64 --separate-stderr slurm_job state --job '42;id'
}

# --- cancel -------------------------------------------------------------------------------

# The states the spawner says a job holds its allocation in (slurm_request.HOLDING_STATES).
HOLDING=COMPLETING,CONFIGURING,PENDING,REQUEUED,RESIZING,RUNNING,SUSPENDED

@test "cancel: scancel, then wait until the job has left the queue" {
  stand_in scancel <<<'exit 0'
  stand_in squeue <<<'if ((n <= 2)); then printf "COMPLETING\n"; fi'
  run -0 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}"
  [ "${output}" = '{"job_id": "42", "state": "GONE"}' ]
  [ "$(stand_in_argv scancel)" = 42 ]
  [ "$(stand_in_argv squeue 3)" = "$(words -h -j 42 -o %T)" ]
}

@test "cancel: a job that has ended but is still listed is done" {
  stand_in scancel <<<'exit 0'
  stand_in squeue <<<'printf "CANCELLED\n"'
  run -0 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}"
  [ "${output}" = '{"job_id": "42", "state": "CANCELLED"}' ]
}

@test "cancel: a second cancel succeeds (idempotent)" {
  stand_in scancel <<'EOF'
printf 'scancel: error: Kill job error on job id 42: Invalid job id specified\n' >&2
exit 1
EOF
  stand_in squeue <<'EOF'
printf 'slurm_load_jobs error: Invalid job id specified\n' >&2
exit 1
EOF
  run -0 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}"
  [ "${output}" = '{"job_id": "42", "state": "GONE"}' ]
  stand_in scancel <<'EOF'
printf 'scancel: error: Kill job error on job id 42: Job/step already completing or completed\n' >&2
exit 1
EOF
  run -0 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}"
}

@test "cancel: a job still running after --wait is exit 11 naming its state" {
  stand_in scancel <<<'exit 0'
  stand_in squeue <<<'printf "RUNNING\n"'
  local began=${EPOCHREALTIME/./}
  run -11 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}" --wait 1
  local waited=$((${EPOCHREALTIME/./} - began))
  [ "${stderr}" = "slurm_job.sh: job 42 is still RUNNING after 1s" ]
  ((waited >= 900000 && waited < 5000000))
  [ "$(stand_in_calls squeue)" -ge 5 ]
}

@test "cancel: scancel failing otherwise is exit 11 with its message" {
  stand_in scancel <<'EOF'
printf 'scancel: error: Kill job error on job id 42: Access/permission denied\n' >&2
exit 1
EOF
  run -11 --separate-stderr slurm_job cancel --job 42 --while-states "${HOLDING}"
  [[ "${stderr}" == *"Access/permission denied"* ]]
}

@test "cancel: it waits only while the job is in a state it was told; without them it is a usage error" {
  stand_in scancel <<<'exit 0'
  stand_in squeue <<<'printf "REQUEUED\n"'
  run -11 --separate-stderr slurm_job cancel --job 42 --wait 0 --while-states "${HOLDING}"
  [ "${stderr}" = "slurm_job.sh: job 42 is still REQUEUED after 0s" ]
  run -0 --separate-stderr slurm_job cancel --job 42 --while-states RUNNING
  [ "${output}" = '{"job_id": "42", "state": "REQUEUED"}' ]
  run -64 --separate-stderr slurm_job cancel --job 42
  [[ "${stderr}" == *"--while-states needs STATE"* ]]
  run -64 --separate-stderr slurm_job cancel --job 42 --while-states 'RUNNING;id'
}

# --- partitions ---------------------------------------------------------------------------

@test "partitions: sinfo's lines are summed per partition, per-node values are the max" {
  stand_in sinfo <<'EOF'
case "$*" in
  "-h -o %P|%a|%F|%C|%c|%m|%G|%l")
    printf '%s\n' \
      'debug*|up|1/1/0/2|1/3/0/4|2|2000|(null)|1:00:00' \
      'debug*|up|0/0/1/1|0/0/2/2|2|2000|(null)|1:00:00' \
      'gpu|up|0/1/0/1|0/8/0/8|8|64000+|gpu:a100:4(S:0,1),gpu:v100:2,mps:100|2-00:00:00' \
      'gpu|up|1/0/0/1|16/0/0/16|16|128000|gpu:4|2-00:00:00' \
      'long|down|0/0/0/0|0/0/0/0|0|0|(null)|infinite' ;;
  "-h -N -O Partition:0|,NodeList:0|,Gres:0|,GresUsed:0")
    printf '%s\n' 'debug*|rss-node1|(null)|(null)' 'debug*|rss-node2|(null)|(null)' \
      'debug*|rss-node3|(null)|(null)' 'gpu|gpu1|gpu:a100:4(S:0,1),gpu:v100:2,mps:100|gpu:a100:1(IDX:0),mps:0' \
      'gpu|gpu2|gpu:4|gpu:4(IDX:0-3)' 'gpu|gpu1|gpu:a100:4(S:0,1),gpu:v100:2,mps:100|gpu:a100:1(IDX:0),mps:0' ;;
  *) exit 99 ;;
esac
EOF
  run -0 --separate-stderr slurm_job partitions
  [ "$(wc -l <<<"${output}")" = 1 ]
  json_is "${output}" '{"partitions": [
    {"name": "debug", "default": true, "available": true, "nodes": ["rss-node1", "rss-node2", "rss-node3"],
     "nodes_idle": 1, "nodes_total": 3, "cpus_idle": 3, "cpus_total": 6, "cpus_per_node": 2,
     "memory_mb_per_node": 2000, "gpus_per_node": 0, "max_time": "1:00:00",
     "gpus_idle": 0, "gpus_total": 0, "gpu_types": []},
    {"name": "gpu", "default": false, "available": true, "nodes": ["gpu1", "gpu2"],
     "nodes_idle": 1, "nodes_total": 2, "cpus_idle": 8, "cpus_total": 24, "cpus_per_node": 16,
     "memory_mb_per_node": 128000, "gpus_per_node": 6, "max_time": "2-00:00:00",
     "gpus_idle": 5, "gpus_total": 10, "gpu_types": ["a100", "v100"]},
    {"name": "long", "default": false, "available": false, "nodes": [],
     "nodes_idle": 0, "nodes_total": 0, "cpus_idle": 0, "cpus_total": 0, "cpus_per_node": 0,
     "memory_mb_per_node": 0, "gpus_per_node": 0, "max_time": "infinite",
     "gpus_idle": 0, "gpus_total": 0, "gpu_types": []}]}'
}

@test "partitions: each time limit as sinfo prints it (the spawner reads it: slurm_request.py)" {
  local -a limits=(30 30:00 30:01 1:00:00 01:30:01 1-00 1-02 1-02:30 2-00:00:01 infinite UNLIMITED)
  local limit i=0
  for limit in "${limits[@]}"; do
    printf 'p%s|up|0/1/0/1|0/2/0/2|2|100|(null)|%s\n' "$((i++))" "${limit}"
  done >"${BATS_TEST_TMPDIR}/sinfo.out"
  stand_in sinfo <<EOF
[[ "\$*" == *-N* ]] || cat '${BATS_TEST_TMPDIR}/sinfo.out'
EOF
  run -0 --separate-stderr slurm_job partitions
  run -0 python3 -c 'import json,sys; print(" ".join(p["max_time"] for p in json.loads(sys.argv[1])["partitions"]))' \
    "${output}"
  [ "${output}" = "${limits[*]}" ]
}

# A sinfo that shows one partition, debug, on rss-node1.
one_partition() {
  stand_in sinfo <<'EOF'
case "$*" in
  "-h -o %P|%a|%F|%C|%c|%m|%G|%l") printf 'debug*|up|1/1/0/2|1/3/0/4|2|2000|(null)|1:00:00\n' ;;
  "-h -N -O Partition:0|,NodeList:0|,Gres:0|,GresUsed:0") printf 'debug*|rss-node1|(null)|(null)\n' ;;
  *) exit 99 ;;
esac
EOF
}

# scontrol show config, as Slurm prints it, with AccountingStorageType $1.
scontrol_config() {
  stand_in scontrol <<EOF
[ "\$*" = "show config" ] || exit 99
printf '%s\n' 'Configuration data as of 2024-05-01T10:00:00' 'AccountingStorageHost   = (null)' \
  'AccountingStorageType   = $1' 'ClusterName             = rss' 'SLURM_VERSION           = 22.05.8'
EOF
}

# The members of the partitions reply but "partitions", as JSON.
reply_but_partitions() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.pop("partitions"); print(json.dumps(d))' "$1"
}

@test "partitions --associations: with accounting, the user's associations on this cluster" {
  one_partition
  scontrol_config accounting_storage/slurmdbd
  stand_in sacctmgr <<'EOF'
printf '%s\n' 'proj1|' 'gpu-proj|gpu' 'we"ird|'
EOF
  run -0 --separate-stderr slurm_job partitions --associations
  [ "$(wc -l <<<"${output}")" = 1 ]
  json_is "$(reply_but_partitions "${output}")" '{"accounting": true, "associations": [
    {"account": "proj1", "partition": ""}, {"account": "gpu-proj", "partition": "gpu"},
    {"account": "we\"ird", "partition": ""}]}'
  [ "$(stand_in_argv sacctmgr)" = "$(words -n -P show associations where "user=$(id -un)" cluster=rss \
    format=account,partition)" ]
}

@test "partitions --associations: accounting off, or sacctmgr failing, is said and is no failure" {
  one_partition
  scontrol_config accounting_storage/none
  stand_in sacctmgr <<<'exit 99'
  run -0 --separate-stderr slurm_job partitions --associations
  json_is "$(reply_but_partitions "${output}")" '{"accounting": false}'
  [ "$(stand_in_calls sacctmgr)" = 0 ]
  scontrol_config accounting_storage/slurmdbd
  stand_in sacctmgr <<'EOF'
printf 'sacctmgr: error: Problem talking to the database: Connection refused\n' >&2
exit 1
EOF
  run -0 --separate-stderr slurm_job partitions --associations
  json_is "$(reply_but_partitions "${output}")" '{"accounting": true, "associations": null,
    "associations_error": "sacctmgr failed: sacctmgr: error: Problem talking to the database: Connection refused"}'
  stand_in scontrol <<<'printf "slurm_load_ctl_conf error: Unable to contact slurm controller\n" >&2; exit 1'
  run -0 --separate-stderr slurm_job partitions --associations
  [ "$(json_field "${output}" accounting)" = None ]
  [[ "$(json_field "${output}" associations_error)" == "scontrol show config failed: slurm_load_ctl_conf error"* ]]
}

@test "partitions: without --associations neither scontrol nor sacctmgr is asked" {
  one_partition
  scontrol_config accounting_storage/slurmdbd
  run -0 --separate-stderr slurm_job partitions
  [ "$(reply_but_partitions "${output}")" = '{}' ]
  [ "$(stand_in_calls scontrol)" = 0 ]
  run -64 --separate-stderr slurm_job partitions --bogus
}

@test "partitions: sinfo failing is exit 11 with its message" {
  stand_in sinfo <<'EOF'
printf 'sinfo: error: slurm_load_partitions: Unable to contact slurm controller (connect failure)\n' >&2
exit 1
EOF
  run -11 --separate-stderr slurm_job partitions
  [[ "${stderr}" == *"slurm_load_partitions: Unable to contact slurm controller"* ]]
}

# --- the command line ---------------------------------------------------------------------

@test "an unknown or missing command is exit 64; --help lists the commands" {
  run -64 --separate-stderr slurm_job
  run -64 --separate-stderr slurm_job bogus
  [[ "${stderr}" == *"unknown command 'bogus'"* ]]
  run -0 slurm_job --help
  [[ "${output}" == *"submit"* && "${output}" == *"partitions"* && "${output}" == *"--sbatch-arg"* ]]
}
