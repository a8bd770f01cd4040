"""The Helm chart (helm/ponder) and the plain manifests (infra/k8s), checked without a Kubernetes cluster.

- values.schema.json, directly with jsonschema (clear messages) and through Helm's own lint (helm-sdkpy: Helm's Go
  library; its lint reports severities, not messages).
- Rendering with Helm's real template engine: helm-sdkpy has no `template` action and no dry-run, so `Install` runs
  against a stand-in API server in this process that answers discovery, accepts every object and stores nothing; the
  release it returns holds the rendered manifest.
- The rendered RayJob/RayCluster and infra/k8s/*.yaml against KubeRay's v1 CRD schemas (tests/data/kuberay), made
  strict: an unknown field is an error, as with `kubectl apply --validate=strict`.
- The Ponder config the chart ships, with the overrides from the rendered entrypoint, through our own loader.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import json
import shlex
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import helm_sdkpy
import jsonschema
import pytest
import yaml

from ponder.platform.config import load_config
from ponder.rewards.critic import with_defaults
from ponder.transport import choose, preselect

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ponder"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
CRDS = REPO / "tests" / "data" / "kuberay"
ERROR = 3  # Helm's lint severities: 1 info, 2 warning, 3 error
NAMESPACE = "default"

# Values that must be refused, each for its own reason.
BAD_VALUES = {
    "typo in a key": {"rollout": {"gpu": 2}},
    "wrong type": {"learner": {"replicas": "two"}},
    "negative GPU count": {"rollout": {"gpus": -1}},
    "missing checkpoint dir": {"checkpoint": {"dir": None}},
    "checkpoint dir not on S3": {"checkpoint": {"dir": "/tmp/ckpt"}},
    "unknown mode": {"mode": "batch"},
    "GPU limit set by hand": {"learner": {"resources": {"limits": {"nvidia.com/gpu": 4}}}},
    "rayStartParams value not a string": {"head": {"rayStartParams": {"num-gpus": 0}}},
    "unsafe extra argument": {"job": {"extraArgs": ["trainer.steps=1; rm -rf /"]}},
    "no tracking server": {"mlflow": {"enabled": False}, "tracking": {"uri": ""}},
    "checkpoints turned off": {"config": {"checkpoint": {"every": 0}}},
    "checkpoints without the Hugging Face export": {"config": {"checkpoint": {"export_hf": False}}},
    "extra argument overrides a key the chart sets": {"job": {"extraArgs": ["checkpoint.every=0"]}},
    "extra argument unpins a pool": {"job": {"extraArgs": ["reward.resources.ponder_reward=0"]}},
    "custom resource set by hand": {"reward": {"rayStartParams": {"resources": "'{\"ponder_reward\":9}'"}}},
    "critic group without Ray CPUs": {"critic": {"replicas": 1, "cpus": 0}},
    "shared memory in a unit the chart does not size from": {"rollout": {"shmSize": "8G"}},
    "a Ray port set by hand (the NetworkPolicy names the chart's)": {"reward": {"rayStartParams": {
        "object-manager-port": "9000"}}},
    "DNS pods in no namespace": {"reward": {"networkPolicy": {"dns": {"namespace": ""}}}},
    # the Ponder config itself, by Ponder's schema (generated into values.schema.json)
    "typo in a Ponder config key": {"config": {"rollout": {"samples_per_promt": 4}}},
    "unknown Ponder config section": {"config": {"rollouts": {"samples_per_prompt": 4}}},
    "Ponder config value of the wrong type": {"config": {"trainer": {"steps": "many"}}},
    "Ponder config value out of range": {"config": {"rollout": {"top_p": 1.5}}},
    "Ponder config choice that does not exist": {"config": {"pipeline": {"mode": "overlapped"}}},
    "typo inside a reward function": {"config": {"reward": {"functions": [{"name": "math", "wieght": 1}]}}},
}
POOLS = ("rollout", "learner", "reward")
# Two critics on one GPU critic pod: a reward model on the GPU, a judge on CPU (each is one actor).
CRITICS = {"critic": {"replicas": 1, "gpus": 1, "cpus": 2},
           "config": {"reward": {"functions": [
               {"name": "math", "weight": 1.0},
               {"name": "reward_model", "weight": 0.5, "options": {"path": "/models/rm", "num_gpus": 1}},
               {"name": "judge", "weight": 0.5, "options": {"path": "/models/judge", "num_cpus": 1}}]}}}


# -- values ------------------------------------------------------------------------------------------------------------
def coalesce(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over the chart's values: maps merge, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def defaults() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def example(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


# -- Helm: lint and render ---------------------------------------------------------------------------------------------
def lint(tmp_path: Path, override: dict | None = None) -> list[tuple[int, str]]:
    """(severity, path) of every lint message. Lint takes no values argument: lint a copy whose values.yaml is the
    merge a `-f` file would give."""
    chart = tmp_path / "ponder"
    shutil.copytree(CHART, chart)
    (chart / "values.yaml").write_text(yaml.safe_dump(coalesce(defaults(), override or {}), sort_keys=False))
    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    return [(m["Severity"], m["Path"]) for m in result["Messages"]]


def lint_errors(tmp_path: Path, override: dict | None = None) -> list[str]:
    return [path for severity, path in lint(tmp_path, override) if severity >= ERROR]


class _StandInApiServer(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for `helm install` to run to the end: discovery for the kinds the chart
    renders, an empty release history, and every create/update accepted as sent. Nothing is stored or validated."""

    GROUPS = {"v1": [("configmaps", "ConfigMap"), ("secrets", "Secret"), ("services", "Service")],
              "apps/v1": [("deployments", "Deployment")],
              "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
              "ray.io/v1": [("rayjobs", "RayJob"), ("rayclusters", "RayCluster")]}

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _resources(self, group_version: str) -> dict:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": [{"name": name, "singularName": "", "namespaced": True, "kind": kind,
                               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                              for name, kind in self.GROUPS[group_version]]}

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        groups = [gv for gv in self.GROUPS if gv != "v1"]
        if path == "/version":
            return self._reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        if path == "/api":
            return self._reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return self._reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in groups]})
        if path == "/api/v1" or path.removeprefix("/apis/") in groups:
            return self._reply(200, self._resources(path.removeprefix("/api/").removeprefix("/apis/")))
        if self.command == "GET" and path.endswith("/secrets"):  # the release history: none
            return self._reply(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []})
        if "protobuf" in (self.headers.get("Content-Type") or ""):  # Helm's release record; its content is not needed
            meta = {"name": path.rsplit("/", 1)[-1], "namespace": NAMESPACE, "resourceVersion": "1"}
            return self._reply(201 if self.command == "POST" else 200, {"kind": "Secret", "apiVersion": "v1",
                                                                       "metadata": meta})
        if self.command in ("POST", "PUT"):
            obj = json.loads(body)
            obj.setdefault("metadata", {})["resourceVersion"] = "1"
            return self._reply(201 if self.command == "POST" else 200, obj)
        self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                          "code": 404})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture(scope="module")
