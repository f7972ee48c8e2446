"""The cluster definitions in clusters/, checked against the schemas of the tools that read them.

- `ray up` YAMLs: Ray's own ``ray/autoscaler/ray-schema.json`` of the installed Ray (jsonschema),
  then Ray's ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before it calls the
  cloud: defaults filled in, head type known, min_workers within max_workers).
- KubeRay YAMLs: the ``openAPIV3Schema`` of KubeRay v1.7.0's RayCluster and RayJob CRDs
  (tests/data/kuberay/SOURCE.md says where they come from), made strict the way ``kubectl``'s
  default field validation is (an unknown field is an error, not silently dropped).
- What the schemas cannot say: versions pinned to ours, token auth on every path, requests =
  limits, a GPU group, nothing bound to every interface, every key commented, scripts parse.
"""
import copy
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
DATA = REPO / "tests" / "data" / "kuberay"
RAY_VERSION = "2.60.0"                      # the Ray every cluster file pins
RAY_UP = ["ray_up_aws.yaml", "ray_up_gcp.yaml"]
KUBERAY = {"kuberay_raycluster.yaml": "raycluster", "kuberay_rayjob.yaml": "rayjob"}
TOKEN_PATH = "$HOME/.monet-tune/ray_auth_token"


def _project_version():
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def _load(name):
    return yaml.safe_load((CLUSTERS / name).read_text())


def _cluster_files():
    return sorted(p for p in CLUSTERS.iterdir() if p.is_file())


# ---------------------------------------------------------------------------------- ray up


