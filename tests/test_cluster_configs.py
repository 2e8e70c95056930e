"""The cluster set-up in cluster/, checked offline (no cloud credentials, no network, no Kubernetes):

- the launcher configs pass Ray's own validation (the defaults merge and JSON schema `ray up` applies before it
  contacts the cloud), install PyTorch with CUDA and evopop, and scale GPU workers from zero;
- the RayJob has what KubeRay needs: a head group, a GPU worker group, an entrypoint that runs evopop, credentials
  from a Secret;
- every evopop command the cluster files and cluster/README.md show loads with evopop's config validation, and the
  sizes of the README's scaling table fit the node types they name, so the docs cannot rot.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import shlex
from pathlib import Path

import pytest
import yaml

from evopop.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
RAYJOB = CLUSTER / "rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
IMAGE_ROOT = "/home/ray/evopop"  # where cluster/Dockerfile puts the checkout
NODE_ROOT = "~/evopop"  # where the launcher configs' file_mounts put it


def _load(path: Path):
    return yaml.safe_load(path.read_text())


LAUNCHER_CONFIGS = sorted(p.name for p in CLUSTER.glob("*.yaml") if "provider" in (_load(p) or {}))


def _prepared(name: str) -> dict:
    """The config as `ray up` sees it before it talks to the cloud: merged with the provider's defaults."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(_load(CLUSTER / name)))


def _workers(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


# -- commands shown in the cluster files --------------------------------------------------------------------------
# `evopop run CONFIG key=value ...`, in a shell block, a table cell (`...`) or a YAML value
EVOPOP_RUN = re.compile(r"evopop run (?P<config>[^\s`]+\.ya?ml)(?P<overrides>(?:[ \t]+[A-Za-z_][\w.]*=[^\s`|]+)*)")


def _repo_config(path: str) -> Path:
    """A config path as a command names it (relative, or inside the image / on a node) -> the repository's file."""
    return ROOT / path[path.index("configs/") :]


def _commands(text: str) -> list[tuple[str, list[str]]]:
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    return [(m["config"], shlex.split(m["overrides"])) for m in EVOPOP_RUN.finditer(text)]


def _cluster_texts() -> dict[str, str]:
    files = [*CLUSTER.glob("*.yaml"), README, DOCKERFILE]
    return {p.name: p.read_text() for p in files}


def test_the_cluster_files_exist_and_the_sketch_is_gone():
    assert {"aws-gpu.yaml", "gcp-gpu.yaml"} <= set(LAUNCHER_CONFIGS)
    assert RAYJOB.is_file() and DOCKERFILE.is_file() and (CLUSTER / "runtime_env.yaml").is_file()
    texts = {**_cluster_texts(), "README.md (top)": (ROOT / "README.md").read_text()}
    assert not [name for name, text in texts.items() if "gpu-cluster.yaml" in text]
    for name, text in texts.items():  # every cluster file a text names is there
        for mentioned in re.findall(r"cluster/([\w.-]+\.(?:ya?ml|py|md))", text):
            assert (CLUSTER / mentioned).is_file(), f"{name} names cluster/{mentioned}, which does not exist"
    table = re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)? \|", README.read_text(), re.M)
    assert table and all((CLUSTER / n).is_file() for row in table for n in row if n), table


def test_every_config_the_cluster_files_name_exists_and_loads():
    named = {m for text in _cluster_texts().values() for m in re.findall(r"\S*configs/[\w.-]+\.ya?ml", text)}
    assert named
    for path in named:
        load_config(_repo_config(path))


def test_every_evopop_command_in_the_cluster_files_loads():
    commands = [(name, *c) for name, text in _cluster_texts().items() for c in _commands(text)]
    assert len(commands) >= 6, commands  # README (submit, table, ...) and the RayJob's entrypoint
    for name, config, overrides in commands:
        try:
            load_config(_repo_config(config), overrides)
        except Exception as exc:
            raise AssertionError(f"{name}: evopop run {config} {' '.join(overrides)}\n{exc}") from None


# -- the cluster launcher -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validation(name):
    from ray.autoscaler._private.util import validate_config

    validate_config(_prepared(name))


