#!/usr/bin/env bash
# Run vit_jax on every worker of a Cloud TPU VM slice (v4/v5e/v5p/v6e pods).
#
# Owns: the TPU pod launch. Optionally creates the slice, puts this source tree
# (or a git clone) on all workers, installs requirements.txt + jax[tpu] into a
# venv there, and runs the same `python -m vit_jax.main <flags>` on all workers
# at once with `gcloud compute tpus tpu-vm ssh --worker=all`. JAX finds the
# other workers by itself (jax.distributed.initialize() on a TPU VM needs no
# flags). Run with --help.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] -- --config=CONFIG --workdir=gs://BUCKET/DIR [more flags]

Steps (each one a gcloud command; --dry-run prints them):
  1. create the TPU VM slice            (only with --create)
  2. copy this tree (or git clone --repo) to every worker, make a venv there and
     pip install -r requirements.txt plus jax[tpu] at the pinned jax version
                                        (skipped with --skip_install)
  3. run `python -m vit_jax.main FLAGS` on all workers (--worker=all)
                                        (skipped with --install_only)

Options:
  --tpu NAME               TPU VM name (required)
  --zone ZONE              zone, e.g. us-central2-b (required)
  --project PROJECT        GCP project (default: gcloud's configured project)
  --create                 create the slice first
  --accelerator_type TYPE  for --create (default v4-16)
  --version VERSION        TPU software version for --create (default tpu-ubuntu2204-base)
  --spot                   create a Spot slice
  --repo URL               git clone URL on the workers instead of copying this tree
  --branch BRANCH          branch or tag for --repo (default main)
  --remote_dir DIR         folder under the workers' home (default vit_jax)
  --remote_python PY       python (>= 3.11) used for the venv (default python3.11;
                           installed with apt-get when missing)
  --skip_install           only run (the workers are set up already)
  --install_only           only set up, do not run
  --detach                 run in the background on the workers (log: DIR/run.log)
                           instead of streaming the output of every worker
  --dry-run                print the gcloud commands, run nothing
  -h, --help               this text

The workdir must be reachable from every worker (a gs:// bucket), since all
workers write their part of each checkpoint.

Example:
  launch/tpu_pod.sh --tpu my-v4-16 --zone us-central2-b --create -- \
      --config=configs/vit.py:b16,imagenet2012 --workdir=gs://my-bucket/vit_b16
EOF
}

die() {
  echo "tpu_pod.sh: error: $*" >&2
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

tpu="" zone="" project="" create=0 accelerator_type="v4-16" version="tpu-ubuntu2204-base"
spot=0 repo="" branch="main" remote_dir="vit_jax" remote_python="python3.11"
skip_install=0 install_only=0 detach=0 dry_run=0
main_args=() tarball=""

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
      --create) create=1 ;;
      --spot) spot=1 ;;
      --skip_install) skip_install=1 ;;
      --install_only) install_only=1 ;;
      --detach) detach=1 ;;
      --) main_args=("$@"); return ;;
      --tpu | --zone | --project | --accelerator_type | --version | --repo | --branch | \
        --remote_dir | --remote_python)
        (($#)) || die "$arg needs a value"
        printf -v "${arg#--}" '%s' "$1"
        shift ;;
      *) die "unknown option '$arg'. Put vit_jax.main flags after '--' (see --help)." ;;
    esac
  done
}