def helm_config():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "unused"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "u"}}]})
    yield helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=kubeconfig)
    server.shutdown()


def render(helm_config, values: dict | None = None) -> tuple[list[dict], str]:
    """The chart's objects as `helm install ponder helm/ponder -f <values>` would send them, and its NOTES."""
    release = asyncio.run(helm_sdkpy.Install(helm_config).run("ponder", str(CHART), values=values, wait=False,
                                                              timeout=30))
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc], release["info"].get("notes", "")


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# -- KubeRay CRD schemas -----------------------------------------------------------------------------------------------
def strict(schema):
    """The CRD schema with unknown fields refused: Kubernetes prunes them silently, which would hide a typo."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict:
    def load(name):
        return jsonschema.Draft7Validator(strict(json.loads(gzip.decompress((CRDS / name).read_bytes()))))
    return {"RayJob": load("rayjob.v1.openapi.json.gz"), "RayCluster": load("raycluster.v1.openapi.json.gz")}


def crd_errors(validators: dict, obj: dict) -> list[str]:
    assert obj["apiVersion"] == "ray.io/v1"
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[obj["kind"]].iter_errors(obj)]


# -- the tests: values ---------------------------------------------------------------------------------------------
def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"values-cpu-test.yaml", "values-8gpu.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_values_match_the_schema(path):
    jsonschema.Draft7Validator.check_schema(values_schema())
    errors = [e.message for e in jsonschema.Draft7Validator(values_schema()).iter_errors(
        coalesce(defaults(), example(path)))]
    assert errors == []


@pytest.mark.parametrize("case", BAD_VALUES, ids=str)
def test_bad_values_break_the_schema(case):
    assert list(jsonschema.Draft7Validator(values_schema()).iter_errors(coalesce(defaults(), BAD_VALUES[case])))


# -- Helm lint -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_chart_lints_clean(tmp_path, path):
    assert lint_errors(tmp_path, example(path) if path else None) == []


@pytest.mark.parametrize("case", BAD_VALUES, ids=str)
def test_lint_rejects_bad_values(tmp_path, case):
    assert "values.yaml" in lint_errors(tmp_path, BAD_VALUES[case])


def test_template_checks_refuse_the_install(helm_config, tmp_path):
    """A rule the schema cannot express is a `fail` in the templates. Helm's lint runs templates in lint mode, where
    `fail` only logs, so such a rule is checked where it acts: `helm install` stops with its message."""
    two_ranks_one_gpu = {"learner": {"gpus": 1, "actorsPerPod": 2}}
    assert lint_errors(tmp_path, two_ranks_one_gpu) == []  # what lint can and cannot see, pinned
    with pytest.raises(helm_sdkpy.InstallError, match="must be a multiple of learner.actorsPerPod"):
        render(helm_config, two_ranks_one_gpu)


@pytest.mark.parametrize("override,message", [
    ({"critic": {"replicas": 0}}, "set critic.replicas > 0"),
    ({"critic": {"gpus": 0}}, "does not fit a critic pod"),
    ({"critic": {"cpus": 1}}, "more than the critic pods have"),
    ({"config": {"reward": {"functions": [{"name": "judge", "options": {"path": "/j", "num_cpus": 0}}]}}},
     "num_cpus must be > 0"),
    ({"rollout": {"gpus": 0}}, "needs GPU rollout and learner pools"),
], ids=["no critic group", "critic GPU missing", "critics overfill", "critic without CPUs", "CPU-only pools"])
def test_critics_that_cannot_be_placed_refuse_the_install(helm_config, override, message):
    values = coalesce(coalesce(example(CHART / "examples" / "values-8gpu.yaml"), CRITICS), override)
    with pytest.raises(helm_sdkpy.InstallError, match=message):
        render(helm_config, values)


# -- rendering -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [None, *EXAMPLES, "critics"],
                         ids=lambda p: p if isinstance(p, str) else p.name if p else "defaults")
def test_rendered_ray_objects_match_the_kuberay_crds(helm_config, crd_validators, path):
    values = coalesce(example(CHART / "examples" / "values-8gpu.yaml"), CRITICS) if path == "critics" else \
        example(path) if path else None
    for mode in ("job", "cluster"):
        objects, _ = render(helm_config, coalesce(values or {}, {"mode": mode}))
        kinds = [o["kind"] for o in objects if o["apiVersion"] == "ray.io/v1"]
        assert kinds == [{"job": "RayJob", "cluster": "RayCluster"}[mode]]
        assert crd_errors(crd_validators, one(objects, kinds[0])) == []


def test_crd_check_catches_a_typo(helm_config, crd_validators):
    job = one(render(helm_config)[0], "RayJob")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"] = [{"keys": "x"}]
    job["spec"]["shutdownAfterJobFinish"] = True
    errors = crd_errors(crd_validators, job)
    assert any("keys" in e for e in errors) and any("shutdownAfterJobFinish" in e for e in errors)


def entrypoint_items(job: dict) -> tuple[list[str], list[str]]:
    """The entrypoint's config files and overrides, after checking its fixed parts."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["ponder", "train", "/etc/ponder/config.yaml"] and argv[-2:] == ["--resume", "auto"]
    items = argv[3:-2]
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def shipped_config(objects: list[dict], tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["config.yaml"])
    return path


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_job_runs_the_shipped_config_with_resume(helm_config, tmp_path, path):
    values = coalesce(defaults(), example(path) if path else {})
    objects, notes = render(helm_config, example(path) if path else None)
    job = one(objects, "RayJob")
    files, overrides = entrypoint_items(job)
    assert files == []
    cfg = load_config([str(shipped_config(objects, tmp_path))], overrides)  # Ponder's own schema and rules
    assert cfg.checkpoint.dir == values["checkpoint"]["dir"]
    assert cfg.cluster.address == "auto"
    assert cfg.tracking.uri == f"http://ponder-mlflow.{NAMESPACE}.svc:{values['mlflow']['port']}"
    r, lr, w = values["rollout"], values["learner"], values["reward"]
    assert (cfg.rollout.num_workers, cfg.rollout.num_gpus) == (r["replicas"] * r["actorsPerPod"],
                                                               r["gpus"] / r["actorsPerPod"])
    assert (cfg.learner.num_ranks, cfg.learner.num_gpus) == (lr["replicas"] * lr["actorsPerPod"],
                                                             lr["gpus"] / lr["actorsPerPod"])
    assert cfg.reward.num_workers == w["replicas"] * w["actorsPerPod"]
    # Each pool asks for one unit of its own custom resource (test_pools_are_pinned_to_their_pods).
    assert {pool: getattr(cfg, pool).resources for pool in POOLS} == {pool: {f"ponder_{pool}": 1.0} for pool in POOLS}
    # The final model comes from the last checkpoint in S3 (the driver is not on the learner's pod): it needs both.
    assert cfg.checkpoint.every > 0 and cfg.checkpoint.export_hf is True
    spec = job["spec"]
    assert spec["backoffLimit"] == values["job"]["backoffLimit"] and spec["shutdownAfterJobFinishes"] is True
    assert "--resume auto" in notes