def test_rays_validation_is_not_vacuous():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = _prepared("aws-gpu.yaml")
    worker = next(iter(_workers(config).values()))
    worker["min_worker"] = 0  # a typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)
    config = _prepared("aws-gpu.yaml")
    next(iter(_workers(config).values()))["resources"]["GPU"] = 0.5  # Ray wants whole numbers here
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_nodes_install_torch_with_cuda_then_evopop(name):
    config = _prepared(name)
    (remote,) = [r for r in config["file_mounts"] if r.rstrip("/") == NODE_ROOT]
    checkout = (ROOT / config["file_mounts"][remote]).resolve()  # `ray up` runs from the repository root
    assert checkout == ROOT and 'name = "evopop"' in (checkout / "pyproject.toml").read_text()
    assert "**/.git" in config["rsync_exclude"]
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both, as ray up does
        commands = config[key]
        torch = [i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch\b.*--index-url \S+/cu\d+", c)]
        evopop = [
            i for i, c in enumerate(commands) if re.search(rf"pip install (-e )?{re.escape(NODE_ROOT)}/?(\s|$)", c)
        ]
        assert torch and evopop, f"{name} {key}: {commands}"
        assert torch[0] < evopop[0], "torch from the CUDA index first, or evopop's install brings another torch"
        for script in re.findall(rf"{re.escape(NODE_ROOT)}/(cluster/\S+\.py)", " ".join(commands)):
            assert (ROOT / script).is_file(), script
        assert any("vgg16" in c and "IMAGENET1K_V1" in c for c in commands), "the ImageNet trunk is not cached"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_scales_gpu_workers_from_zero(name):
    config = _prepared(name)
    workers = _workers(config)
    assert workers
    for node_type, spec in workers.items():
        assert spec["min_workers"] == 0, node_type
        assert 1 <= spec["max_workers"] <= config["max_workers"], node_type
        assert spec["resources"].get("GPU", 0) >= 1, f"{node_type}: GPU workers declare their GPUs"
    head = config["available_node_types"][config["head_node_type"]]
    # evopop refuses trainers the cluster cannot place when the run starts: with workers at zero, the head's GPU
    # is what lets a GPU run start (and the README's one-GPU-node size is the head alone).
    assert head["resources"].get("GPU", 0) >= 1


def test_gcp_node_configs_are_what_the_compute_api_takes():
    config = _prepared("gcp-gpu.yaml")
    assert config["provider"]["project_id"]
    for node_type, spec in config["available_node_types"].items():
        node = spec["node_config"]
        scheduling = node.get("scheduling", {})
        assert isinstance(scheduling, dict), f"{node_type}: scheduling is a mapping (Ray issue 46248)"
        if node.get("guestAccelerators"):
            assert scheduling.get("onHostMaintenance") == "TERMINATE", node_type


def test_aws_workers_get_an_instance_profile():
    for node_type, spec in _workers(_prepared("aws-gpu.yaml")).items():
        assert "ray-autoscaler-v1" in spec["node_config"]["IamInstanceProfile"]["Arn"], node_type


def test_one_ray_version_everywhere():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    versions = {name: _load(CLUSTER / name)["docker"]["image"] for name in LAUNCHER_CONFIGS}
    (dockerfile_image,) = re.findall(r"^ARG RAY_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M)
    versions["Dockerfile"] = dockerfile_image
    versions = {k: re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-(?:gpu|cu\d+)", v) for k, v in versions.items()}
    assert all(versions.values()), "pin rayproject/ray:<version>-py3xx-gpu (a GPU image at a fixed Ray version)"
    versions = {k: m[1] for k, m in versions.items()}
    versions["rayjob.yaml"] = _load(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"]
    versions |= {f"README.md {i}": v for i, v in enumerate(re.findall(r"ray\[default\]==([\d.]+)", README.read_text()))}
    assert len(set(versions.values())) == 1, versions
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [Requirement(d) for d in dependencies if Requirement(d).name == "ray"]
    assert ray.specifier.contains(versions["rayjob.yaml"]), "the image's Ray must satisfy evopop's pin"


# -- KubeRay ------------------------------------------------------------------------------------------------------
# Fields of the KubeRay v1 API (ray-operator/apis/ray/v1), so that a misspelt key fails here, not in the cluster.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
}  # fmt: skip
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend",
}  # fmt: skip


def _rayjob() -> dict:
    return _load(RAYJOB)


def _containers(pod_template: dict, init: bool = True) -> list[dict]:
    spec = pod_template["spec"]
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def _quantity(value) -> float:
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_rayjob_is_a_kuberay_v1_rayjob():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, set(head) - HEAD_GROUP
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in [head, *groups]:
        params = group["rayStartParams"]  # required by the CRD; KubeRay passes them to `ray start` as strings
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), params
        assert _containers(group["template"], init=False)[0]["image"]


def test_rayjob_entrypoint_runs_evopop_from_the_image():
    entrypoint = _rayjob()["spec"]["entrypoint"]
    assert re.match(r"python -m evopop run \S+\.yaml( |$)", entrypoint), entrypoint
    ((config, overrides),) = _commands(entrypoint)
    assert config.startswith(f"{IMAGE_ROOT}/configs/") and _repo_config(config).is_file()
    assert any(o.startswith("storage.path=s3://") for o in overrides), "runs must outlive the cluster"
    assert re.search(rf"^COPY .* \. {re.escape(IMAGE_ROOT)}$", DOCKERFILE.read_text(), re.M)
    assert re.search(rf"pip install .*-e {re.escape(IMAGE_ROOT)}", DOCKERFILE.read_text())
    assert re.search(r"pip install .*\btorch\b.*--index-url", DOCKERFILE.read_text())


def test_rayjob_worker_group_has_gpus_and_scales_from_zero():
    for group in _rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["groupName"]
        assert group["minReplicas"] == 0 and group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        resources = _containers(group["template"], init=False)[0]["resources"]
        limits, requests = resources["limits"], resources.get("requests", {})
        assert int(limits["nvidia.com/gpu"]) >= 1
        gpus = limits["nvidia.com/gpu"]
        assert requests.get("nvidia.com/gpu", gpus) == gpus, "Kubernetes requires GPU requests to equal limits"
        tolerated = {t["key"] for t in group["template"]["spec"].get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated


def test_rayjob_containers_take_aws_credentials_from_a_secret():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    containers = [c for t in templates for c in _containers(t)]
    for container in containers:
        env = container.get("env", [])
        from_secret = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
        whole_secret = any("secretRef" in e for e in container.get("envFrom", []))
        assert whole_secret or {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= from_secret, container["name"]
        assert not [e["name"] for e in env if e["name"].startswith("AWS_") and "value" in e], "keys in plain text"
        for script in re.findall(rf"{re.escape(IMAGE_ROOT)}/(cluster/\S+\.py)", " ".join(container.get("command", []))):
            assert (ROOT / script).is_file(), script
    assert len({c["image"] for c in containers}) == 1, "one image (cluster/Dockerfile's) for every container"


def test_readme_resume_recipe_rewrites_the_rayjob():
    (recipe,) = re.findall(r"sed (-e .*?) *\n? *cluster/rayjob\.yaml \| kubectl apply", README.read_text(), re.S)
    text = RAYJOB.read_text()
    for expression in re.findall(r"-e '(s\|.*?)'", recipe):
        _, pattern, replacement, _ = expression.split("|")
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, expression
    job = yaml.safe_load(text)
    assert job["metadata"]["name"] != _rayjob()["metadata"]["name"]
    assert job["spec"]["entrypoint"].startswith("python -m evopop resume s3://")


# -- scaling by config (cluster/README.md) ------------------------------------------------------------------------
SCALING_KEYS = re.compile(r"resources\.\w+|evolution\.(offspring|generations)|storage\.path")


def _scaling_table() -> dict[str, tuple[str, list[str]]]:
    section = README.read_text().split("## Scaling by config", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        commands = _commands(line)
        if line.startswith("|") and commands:
            ((config, overrides),) = commands
            rows[cells[0]] = (config, overrides)
    return rows


def _resources(row: tuple[str, list[str]]):
    config, overrides = row
    return load_config(ROOT / config, overrides).resources


def _per_node(capacity: dict, cpus: float, gpus: float) -> int:
    """Trainers of (cpus, gpus) one node of ``capacity`` holds."""
    fits = [math.floor(capacity.get("CPU", 0) / cpus + 1e-9)]
    if gpus:
        fits.append(math.floor(capacity.get("GPU", 0) / gpus + 1e-9))
    return min(fits)


def _launcher_capacity(name: str, cpus: float, gpus: float) -> tuple[int, int]:
    """(trainers on the head alone, trainers on the whole cluster at its largest)."""
    config = _prepared(name)
    head = _per_node(config["available_node_types"][config["head_node_type"]]["resources"], cpus, gpus)
    workers = sum(_per_node(t["resources"], cpus, gpus) * t["max_workers"] for t in _workers(config).values())
    return head, head + workers


def _rayjob_capacity(cpus: float, gpus: float, replicas: str = "maxReplicas") -> int:
    total = 0
    for group in _rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = _containers(group["template"], init=False)[0]["resources"]["limits"]
        capacity = {"CPU": _quantity(limits["cpu"]), "GPU": _quantity(limits.get("nvidia.com/gpu", 0))}
        total += _per_node(capacity, cpus, gpus) * group.get(replicas, 0)
    return total


def test_scaling_table_differs_only_in_resources_and_population():
    rows = _scaling_table()
    assert set(rows) == {"laptop", "one GPU node", "multi-node"}, rows
    assert {config for config, _ in rows.values()} == {"configs/msra_b_vgg16.yaml"}
    for size, (config, overrides) in rows.items():
        keys = [o.split("=", 1)[0] for o in overrides]
        assert all(SCALING_KEYS.fullmatch(k) for k in keys), (size, keys)
        load_config(ROOT / config, overrides)
    assert _resources(rows["laptop"]).gpus_per_trainer == 0


def test_scaling_table_sizes_fit_the_cluster_configs():
    rows = _scaling_table()
    one = _resources(rows["one GPU node"])
    multi = _resources(rows["multi-node"])
    assert one.gpus_per_trainer > 0 and multi.gpus_per_trainer > 0
    for name in LAUNCHER_CONFIGS:
        head, _ = _launcher_capacity(name, one.cpus_per_trainer, one.gpus_per_trainer)
        assert one.trainers <= head, f"{name}: the one-GPU-node size must fit on the head alone"
        _, whole = _launcher_capacity(name, multi.cpus_per_trainer, multi.gpus_per_trainer)
        assert multi.trainers <= whole, f"{name}: {multi.trainers} trainers, room for {whole}"
    assert multi.trainers <= _rayjob_capacity(multi.cpus_per_trainer, multi.gpus_per_trainer)


def test_rayjob_as_written_starts_with_room_for_its_trainers():
    ((config, overrides),) = _commands(_rayjob()["spec"]["entrypoint"])
    resources = load_config(_repo_config(config), overrides).resources
    per_trainer = resources.cpus_per_trainer, resources.gpus_per_trainer
    # the job is submitted once the initial workers are ready: at least one trainer must fit on them
    assert _rayjob_capacity(*per_trainer, replicas="replicas") >= 1
    assert _rayjob_capacity(*per_trainer) >= resources.trainers


# -- cluster/fetch_data.py ----------------------------------------------------------------------------------------
def _fetch_data():
    spec = importlib.util.spec_from_file_location("fetch_data", CLUSTER / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_data_copies_each_data_set_once(tmp_path):
    fetch_data = _fetch_data()
    (tmp_path / "bucket" / "MSRA-B" / "image").mkdir(parents=True)
    (tmp_path / "bucket" / "MSRA-B" / "image" / "1.jpg").write_bytes(b"jpg")
    (tmp_path / "bucket" / "MSRA-B" / "test_cvpr2013.txt").write_text("1\n")
    (tmp_path / "bucket" / "HKU-IS" / "gt").mkdir(parents=True)
    (tmp_path / "bucket" / "HKU-IS" / "gt" / "2.png").write_bytes(b"png")
    source, dest = str(tmp_path / "bucket"), str(tmp_path / "data")
    assert fetch_data.main([source, dest, "MSRA-B", "HKU-IS"]) == 0
    assert (tmp_path / "data" / "MSRA-B" / "image" / "1.jpg").read_bytes() == b"jpg"
    assert (tmp_path / "data" / "HKU-IS" / "gt" / "2.png").read_bytes() == b"png"
    assert fetch_data.fetch(source, dest, ["MSRA-B", "HKU-IS"]) == []  # already there: nothing copied
    with pytest.raises(SystemExit, match="not a folder"):
        fetch_data.fetch(source, dest, ["DUTS"])


def test_fetch_data_keeps_the_uri_options_at_the_end():
    child = _fetch_data().child
    assert child("s3://b/datasets", "MSRA-B") == "s3://b/datasets/MSRA-B"
    assert child("s3://b/datasets/?endpoint_override=h:9000&scheme=http", "MSRA-B") == (
        "s3://b/datasets/MSRA-B?endpoint_override=h:9000&scheme=http"
    )
    assert child("gs://b/datasets", "HKU-IS") == "gs://b/datasets/HKU-IS"