validate_args() {
  [[ -n $tpu ]] || die "--tpu NAME is required (see --help)"
  [[ -n $zone ]] || die "--zone ZONE is required (see --help)"
  if ((skip_install && install_only)); then
    die "--skip_install and --install_only together do nothing; drop one"
  fi
  if ((!install_only)) && ((${#main_args[@]} == 0)); then
    die "no vit_jax.main flags given; add '-- --config=... --workdir=gs://...' (see --help)"
  fi
}

# Fill the global array `gcloud_common` with flags every gcloud call shares.
set_common_flags() {
  gcloud_common=("--zone=$zone")
  [[ -z $project ]] || gcloud_common+=("--project=$project")
}

create_command() {
  local cmd=(gcloud compute tpus tpu-vm create "$tpu" "${gcloud_common[@]}"
    "--accelerator-type=$accelerator_type" "--version=$version")
  ((!spot)) || cmd+=(--spot)
  emit "${cmd[@]}"
}

ssh_all() {  # remote shell command
  emit gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_common[@]}" --worker=all --command="$1"
}

jax_version() {
  local version
  version=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$REPO_DIR/requirements.txt")
  [[ -n $version ]] || die "no 'jax==VERSION' line in $REPO_DIR/requirements.txt"
  echo "$version"
}

# Tar this tree into $tarball. In a git checkout: the tracked files and the untracked ones
# .gitignore does not name (local edits travel; virtualenvs, workdirs, caches stay home).
# Elsewhere: the whole tree minus the usual large folders.
pack_source() {
  if command -v git >/dev/null 2>&1 && git -C "$REPO_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # $1/$2 expand in the inner bash, on purpose.
    emit bash -c 'cd "$1" && git ls-files -z --cached --others --exclude-standard |
      tar --null --ignore-failed-read -czf "$2" -T -' pack_source "$REPO_DIR" "$tarball"
  else
    emit tar -czf "$tarball" -C "$REPO_DIR" --exclude=./.git --exclude='./.venv*' \
      --exclude=./workdirs --exclude=./runs --exclude=./.bench_results \
      --exclude=./.pytest_cache --exclude=__pycache__ .
  fi
}

# Put the source on the workers: a tarball of this tree, or a git clone.
source_commands() {
  local dir
  tarball="${TMPDIR:-/tmp}/vit_jax_src.$$.tgz"  # global: the EXIT trap removes it
  dir=$(quote_command "$remote_dir")
  if [[ -n $repo ]]; then
    ssh_all "if [ -d $dir/.git ]; then git -C $dir fetch --depth 1 origin $(quote_command "$branch") && git -C $dir checkout -f FETCH_HEAD; else git clone --depth 1 --branch $(quote_command "$branch") $(quote_command "$repo") $dir; fi"
  else
    ((dry_run)) || trap 'rm -f "$tarball"' EXIT
    pack_source
    emit gcloud compute tpus tpu-vm scp "$tarball" "$tpu:/tmp/vit_jax_src.tgz" "${gcloud_common[@]}" --worker=all
    ssh_all "mkdir -p $dir && tar -xzf /tmp/vit_jax_src.tgz -C $dir && rm -f /tmp/vit_jax_src.tgz"
  fi
}

install_command() {
  local py dir
  py=$(quote_command "$remote_python")
  dir=$(quote_command "$remote_dir")
  ssh_all "set -e; command -v $py >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $py $py-venv; }; cd $dir && $py -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -r requirements.txt $(quote_command "jax[tpu]==$(jax_version)") && pip install -q --no-deps -r requirements-nodeps.txt"
}

run_command() {
  local dir program
  dir=$(quote_command "$remote_dir")
  program="python -m vit_jax.main $(quote_command "${main_args[@]}")"
  if ((detach)); then
    ssh_all "cd $dir && . .venv/bin/activate && nohup $program > run.log 2>&1 < /dev/null &"
  else
    ssh_all "cd $dir && . .venv/bin/activate && $program"
  fi
}

# Print the command (--dry-run) or run it.
emit() {
  if ((dry_run)); then
    quote_command "$@"
  else
    echo "+ $(quote_command "$@")" >&2
    "$@"
  fi
}

main() {
  parse_args "$@"
  validate_args
  if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found; install the Google Cloud CLI (https://cloud.google.com/sdk) or use --dry-run"
  fi
  set_common_flags
  ((!create)) || create_command
  if ((!skip_install)); then
    source_commands
    install_command
  fi
  ((install_only)) || run_command
}

main "$@"
