"""cluster/: the Ray launcher config and the KubeRay RayJob are well-formed, and submit_local.sh runs the job."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import KB, MENTIONS, TEXT

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
SHARED_MODEL = "/mnt/shared/models/multilingual-e5-small"

# Property names of the RayJob CRD, version ray.io/v1, read from KubeRay's
# ray-operator/config/crd/bases/ray.io_rayjobs.yaml (github.com/ray-project/kuberay, commit feeaf72f, 2026-08-19)
# and docs/reference/api.md of the same commit. Only the levels this repo's RayJob uses are listed.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode",
    "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}
RAY_CLUSTER_SPEC = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy", "rayVersion", "suspend",
    "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}
RAY_CLUSTER_REQUIRED = {"headGroupSpec"}
HEAD_GROUP_SPEC = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
                   "serviceType", "template"}
HEAD_GROUP_REQUIRED = {"template"}
WORKER_GROUP_SPEC = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                     "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
WORKER_GROUP_REQUIRED = {"groupName", "maxReplicas", "minReplicas", "template"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _load("aws-gpu.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load("kuberay-rayjob.yaml")


# --- Ray cluster launcher config -----------------------------------------------------------------------------


def test_launcher_validates_against_rays_schema(launcher):
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(launcher, schema)
    misspelt = copy.deepcopy(launcher)
    misspelt["available_node_types"]["gpu.a10g"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(misspelt, schema)


def test_launcher_passes_ray_up_validation(launcher):
    """The checks `ray up` runs before it talks to AWS: provider defaults filled in, then validated."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_has_a_cpu_head_and_autoscaling_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0 and "GPU" not in head["resources"]
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU") == 1]
    assert gpu, "no worker node type offers {'GPU': 1}"
    for t in gpu:
        assert t["min_workers"] == 0 and 0 < t["max_workers"] <= launcher["max_workers"]
        assert re.fullmatch(r"(g5|g6|p4d|p5)\.\w+", t["node_config"]["InstanceType"])