def custom_resources(value: str) -> dict:
    """A group's `resources` start param as both readers see it, which must agree: the KubeRay operator (trims quotes
    and spaces, then parses JSON, to add accelerators; pod.go getResourcesMap) and the shell that runs `ray start`."""
    operator = json.loads(value.strip("'\"` "))
    (flag,) = shlex.split(f"--resources={value}")
    assert json.loads(flag.removeprefix("--resources=")) == operator
    return operator


def groups_and_config(helm_config, values: dict) -> tuple[dict, dict, object]:
    job = one(render(helm_config, values)[0], "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    return ({g["groupName"]: g for g in spec["workerGroupSpecs"]}, spec["headGroupSpec"],
            load_config([], entrypoint_items(job)[1]))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_pools_are_pinned_to_their_pods(helm_config, path):
    """Every pool group advertises its own custom resource, one unit per actor it hosts, and every pool actor asks for
    one unit of it: each pool fills exactly its own pods, and reward actors (model-written code) land only on the
    isolated reward pods. No other group advertises a pool's resource."""
    values = coalesce(defaults(), example(path))
    groups, head, cfg = groups_and_config(helm_config, example(path))
    assert "resources" not in head["rayStartParams"]
    counts = {"rollout": cfg.rollout.num_workers, "learner": cfg.learner.num_ranks, "reward": cfg.reward.num_workers}
    for pool in POOLS:
        per_pod = custom_resources(groups[pool]["rayStartParams"]["resources"])
        assert per_pod == {f"ponder_{pool}": values[pool]["actorsPerPod"]}
        assert per_pod[f"ponder_{pool}"] * groups[pool]["replicas"] == counts[pool]
        assert getattr(cfg, pool).resources == {f"ponder_{pool}": 1.0}