def _ray_schema():
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_installed_ray_is_the_pinned_one():
    assert ray.__version__ == RAY_VERSION, "update the cluster files' pins with the environment"


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_matches_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(name)
    jsonschema.validate(config, _ray_schema())
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_schema_catches_a_typo():
    config = _load(RAY_UP[0])
    config["available_node_types"]["ray.worker.gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_cluster_shape_and_pins(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}                      # CPU head, no trials
    workers = [t for k, t in types.items() if k != config["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    node = gpu["node_config"]
    assert (node.get("InstanceType", "").startswith(("g", "p"))       # AWS GPU families
            or node.get("guestAccelerators"))                         # GCP accelerators
    # Ray pinned: the images' tag and the install command
    docker = config["docker"]
    for image in (docker["head_image"], docker["worker_image"]):
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-"), image
    setup = " ".join(config["setup_commands"])
    assert f'"ray[default,tune]=={RAY_VERSION}"' in setup
    assert f"ray.__version__ == '{RAY_VERSION}'" in setup
    # the project: synced by file_mounts from the repository root, installed from that copy
    assert config["file_mounts"]["~/monet-tune"] == "."
    assert "-e ~/monet-tune" in setup
    for cmd in (config["initialization_commands"] + config["setup_commands"]
                + config["head_setup_commands"] + config["worker_setup_commands"]):
        assert "|| true" not in cmd and "|| :" not in cmd, cmd


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_token_on_every_node(name):
    config = _load(name)
    # the token file reaches every node through file_mounts ...
    remote = TOKEN_PATH.replace("$HOME", "~")
    assert config["file_mounts"][remote].startswith("~/.config/monet-tune/")
    # ... and every `ray start` (head and workers) runs with token auth and that file
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={TOKEN_PATH}" in cmd, cmd
        assert "dashboard-host" not in cmd                     # dashboard stays on loopback
    # and so does every shell on the nodes (`ray exec`, the driver)
    assert any(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={TOKEN_PATH}" in c
               for c in config["setup_commands"])


# ---------------------------------------------------------------------------------- KubeRay


def _strict(schema):
    """The CRD schema with unknown fields forbidden (kubectl's default strict field validation).

    Structural CRD schemas leave additionalProperties unset, and the API server prunes or
    rejects unknown fields; without this, a misspelt key would pass jsonschema silently.
    """
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(kind):
    with gzip.open(DATA / f"{kind}_v1.schema.json.gz", "rt") as f:
        return _strict(json.load(f))


def _validate_crd(doc, kind):
    jsonschema.Draft7Validator(_crd_schema(kind)).validate(doc)


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_matches_crd_schema(name):
    docs = list(yaml.safe_load_all((CLUSTERS / name).read_text()))
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == {"raycluster": "RayCluster", "rayjob": "RayJob"}[KUBERAY[name]]
    _validate_crd(doc, KUBERAY[name])


def test_crd_schema_catches_a_typo_and_a_wrong_type():
    doc = _load("kuberay_raycluster.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 0
    with pytest.raises(jsonschema.ValidationError):
        _validate_crd(typo, "raycluster")
    typo = copy.deepcopy(doc)
    typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(jsonschema.ValidationError):
        _validate_crd(typo, "raycluster")
    wrong = copy.deepcopy(doc)
    wrong["spec"]["authOptions"]["mode"] = "on"
    with pytest.raises(jsonschema.ValidationError):
        _validate_crd(wrong, "raycluster")


def _cluster_spec(name):
    doc = _load(name)
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _containers(name):
    doc = _load(name)
    spec = _cluster_spec(name)
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        pods.append(doc["spec"]["submitterPodTemplate"])
    return [c for p in pods for c in p["spec"]["containers"]]


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_image_token_resources_gpu(name):
    spec = _cluster_spec(name)
    assert spec["rayVersion"] == RAY_VERSION
    # token auth through our Secret (KubeRay puts RAY_AUTH_MODE and RAY_AUTH_TOKEN in each pod)
    assert spec["authOptions"] == {"mode": "token", "secretName": "monet-tune-ray-token"}
    # every pod runs the image built from clusters/Dockerfile, tagged with the project version
    image = f"REGISTRY/monet-tune:{_project_version()}"
    containers = _containers(name)
    assert {c["image"] for c in containers} == {image}
    # requests = limits everywhere (the autoscaler sidecar too)
    resources = [c["resources"] for c in containers]
    if spec.get("enableInTreeAutoscaling"):
        resources.append(spec["autoscalerOptions"]["resources"])
    for r in resources:
        assert r["requests"] == r["limits"], r
    # a CPU head without trials, and an autoscaled GPU group starting at zero
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1
    assert spec["enableInTreeAutoscaling"] is True


def test_rayjob_runs_the_search_and_cleans_up():
    spec = _load("kuberay_rayjob.yaml")["spec"]
    assert spec["entrypoint"].startswith("python /home/ray/monet-tune/search/tune_monet.py ")
    assert "--storage-path s3://" in spec["entrypoint"] or "--storage-path gs://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    # the submitter is KubeRay's container name, so KubeRay fills in `ray job submit`
    (sub,) = spec["submitterPodTemplate"]["spec"]["containers"]
    assert sub["name"] == "ray-job-submitter" and "command" not in sub


def test_dockerfile_pins_ray_and_installs_the_project():
    text = (CLUSTERS / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(RAY_VERSION)}-py3\d+-gpu$",
                     text, re.M)
    assert "FROM ${RAY_IMAGE}" in text
    assert f'"ray[default,tune]=={RAY_VERSION}"' in text and " -e ." in text
    assert f"ray.__version__ == '{RAY_VERSION}'" in text
    assert "WORKDIR /home/ray/monet-tune" in text              # the RayJob entrypoint's path
    ignore = (CLUSTERS / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*"):][:1] == ["*"] and "!monet/" in ignore and "!search/" in ignore


# ---------------------------------------------------------------------------------- every file


def test_no_file_binds_every_interface():
    for path in _cluster_files():
        assert "0.0.0.0" not in path.read_text(), path.name


def test_cluster_files_are_the_documented_ones():
    names = {p.name for p in _cluster_files()}
    assert names == {"README.md", "Dockerfile", "Dockerfile.dockerignore", "slurm_ray.sh",
                     "slurm_tune.sh", "slurm_retrain.sh", *RAY_UP, *KUBERAY}
    readme = (CLUSTERS / "README.md").read_text()
    for name in names - {"README.md", "Dockerfile.dockerignore"}:
        assert f"clusters/{name}" in readme, name


def test_shell_scripts_and_readme_snippets_parse():
    scripts = [p for p in _cluster_files() if p.suffix == ".sh"]
    assert len(scripts) == 3
    for path in scripts:
        res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{path.name}: {res.stderr}"
    blocks = re.findall(r"```bash\n(.*?)```", (CLUSTERS / "README.md").read_text(), re.S)
    assert len(blocks) >= 4
    for block in blocks:
        res = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert res.returncode == 0, f"{block}\n{res.stderr}"


def test_sbatch_options_are_commented():
    for name in ["slurm_tune.sh", "slurm_retrain.sh"]:
        lines = (CLUSTERS / name).read_text().splitlines()
        sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
        assert sbatch, name
        for i in sbatch:
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 4, lines[i]


KEY = re.compile(r"^(\s*)(- )?([A-Za-z_\"~.][\w\"~./-]*):(\s|$)")


def _uncommented_keys(text):
    """Keys (one per line) with no comment line right above them.

    A key that continues a list item (``- name: x`` then ``image: y``) shares the item's comment.
    Lines inside block scalars (``>-``) are not keys.
    """
    lines = text.splitlines()
    missing, block_indent = [], None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not line.strip() or indent > block_indent:
                continue
            block_indent = None
        m = KEY.match(line)
        if not m:
            continue
        if line.rstrip().endswith((">-", "|", ">")):
            block_indent = indent
        col = len(m.group(1)) + (2 if m.group(2) else 0)
        prev = next(j for j in range(i - 1, -1, -1) if lines[j].strip()) if i else None
        if prev is not None and lines[prev].lstrip().startswith("#"):
            continue
        if not m.group(2):                     # a continuation of a list item started above?
            item = None
            for j in range(i - 1, -1, -1):
                s = lines[j]
                if not s.strip() or s.lstrip().startswith("#"):
                    continue
                ind = len(s) - len(s.lstrip())
                if ind == col - 2 and s.lstrip().startswith("- "):
                    item = j
                    break
                if ind < col:
                    break
            if item is not None:
                continue
        missing.append(f"{i + 1}: {line.strip()}")
    return missing


@pytest.mark.parametrize("name", RAY_UP + sorted(KUBERAY))
def test_every_key_is_commented(name):
    assert _uncommented_keys((CLUSTERS / name).read_text()) == []


def test_key_comment_check_has_teeth():
    assert _uncommented_keys("# a\na: 1\nb: 2\n") == ["3: b: 2"]
    assert _uncommented_keys("# l\nl:\n  # item\n  - x: 1\n    y: 2\n") == []


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_commands_parse(name):
    """Every command `ray up` runs (folded YAML lines joined) is valid bash."""
    config = _load(name)
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in config[key]]
    commands += [c for t in config["available_node_types"].values()
                 for c in t.get("initialization_commands", [])]
    assert len(commands) >= 8
    for cmd in commands:
        assert "\n" not in cmd.strip(), cmd
        res = subprocess.run(["bash", "-n"], input=cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}\n{res.stderr}"


def test_rayjob_entrypoint_parses():
    entrypoint = _load("kuberay_rayjob.yaml")["spec"]["entrypoint"]
    res = subprocess.run(["bash", "-n"], input=entrypoint, capture_output=True, text=True)
    assert res.returncode == 0 and "\n" not in entrypoint.strip(), res.stderr


def _tune_commands_in_readme():
    """The tune_monet.py argument lists in clusters/README.md's bash blocks (lines joined)."""
    text = (CLUSTERS / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            m = re.search(r"(?:search/tune_monet\.py|clusters/slurm_tune\.sh)\s+(.*?)\"?$", line)
            if m:
                out.append(m.group(1).split())
    return out


def test_documented_search_flags_exist():
    """Flags in the RayJob entrypoint and the README are flags tune_monet.py accepts."""
    sys.path.insert(0, str(REPO))
    from search.tune_monet import build_parser

    entrypoint = _load("kuberay_rayjob.yaml")["spec"]["entrypoint"].split()
    lists = [entrypoint[2:]] + _tune_commands_in_readme()
    assert len(lists) >= 5
    parser = build_parser()
    for args in lists:
        parser.parse_args(args)          # exits (SystemExit) on an unknown flag


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_bashrc_commands_set_the_token_once(name, tmp_path):
    """The setup commands that write ~/.bashrc, run twice (a second `ray up`): one export line."""
    commands = [c for c in _load(name)["setup_commands"] if "bashrc" in c]
    assert len(commands) == 2
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        for cmd in commands:
            subprocess.run(["bash", "-c", cmd], env=env, check=True)
    lines = (tmp_path / ".bashrc").read_text().splitlines()
    assert lines == [f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={TOKEN_PATH}"]
    out = subprocess.run(["bash", "-c", ". ~/.bashrc; echo $RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["token", f"{tmp_path}/.monet-tune/ray_auth_token"]