def test_launcher_installs_pinned_torch_before_the_project_and_builds_the_encoder_once(launcher):
    setup = launcher["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "pip install torch==2.13.0" in c)
    project_at = next(i for i, c in enumerate(setup) if "pip install -e '.[encoder]'" in c)
    assert torch_at < project_at or (
        torch_at == project_at
        and setup[torch_at].index("torch==2.13.0") < setup[torch_at].index("pip install -e")
    )
    assert any("/mnt/shared" in c and "mount" in c for c in setup)
    assert any("HDF5_USE_FILE_LOCKING=FALSE" in c for c in setup)
    start = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("HDF5_USE_FILE_LOCKING=FALSE" in c for c in start if "ray start" in c)
    builds = [c for c in launcher["head_setup_commands"] if "xel-encoder build" in c]
    assert len(builds) == 1 and f"--out {SHARED_MODEL}" in builds[0]
    assert not any("xel-encoder" in c for c in launcher.get("worker_setup_commands", []))
    assert set(launcher["file_mounts"].values()) == {"."}
    assert {"models/", "h5/", ".git/"} <= set(launcher["rsync_exclude"])


# --- KubeRay RayJob -------------------------------------------------------------------------------------------


def _entrypoint_args(rayjob: dict) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def test_rayjob_uses_only_fields_of_the_kuberay_crd(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["submissionMode"] in SUBMISSION_MODES
    cluster = spec["rayClusterSpec"]
    assert RAY_CLUSTER_REQUIRED <= set(cluster) <= RAY_CLUSTER_SPEC, set(cluster) ^ RAY_CLUSTER_SPEC
    head = cluster["headGroupSpec"]
    assert HEAD_GROUP_REQUIRED <= set(head) <= HEAD_GROUP_SPEC, set(head) - HEAD_GROUP_SPEC
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert WORKER_GROUP_REQUIRED <= set(group) <= WORKER_GROUP_SPEC, set(group) ^ WORKER_GROUP_SPEC
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for params in [head.get("rayStartParams", {})] + [g.get("rayStartParams", {}) for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values must be strings"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0


def test_rayjob_gpu_workers_shared_volume_and_hdf5_locking_off(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    gpu_limits = [c["resources"]["limits"].get("nvidia.com/gpu") for g in cluster["workerGroupSpecs"]
                  for c in g["template"]["spec"]["containers"]]
    assert "1" in gpu_limits
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims
        for container in pod["containers"]:
            assert {"name": "HDF5_USE_FILE_LOCKING", "value": "FALSE"} in container["env"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/mnt/shared") in claims
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    assert runtime_env["env_vars"]["HDF5_USE_FILE_LOCKING"] == "FALSE"
    assert "torch==2.13.0" in runtime_env["pip"]["packages"]


def test_rayjob_entrypoint_is_the_readme_command_and_parses(rayjob, launcher):
    from xel.precompute.cli import main

    args = _entrypoint_args(rayjob)
    assert args[:2] == ["python", "precompute/run.py"]
    for flag in ("--data", "--model", "--out"):
        assert flag in args and args[args.index(flag) + 1].startswith("/mnt/shared/")
    assert args[args.index("--model") + 1] == SHARED_MODEL  # the model the launcher's head builds
    ctx = main.make_context("run.py", args[2:])  # every flag and value is one precompute/run.py accepts
    assert ctx.params["gpus_per_actor"] == 1 and ctx.params["actors"] <= max(
        g["maxReplicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    )


# --- submit_local.sh ----------------------------------------------------------------------------------------


def test_submit_local_is_strict_bash():
    script = (CLUSTER / "submit_local.sh").read_text(encoding="utf-8")
    assert "set -euo pipefail" in script
    subprocess.run(["bash", "-n", str(CLUSTER / "submit_local.sh")], check=True)


@pytest.mark.parametrize("given,expected", [(None, "0"), ("7", "7")])
def test_submit_local_starts_its_head_with_the_workers_at_xels_niceness(given, expected, tmp_path):
    """Ray's default worker niceness 15 starved the job's encoder actors whenever anything else ran; the private
    head runs them at 0, as xel's own local Ray does, unless ``RAY_worker_niceness`` is given. A stand-in ``ray``
    records what ``ray start`` was given and exits, so the script stops there."""
    fake_ray = tmp_path / "ray"
    seen = tmp_path / "seen"
    fake_ray.write_text(f'#!/bin/sh\necho "$1 ${{RAY_worker_niceness-unset}}" >> {seen}\nexit 3\n')
    fake_ray.chmod(0o755)
    env = {k: v for k, v in _submit_env().items() if k != "RAY_worker_niceness"}
    if given is not None:
        env["RAY_worker_niceness"] = given
    proc = subprocess.run(["bash", "cluster/submit_local.sh", "--data", str(tmp_path), "--model", str(tmp_path),
                           "--out", str(tmp_path / "h5")], cwd=REPO, env={**env, "RAY": str(fake_ray)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "ray head exited before its dashboard came up" in proc.stderr, proc.stderr
    assert seen.read_text().splitlines() == [f"start {expected}"]


def test_submit_local_gives_each_ray_component_its_own_port(tmp_path):
    """Each port was picked by its own call, and the OS may hand a just-closed port out again: once the GCS and
    the client server got the same one and Ray refused to start. A stand-in ``ray`` records its arguments."""
    fake_ray = tmp_path / "ray"
    seen = tmp_path / "seen"
    fake_ray.write_text(f'#!/bin/sh\necho "$@" >> {seen}\nexit 3\n')
    fake_ray.chmod(0o755)
    for _ in range(3):
        proc = subprocess.run(["bash", "cluster/submit_local.sh", "--data", str(tmp_path), "--model", str(tmp_path),
                               "--out", str(tmp_path / "h5")], cwd=REPO, env={**_submit_env(), "RAY": str(fake_ray)},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
    flags = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port"]
    for line in seen.read_text().splitlines():
        args = line.split()
        ports = [int(args[args.index(flag) + 1]) for flag in flags]
        assert len(set(ports)) == len(flags) and all(1024 < port < 65536 for port in ports), line


def _live_processes(session: int, text: str) -> list[str]:
    """Processes (zombies aside) in ``session`` or whose command line mentions ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        state, sid = fields[0], int(fields[3])
        if state != "Z" and (sid == session or text.encode() in cmdline):
            found.append(f"{proc.name} {state} sid {sid}: {cmdline[:120]!r}")
    return found


def _submit_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return env


def _assert_head_gone(log: str, out: Path) -> None:
    """The head the script started, every process of its session, and the job's driver are gone."""
    head = re.search(r"^xel: ray head pid (\d+) \(temp dir (\S+),", log, re.MULTILINE)
    assert head, log[-2000:]
    pid, temp_dir = int(head.group(1)), head.group(2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _live_processes(pid, str(out)) == []  # no raylet, GCS, dashboard, worker or driver is left
    assert not Path(temp_dir).exists()


@pytest.mark.ray
@pytest.mark.slow
def test_submit_local_runs_the_job_and_stops_its_own_head(tiny_data, tiny_model_dir, tmp_path):
    out = tmp_path / "h5"
    proc = subprocess.run(
        ["bash", "cluster/submit_local.sh", "--data", str(tiny_data), "--model", str(tiny_model_dir),
         "--out", str(out), "--dtype", "fp32"],
        cwd=REPO, env=_submit_env(), capture_output=True, text=True, timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    from xel.precompute.store import open_store

    store = open_store(out)
    assert {"ms", "es"} <= set(store.kinds)
    assert store.count("ms") == len(MENTIONS) and store.count("es") == len(KB) and store.count("text") == len(TEXT)
    ids, features, langs = store.load("ms")
    assert ids == [m["id"] for m in MENTIONS] and langs == [m["lang"] for m in MENTIONS]
    assert np.isfinite(features.astype(np.float32)).all()
    assert store.load("es")[0] == [e["id"] for e in KB]
    _assert_head_gone(log, out)


@pytest.mark.ray
@pytest.mark.slow
def test_submit_local_passes_on_the_drivers_exit_code_and_cleans_up(tmp_path):
    out = tmp_path / "h5"
    proc = subprocess.run(
        ["bash", "cluster/submit_local.sh", "--data", str(tmp_path / "missing"), "--model", str(tmp_path),
         "--out", str(out), "--no-such-flag"],
        cwd=REPO, env=_submit_env(), capture_output=True, text=True, timeout=85,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-4000:]  # click's usage error, from the driver, not ray job submit's 1
    assert "No such option" in log
    _assert_head_gone(log, out)


@pytest.mark.ray
@pytest.mark.slow
def test_submit_local_stops_the_job_and_its_head_when_terminated(tiny_data, tiny_model_dir, tmp_path):
    out = tmp_path / "h5"
    proc = subprocess.Popen(
        ["bash", "cluster/submit_local.sh", "--data", str(tiny_data), "--model", str(tiny_model_dir),
         "--out", str(out), "--dtype", "fp32"],
        cwd=REPO, env=_submit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Running entrypoint"):
                break
        time.sleep(1.0)
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines) + rest
    assert proc.returncode == 143, log[-4000:]
    assert "xel: stopping job" in log
    _assert_head_gone(log, out)


# --- docs/cluster.md's `ray job submit` line, verbatim --------------------------------------------------------

CLUSTER_DOC = REPO / "docs" / "cluster.md"


def _doc_block(start: str) -> list[str]:
    """The lines of docs/cluster.md's bash block whose first line starts with ``start``."""
    doc = CLUSTER_DOC.read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", doc, re.DOTALL):
        lines = block.strip().splitlines()
        if lines[0].startswith(start):
            return lines
    raise AssertionError(f"no bash block of {CLUSTER_DOC} starts with {start!r}")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all stay bound until every one is chosen (a closed port may be handed out again)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.ray
@pytest.mark.slow
def test_the_docs_ray_job_submit_line_runs_verbatim(tiny_model_dir, tmp_path):
    """Issue 15.2: docs/cluster.md's head and `ray job submit` lines, as written, against a head started as it says.

    The job runs from a copy of the repo's code with the tiny model at models/multilingual-e5-small and tiny data
    at data/sample; the head gets private ports and a temp dir (the documented defaults may be taken on a shared
    machine), so the submit line finds it through RAY_ADDRESS, as docs/cluster.md says."""
    import shutil
    import signal

    from tests.conftest import write_jsonl

    head_line, submit_line, stop_line = _doc_block("RAY_AUTH_MODE=disabled ray start --head")
    assert submit_line.startswith("ray job submit --working-dir . -- python precompute/run.py")
    assert stop_line == "ray stop"
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "precompute", repo / "precompute", ignore=shutil.ignore_patterns("__pycache__"))
    write_jsonl(repo / "data" / "sample" / "kb.jsonl", KB)
    write_jsonl(repo / "data" / "sample" / "mentions.jsonl", MENTIONS)
    write_jsonl(repo / "data" / "sample" / "text.jsonl", TEXT)
    (repo / "models").mkdir()
    (repo / "models" / "multilingual-e5-small").symlink_to(tiny_model_dir)
    (repo / ".gitignore").write_text("/models/\n/h5/\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a new shell: no RAY_AUTH_MODE
    env.update(HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    import tempfile

    temp_dir = Path(tempfile.mkdtemp(prefix="xel-ray.", dir="/tmp"))  # short: socket paths
    gcs, dashboard, agent, client = _free_ports(4)
    private = (f" --block --temp-dir {temp_dir} --port {gcs} --dashboard-port {dashboard}"
               f" --dashboard-agent-listen-port {agent} --ray-client-server-port {client}"
               " --num-cpus 2 --disable-usage-stats")
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(["bash", "-c", f"{head_line}{private}"], cwd=repo, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        for _ in range(120):
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                import urllib.request

                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        job = subprocess.run(["bash", "-c", submit_line], cwd=repo, env={**env, "RAY_ADDRESS": address},
                             capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert "succeeded" in job.stdout + job.stderr
        manifest = json.loads((repo / "h5" / "manifest.json").read_text())
        assert manifest["kinds"]["ms"]["rows"] == len(MENTIONS)
    finally:  # stop exactly this head: every process of the session it was started in
        for line in _live_processes(head.pid, "\0never\0"):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