def test_ray_cpus_are_left_to_the_critics(helm_config):
    """A critic's options take only num_cpus/num_gpus, no custom resource, so Ray CPUs mark where it may go: the head,
    GPU and reward groups advertise none and their actors ask for none, and only the critic group has any. So a critic
    can take neither a pool GPU nor a reward slot, and fits its own pod."""
    groups, head, cfg = groups_and_config(helm_config, coalesce(example(CHART / "examples" / "values-8gpu.yaml"),
                                                                CRITICS))
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert {name: g["rayStartParams"]["num-cpus"] for name, g in groups.items()} == \
        {"rollout": "0", "learner": "0", "reward": "0", "critic": str(CRITICS["critic"]["cpus"])}
    assert cfg.rollout.num_cpus == cfg.learner.num_cpus == cfg.reward.num_cpus == 0
    assert "resources" not in groups["critic"]["rayStartParams"]
    critics = [f for f in cfg.reward.functions if f.name in ("reward_model", "judge")]
    options = [with_defaults(f.name, dict(f.options)) for f in critics]
    assert all(o["num_cpus"] > 0 for o in options)
    assert sum(o["num_cpus"] for o in options) <= int(groups["critic"]["rayStartParams"]["num-cpus"])
    assert sum(o["num_gpus"] for o in options) <= int(groups["critic"]["rayStartParams"]["num-gpus"])
    # Ray GPUs: as many as the pods' limits, all taken by the pools' actors except the critic group's.
    gpus = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
            for name, g in groups.items()}
    assert {name: int(g["rayStartParams"].get("num-gpus", 0)) for name, g in groups.items()} == gpus
    assert {name: gpus[name] * g["replicas"] for name, g in groups.items() if name != "reward"} == \
        {"rollout": cfg.rollout.num_workers * cfg.rollout.num_gpus,
         "learner": cfg.learner.num_ranks * cfg.learner.num_gpus,
         "critic": CRITICS["critic"]["gpus"] * CRITICS["critic"]["replicas"]}
    critic_pod = groups["critic"]["template"]["spec"]["containers"][0]
    # trusted (extra volumes for its model) but, like the rollout pods, no S3 credentials: it does not use them
    assert "AWS_SECRET_ACCESS_KEY" not in {e["name"] for e in critic_pod.get("env", [])}


