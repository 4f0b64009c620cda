#!/usr/bin/env bash
# Start N vit_jax processes on this host, connected over 127.0.0.1.
#
# Owns: the single-host multi-process launch (tests with fake CPU devices,
# single-node multi-process GPU). Every process runs the same program,
# `python -m vit_jax.main <flags>`, plus --coordinator_address / --num_processes
# / --process_id. Each process logs to its own file; the first process that
# fails stops all the others, so the launch never hangs. Run with --help.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] -- --config=CONFIG --workdir=WORKDIR [more vit_jax.main flags]

Starts N processes of `python -m vit_jax.main` on this host. With N > 1 each
process also gets --coordinator_address=127.0.0.1:PORT (a free port),
--num_processes=N and --process_id=i.

Options:
  --num_processes N        processes to start (default 1)
  --devices_per_process K  run on CPU with K fake devices per process
                           (JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=K,
                           gloo cross-process collectives)
  --gpus_per_process G     pin GPUs: process i gets CUDA_VISIBLE_DEVICES=i*G..i*G+G-1
  --timeout S              stop everything and exit 124 after S seconds (default 0 = none)
  --log_dir DIR            per-process logs DIR/process_<i>.log
                           (default WORKDIR/launch_logs, or a /tmp folder if WORKDIR is remote)
  --port P                 coordinator port (default: a free port on 127.0.0.1)
  --module M               python module to run (default vit_jax.main)
  --kill_grace S           seconds between SIGTERM and SIGKILL when stopping (default 10)
  --max_restarts R         start the processes again, up to R times, when the run ends with
                           exit status 75 (preempted, checkpoint saved) or 76 (hang watchdog);
                           they resume from the workdir's checkpoint (default 0)
  --quiet                  do not echo process 0's output to the terminal
  --dry-run                print the commands, start nothing
  -h, --help               this text

Environment:
  VIT_JAX_LAUNCH_PYTHON    python interpreter (default: python, else python3)

Exit status: 0 when every process exits 0; otherwise the status of the first
process that failed (the others are stopped), 124 on --timeout, 2 on bad usage.
vit_jax.main's own statuses: 2 bad input, 3 NaN stop, 75 preempted, 76 hung
(docs/running.md).

Examples:
  launch/local.sh --num_processes 2 --devices_per_process 4 -- \
      --config=configs/vit.py:quickstart --workdir=workdirs/mh
  launch/local.sh --num_processes 8 --gpus_per_process 1 -- --config=... --workdir=...
EOF
}

die() {
  echo "local.sh: error: $*" >&2
  exit 2
}

# Print the arguments as one copy-pasteable shell command line.
quote_command() {
  local quoted=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

require_int() {  # name value min
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then
    die "$1 must be an integer >= $3, got '$2'"
  fi
}

num_processes=1 devices_per_process=0 gpus_per_process=0 timeout=0 kill_grace=10 max_restarts=0
log_dir="" port="" module="vit_jax.main" dry_run=0 quiet=0
main_args=()

parse_args() {
  local arg
  while (($#)); do
    arg=$1
    shift
    if [[ $arg == --*=* ]]; then  # --opt=value -> --opt value
      set -- "${arg#*=}" "$@"
      arg=${arg%%=*}
    fi
    case $arg in
      -h | --help) usage; exit 0 ;;
      --dry-run | --dry_run) dry_run=1 ;;
      --quiet) quiet=1 ;;
      --) main_args=("$@"); return ;;
      --num_processes | --devices_per_process | --gpus_per_process | --timeout | \
        --log_dir | --port | --module | --kill_grace | --max_restarts)
        (($#)) || die "$arg needs a value"
        printf -v "${arg#--}" '%s' "$1"
        shift ;;
      *) die "unknown option '$arg'. Put vit_jax.main flags after '--' (see --help)." ;;
    esac
  done
}