def test_cpu_only_pools_reserve_their_cpus(helm_config):
    """On CPU-only pools the actors reserve cpusPerActor each and the pods advertise exactly that; reward pods none."""
    values = coalesce(defaults(), example(CHART / "examples" / "values-cpu-test.yaml"))
    groups, _, cfg = groups_and_config(helm_config, example(CHART / "examples" / "values-cpu-test.yaml"))
    assert "critic" not in groups  # replicas 0: no group
    for pool, count in (("rollout", cfg.rollout.num_workers), ("learner", cfg.learner.num_ranks)):
        advertised = int(groups[pool]["rayStartParams"]["num-cpus"]) * groups[pool]["replicas"]
        assert advertised == count * getattr(cfg, pool).num_cpus == count * values[pool]["cpusPerActor"]
    assert groups["reward"]["rayStartParams"]["num-cpus"] == "0" and cfg.reward.num_cpus == 0


def test_reward_pods_get_no_credentials_and_a_locked_down_container(helm_config):
    objects, _ = render(helm_config)
    spec = one(objects, "RayJob")["spec"]["rayClusterSpec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"],
            **{g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}}
    for name, pod in pods.items():
        env = {e["name"] for e in pod["containers"][0].get("env", [])}
        assert ("AWS_SECRET_ACCESS_KEY" in env) == (name in ("head", "learner")), name  # only where used
        assert pod["automountServiceAccountToken"] is False
    reward = pods["reward"]
    assert reward["securityContext"]["runAsNonRoot"] is True
    assert reward["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert reward["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}}
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "reward"


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_reward_pods_reach_only_rays_ports_and_the_cluster_dns(helm_config, path):
    """Every egress rule names both where and which ports: Ray's GCS, object and node managers and worker ports on
    the release's Ray pods, which every Ray pod is started with; DNS only to the DNS pods. Not the dashboard (8265),
    the client port (10001) or anything outside."""
    values = coalesce(defaults(), example(path) if path else {})
    objects, _ = render(helm_config, example(path) if path else None)
    rules = one(objects, "NetworkPolicy")["spec"]["egress"]
    assert all(rule.get("to") and rule.get("ports") for rule in rules)  # no rule open to anywhere or on any port
    ray_rule, dns_rule = rules
    (ray_pods,) = ray_rule["to"]
    assert set(ray_pods) == {"podSelector"}  # this namespace, this release's pods
    assert ray_pods["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ponder"
    assert ray_pods["podSelector"]["matchExpressions"][0]["values"] == ["head", *POOLS, "critic"]  # not mlflow

    def allowed(port: int) -> bool:
        return any(p["protocol"] == "TCP" and p["port"] <= port <= p.get("endPort", p["port"])
                   for p in ray_rule["ports"])

    assert [port for port in (6379, 8076, 8077, 10002, 19999) if not allowed(port)] == []
    assert [port for port in (8265, 10001, 52365, 8080, 5000, 22) if allowed(port)] == []
    spec = one(objects, "RayJob")["spec"]["rayClusterSpec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        params = group["rayStartParams"]
        ports = [int(params[k]) for k in ("object-manager-port", "node-manager-port", "min-worker-port",
                                          "max-worker-port")]
        assert all(allowed(port) for port in ports) and allowed(int(params.get("port", 6379)))
    dns = values["reward"]["networkPolicy"]["dns"]
    assert dns_rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": dns["namespace"]}},
                               "podSelector": {"matchLabels": dns["podLabels"]}}]
    assert sorted((p["protocol"], p["port"]) for p in dns_rule["ports"]) == [("TCP", 53), ("UDP", 53)]


@pytest.mark.parametrize("mode", ["job", "cluster"])
def test_ray_token_authentication_is_on_with_a_secret_of_the_release(helm_config, mode):
    objects, notes = render(helm_config, {"mode": mode})
    spec = one(objects, "RayJob" if mode == "job" else "RayCluster")["spec"]
    spec = spec["rayClusterSpec"] if mode == "job" else spec
    assert spec["authOptions"] == {"mode": "token", "secretName": "ponder-ray-token"}
    secret = one(objects, "Secret")
    assert secret["metadata"]["name"] == "ponder-ray-token"
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert len(token) >= 32 and token.isalnum()
    again = one(render(helm_config, {"mode": mode})[0], "Secret")["data"]["auth_token"]
    assert token != base64.b64decode(again).decode()  # random per install (an upgrade keeps the one it finds)
    if mode == "cluster":  # the NOTES tell a submitting user how to authenticate
        assert "RAY_AUTH_MODE=token" in notes and "get secret ponder-ray-token" in notes
    # one of your own, or none
    objects, _ = render(helm_config, {"mode": mode, "rayAuth": {"secretName": "mine"}})
    assert [o for o in objects if o["kind"] == "Secret"] == []
    assert "authOptions" not in str(render(helm_config, {"mode": mode, "rayAuth": {"enabled": False}})[0])
    with pytest.raises(helm_sdkpy.InstallError, match="rayAuth.enabled needs Ray >= 2.52"):
        render(helm_config, {"mode": mode, "rayVersion": "2.51.0"})


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_weights_reach_engines_in_other_pods(helm_config, tmp_path, path):
    """Rollout and learner actors are pinned to different pods, so different Ray nodes: the shipped config's weight
    transport, settled as it would be at run time, works across them (NCCL with GPUs on both sides, else Ray's object
    store), never a /dev/shm the pods do not share."""
    objects, _ = render(helm_config, example(path) if path else None)
    cfg = load_config([str(shipped_config(objects, tmp_path))], entrypoint_items(one(objects, "RayJob"))[1])
    r, lr = cfg.rollout, cfg.learner
    gpus = r.num_gpus > 0 and lr.num_gpus > 0
    kind = choose(preselect(r.weight_sync, gpus, lr.zero_stage), "a learner pod", ["a rollout pod"])
    assert kind == ("nccl" if gpus else "network")


def test_shared_memory_weight_sync_refuses_the_install(helm_config):
    with pytest.raises(helm_sdkpy.InstallError, match="weight_sync=shm cannot work here"):
        render(helm_config, {"config": {"rollout": {"weight_sync": "shm"}}})


def test_a_bad_ponder_config_is_refused_at_install_naming_the_key(helm_config):
    """Before any object (and any GPU pod) is created, not on the cluster after a retry or six."""
    with pytest.raises(helm_sdkpy.InstallError, match="samples_per_promt"):
        render(helm_config, BAD_VALUES["typo in a Ponder config key"])
    with pytest.raises(helm_sdkpy.InstallError, match="top_p"):
        render(helm_config, BAD_VALUES["Ponder config value out of range"])


def test_the_chart_checks_the_config_with_the_current_schema():
    from ponder.platform.config_reference import json_schema

    assert values_schema()["properties"]["config"]["allOf"][0] == json_schema(), "run `make config-reference`"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_chart_schema(path):
    """The generated schema refuses nothing Ponder accepts: each config in configs/ loads and passes it."""
    from ponder.platform.config_reference import json_schema

    load_config([str(path)], [])
    assert [e.message for e in jsonschema.Draft7Validator(json_schema()).iter_errors(
        yaml.safe_load(path.read_text()))] == []