validate_args() {
  local arg
  require_int --num_processes "$num_processes" 1
  require_int --devices_per_process "$devices_per_process" 0
  require_int --gpus_per_process "$gpus_per_process" 0
  require_int --timeout "$timeout" 0
  require_int --kill_grace "$kill_grace" 0
  require_int --max_restarts "$max_restarts" 0
  max_restarts=$((10#$max_restarts))
  [[ -z $port ]] || require_int --port "$port" 1
  # Leading zeros would read as octal in $(( )).
  num_processes=$((10#$num_processes)) devices_per_process=$((10#$devices_per_process))
  gpus_per_process=$((10#$gpus_per_process)) timeout=$((10#$timeout)) kill_grace=$((10#$kill_grace))
  if ((devices_per_process && gpus_per_process)); then
    die "--devices_per_process (fake CPU devices) and --gpus_per_process exclude each other"
  fi
  for arg in ${main_args[@]+"${main_args[@]}"}; do
    case $arg in
      --coordinator_address* | --num_processes* | --process_id*)
        die "local.sh sets $arg itself; give --num_processes before '--' instead" ;;
    esac
  done
}

# The --workdir value among the main.py flags, or "".
find_workdir() {
  local prev="" arg
  for arg in ${main_args[@]+"${main_args[@]}"}; do
    case $arg in
      --workdir=*) echo "${arg#--workdir=}"; return ;;
    esac
    if [[ $prev == --workdir ]]; then echo "$arg"; return; fi
    prev=$arg
  done
}

choose_python_and_paths() {
  python_bin=${VIT_JAX_LAUNCH_PYTHON:-}
  if [[ -z $python_bin ]]; then
    if command -v python >/dev/null 2>&1; then python_bin=python; else python_bin=python3; fi
  fi
  if ((num_processes > 1)) && [[ -z $port ]]; then
    port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
      die "could not pick a free port with '$python_bin'; pass --port"
  fi
  if [[ -z $log_dir ]]; then
    local workdir
    workdir=$(find_workdir)
    if [[ -n $workdir && $workdir != *://* ]]; then
      log_dir="$workdir/launch_logs"
    else
      log_dir="${TMPDIR:-/tmp}/vit_jax_launch.$$"
    fi
  fi
}

# XLA_FLAGS from the environment without any device-count flag, plus ours.
xla_flags_with_device_count() {
  local kept=() flag
  for flag in ${XLA_FLAGS:-}; do
    [[ $flag == --xla_force_host_platform_device_count=* ]] || kept+=("$flag")
  done
  kept+=("--xla_force_host_platform_device_count=$devices_per_process")
  echo "${kept[*]}"
}

# Fill the global array `cmd` with process $1's command line.
build_command() {
  local i=$1 first
  cmd=(env)
  if ((devices_per_process)); then
    cmd+=(JAX_PLATFORMS=cpu "XLA_FLAGS=$(xla_flags_with_device_count)"
      JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo)
  fi
  if ((gpus_per_process)); then
    first=$((i * gpus_per_process))
    cmd+=("CUDA_VISIBLE_DEVICES=$(seq -s, "$first" $((first + gpus_per_process - 1)))")
  fi
  cmd+=("$python_bin" -m "$module" ${main_args[@]+"${main_args[@]}"})
  if ((num_processes > 1)); then
    cmd+=("--coordinator_address=127.0.0.1:$port" "--num_processes=$num_processes" "--process_id=$i")
  fi
}

print_commands() {
  local i
  echo "export PYTHONPATH=$(quote_command "$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}")"
  for ((i = 0; i < num_processes; i++)); do
    build_command "$i"
    echo "# process $i of $num_processes, log: $log_dir/process_$i.log"
    quote_command "${cmd[@]}"
  done
}

pids=()
finished=()

# Each process runs in its own process group (set -m), so stopping it also
# stops anything it started.
start_processes() {
  local i log
  mkdir -p "$log_dir"
  export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
  set -m
  for ((i = 0; i < num_processes; i++)); do
    build_command "$i"
    log="$log_dir/process_$i.log"
    # Gloo (CPU collectives) prints one "[Gloo] Rank r is connected to n peer ranks" line
    # per rank and collective group from C++; drop them, keep everything else.
    if ((i == 0 && !quiet)); then
      "${cmd[@]}" > >(grep --line-buffered -v '^\[Gloo\] Rank [0-9]* is connected to' | tee "$log") 2>&1 &
    else
      "${cmd[@]}" > >(grep --line-buffered -v '^\[Gloo\] Rank [0-9]* is connected to' >"$log") 2>&1 &
    fi
    pids+=("$!")
  done
  set +m
  echo "local.sh: started $num_processes process(es): pids ${pids[*]}; logs in $log_dir" >&2
}

any_running() {
  local i
  for i in "${!pids[@]}"; do
    [[ -n ${finished[i]:-} ]] && continue
    kill -0 "${pids[i]}" 2>/dev/null && return 0
  done
  return 1
}

signal_running() {  # signal
  local i
  for i in "${!pids[@]}"; do
    [[ -n ${finished[i]:-} ]] && continue
    kill "-$1" -- "-${pids[i]}" 2>/dev/null || kill "-$1" "${pids[i]}" 2>/dev/null || true
  done
}

# SIGTERM every running process, SIGKILL what is left after --kill_grace.
stop_all() {
  local tenths=0
  ((${#pids[@]})) || return 0
  signal_running TERM
  while any_running && ((tenths < kill_grace * 10)); do
    sleep 0.1
    tenths=$((tenths + 1))
  done
  if any_running; then
    echo "local.sh: processes still running after ${kill_grace}s; sending SIGKILL" >&2
    signal_running KILL
  fi
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

report_failure() {  # index status
  local log="$log_dir/process_$1.log"
  echo "local.sh: process $1 (pid ${pids[$1]}) exited with status $2; stopping the others." >&2
  echo "local.sh: last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
}

# Poll until all processes exit 0, one fails, or the timeout passes.
monitor() {
  local remaining=$num_processes i status
  local deadline=$((SECONDS + timeout))
  while ((remaining > 0)); do
    for i in "${!pids[@]}"; do
      [[ -n ${finished[i]:-} ]] && continue
      kill -0 "${pids[i]}" 2>/dev/null && continue
      status=0
      wait "${pids[i]}" || status=$?
      finished[i]=1
      remaining=$((remaining - 1))
      if ((status != 0)); then
        report_failure "$i" "$status"
        stop_all
        return "$status"
      fi
    done
    if ((timeout > 0 && SECONDS >= deadline && remaining > 0)); then
      echo "local.sh: timeout after ${timeout}s; stopping $remaining running process(es)." >&2
      stop_all
      return 124
    fi
    ((remaining > 0)) && sleep 0.2
  done
  pids=()
  echo "local.sh: all $num_processes process(es) finished OK; logs in $log_dir" >&2
}

main() {
  parse_args "$@"
  validate_args
  ((${#main_args[@]})) || die "no vit_jax.main flags given; add '-- --config=... --workdir=...' (see --help)"
  choose_python_and_paths
  if ((dry_run)); then
    print_commands
    return 0
  fi
  trap stop_all EXIT
  trap 'echo "local.sh: interrupted; stopping processes" >&2; stop_all; exit 130' INT
  trap 'echo "local.sh: terminated; stopping processes" >&2; stop_all; exit 143' TERM
  local restarts=0 status
  while true; do
    pids=() finished=()
    start_processes
    status=0
    monitor || status=$?
    if ((status == 75 || status == 76)) && ((restarts < max_restarts)); then
      restarts=$((restarts + 1))
      echo "local.sh: exit status $status (75 preempted / 76 hung): restart $restarts of" \
        "$max_restarts, resuming from the last checkpoint" >&2
      continue
    fi
    return "$status"
  done
}

main "$@"