def test_install_refuses_bad_values_with_a_message(helm_config):
    """Helm's install validates values against the schema too, and unlike lint its error says which key."""
    with pytest.raises(helm_sdkpy.InstallError, match="gpu"):
        render(helm_config, BAD_VALUES["typo in a key"])


def test_mlflow_server_uses_the_s3_secret_and_answers_to_its_service_name(helm_config):
    objects, _ = render(helm_config)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["artifacts-destination"].startswith("s3://")
    assert "ponder-mlflow*" in args["allowed-hosts"].split(",")
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {defaults()["s3"]["secretName"]}
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == defaults()["mlflow"]["port"]


# -- infra/k8s: plain manifests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,mode", [("rayjob.yaml", "job"), ("raycluster.yaml", "cluster")])
def test_plain_manifests_match_the_crds_and_the_chart(helm_config, crd_validators, name, mode):
    """infra/k8s/*.yaml are what the chart renders with the CPU test values, without Helm's labels: kept in step."""
    plain = [d for d in yaml.safe_load_all((REPO / "infra" / "k8s" / name).read_text()) if d]
    kind = {"job": "RayJob", "cluster": "RayCluster"}[mode]
    assert crd_errors(crd_validators, one(plain, kind)) == []
    rendered, _ = render(helm_config, coalesce(example(CHART / "examples" / "values-cpu-test.yaml"), {"mode": mode}))
    assert one(plain, kind)["spec"] == one(rendered, kind)["spec"]
    assert one(plain, "ConfigMap")["data"] == one(rendered, "ConfigMap")["data"]
    assert one(plain, "NetworkPolicy")["spec"] == one(rendered, "NetworkPolicy")["spec"]


def test_ray_cluster_launcher_config_matches_rays_schema():
    """infra/ray-cluster.yaml against the schema `ray up` validates with, read from the installed Ray package
    (found, not imported: unit tests do not start Ray)."""
    import importlib.util

    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "infra" / "ray-cluster.yaml").read_text())
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(config)] == []
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert all(t["resources"].get("CPU") == 0 for t in nodes.values())  # Ray CPUs are left to critics
    # Each pool's node type advertises its own custom resource, as the chart's groups do (none on the head).
    pinned = {name: [k for k in t["resources"] if k.startswith("ponder_")] for name, t in nodes.items()}
    assert pinned == {"head": [], "rollout": ["ponder_rollout"], "learner": ["ponder_learner"],
                      "reward": ["ponder_reward"]}


def test_cluster_mode_notes_submit_a_config_the_submitting_machine_has(helm_config, tmp_path, monkeypatch):
    """The NOTES' two commands, run as a user would from a checkout: the config is fetched from the release's
    ConfigMap into a file there, and `ponder submit`'s own local check accepts that file with the printed overrides."""
    from ponder.platform.cli import build_parser

    objects, notes = render(helm_config, {"mode": "cluster"})
    fetch = next(line.strip() for line in notes.splitlines() if line.strip().startswith("kubectl") and "configmap" in line)
    submit = next(line.strip() for line in notes.splitlines() if line.strip().startswith("ponder submit"))
    configmap = one(objects, "ConfigMap")
    assert f"get configmap {configmap['metadata']['name']} " in fetch
    assert shlex.split(fetch)[-2:] == [">", "ponder-release.yaml"] and "{.data.config\\.yaml}" in fetch
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ponder-release.yaml").write_text(configmap["data"]["config.yaml"])  # what the jsonpath prints
    args = build_parser().parse_args(shlex.split(submit)[1:])
    files = [i for i in args.items if "=" not in i]
    assert files == ["ponder-release.yaml"] and not any(i.startswith("/") for i in args.items)
    cfg = load_config(files, [i for i in args.items if "=" in i])
    assert cfg.cluster.address == "auto" and cfg.checkpoint.dir == defaults()["checkpoint"]["dir"]


def shm_bytes(size: str) -> int:
    number, unit = size[:-2], size[-2:]
    return int(number) * {"Mi": 2 ** 20, "Gi": 2 ** 30}[unit]


@pytest.mark.parametrize("path", [None, *EXAMPLES], ids=lambda p: p.name if p else "defaults")
def test_rays_object_store_fits_each_pods_shared_memory(helm_config, path):
    """Ray sizes its object store from the pod's memory and, when /dev/shm is smaller, puts it on disk: the chart
    gives every group an object store of 3/5 of its own /dev/shm."""
    spec = one(render(helm_config, example(path) if path else None)[0], "RayJob")["spec"]["rayClusterSpec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        (shm,) = [v["emptyDir"]["sizeLimit"] for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm"]
        store = group["rayStartParams"]["object-store-memory"]
        assert isinstance(store, str) and int(store) == shm_bytes(shm) * 3 // 5, group.get("groupName", "head")


def test_an_object_store_set_larger_than_shared_memory_refuses_the_install(helm_config):
    fits = {"reward": {"shmSize": "1Gi", "rayStartParams": {"object-store-memory": str(2 ** 29)}}}
    groups, _, _ = groups_and_config(helm_config, fits)
    assert groups["reward"]["rayStartParams"]["object-store-memory"] == str(2 ** 29)  # the user's value wins
    with pytest.raises(helm_sdkpy.InstallError, match="reward.rayStartParams.object-store-memory .* does not fit"):
        render(helm_config, {"reward": {"shmSize": "1Gi", "rayStartParams": {"object-store-memory": str(2 ** 31)}}})


def test_reward_pods_get_what_bubblewrap_needs_when_asked(helm_config):
    """The defaults leave the runtime's seccomp profile and /proc (the start-up self-test names the fix); the
    settings give the pods a Localhost seccomp profile, an AppArmor profile, their own user namespace and an
    unmasked /proc, and only the reward pods."""
    values = {"reward": {"userNamespaces": True,
                         "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/ponder-bwrap.json"},
                         "appArmorProfile": {"type": "Localhost", "localhostProfile": "bwrap-userns"}}}
    for given, expect_userns in ((None, False), (values, True)):
        spec = one(render(helm_config, given)[0], "RayJob")["spec"]["rayClusterSpec"]
        pods = {g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}
        pods["head"] = spec["headGroupSpec"]["template"]["spec"]
        reward = pods.pop("reward")
        assert ("hostUsers" in reward) == expect_userns and reward.get("hostUsers", False) is False
        assert (reward["containers"][0]["securityContext"].get("procMount") == "Unmasked") == expect_userns
        context = reward["securityContext"]
        assert context["seccompProfile"] == (values["reward"]["seccompProfile"] if given else {"type": "RuntimeDefault"})
        assert context.get("appArmorProfile") == (values["reward"]["appArmorProfile"] if given else None)
        assert all("hostUsers" not in pod and "securityContext" not in pod for pod in pods.values())


@pytest.mark.parametrize("profile", [{"type": "Localhost"}, {"type": "RuntimeDefault", "localhostProfile": "x"}],
                         ids=["Localhost without a file", "a file without Localhost"])
def test_a_profile_without_its_file_or_a_file_without_localhost_is_refused(profile):
    for key in ("seccompProfile", "appArmorProfile"):
        assert list(jsonschema.Draft7Validator(values_schema()).iter_errors(
            coalesce(defaults(), {"reward": {key: profile}})))


def test_a_group_can_run_another_image(helm_config):
    """The 8-GPU example runs its reward pods on the CPU image (same Python and Ray: test_images.py); the other
    groups keep the chart's."""
    values = example(CHART / "examples" / "values-8gpu.yaml")
    spec = one(render(helm_config, values)[0], "RayJob")["spec"]["rayClusterSpec"]
    images = {g["groupName"]: g["template"]["spec"]["containers"][0]["image"] for g in spec["workerGroupSpecs"]}
    images["head"] = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    main = f"{values['image']['repository']}:{values['image']['tag']}"
    assert images.pop("reward") == f"{values['image']['repository']}:0.1.0-cpu"
    assert set(images.values()) == {main}


def test_mlflow_is_probed_and_an_ephemeral_store_is_called_out(helm_config):
    objects, notes = render(helm_config)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "lost when its pod is rescheduled" in notes
    assert "lost when its pod" not in render(helm_config, {"mlflow": {"existingClaim": "mlflow-db"}})[1]
