"""deploy/k8s: the KubeRay manifests, held to the compose file's images, scripts, secrets and addresses."""

from __future__ import annotations

import re
import shlex

import yaml

from compose_file import K8S, REPO, SECRET_NAME, SECRETS, compose, filled_env, launch_args, raw_compose


def k8s_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def containers(document: dict) -> list[dict]:
    """Every container of a workload, RayCluster groups included."""
    spec = document.get("spec", {})
    templates = [spec.get("template", {}).get("spec", {})]
    if document["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in
                                                                   spec["workerGroupSpecs"]]
    return [c for t in templates for c in t.get("initContainers", []) + t.get("containers", [])]


def container_env(container: dict, config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment from its ConfigMaps and literal values (secrets left out)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            env[variable["name"]] = config_maps[ref["name"]][ref["key"]]
        elif "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def test_the_kuberay_manifests():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = [d for name in kustomization["resources"] for d in k8s_documents(name)]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    assert {"RayCluster", "StatefulSet", "Deployment", "Service", "Job", "Namespace"} <= set(by_kind)
    assert set(by_kind["StatefulSet"]) == {"postgres", "seaweedfs"} and set(by_kind["Deployment"]) == {
        "mlflow", "optuna-dashboard"}
    assert "Secret" not in by_kind  # secrets only through the generator, from the ignored secrets.env
    assert kustomization["secretGenerator"] == [{"name": "fpa-secrets", "envs": ["secrets.env"]}]

    (cluster,) = by_kind["RayCluster"].values()
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"]  # from zero: the RayJob asks for GPUs
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1

    # Every secret-looking variable comes from the Secret, under a key secrets.env.example lists.
    keys = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (K8S / "secrets.env.example").read_text(), re.M))
    assert keys == SECRETS - {"RAY_AUTH_TOKEN"}  # KubeRay makes Ray's token
    env_vars = [e for d in documents for c in containers(d) for e in c.get("env", [])]
    for variable in env_vars:
        if SECRET_NAME.search(variable["name"]):
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "fpa-secrets" and ref["key"] in keys, variable["name"]
    assert not re.search(r"(?i)(password|secret_key|token)\s*[:=]\s*['\"]?\w", "\n".join(
        (K8S / n).read_text() for n in kustomization["resources"]))

    # The same images as compose: the project's (tagged by kustomize) and the pinned third-party ones.
    services = compose(filled_env())["services"]
    (project_image,) = kustomization["images"]
    assert f"{project_image['name']}:{project_image['newTag']}" == services["mlflow"]["image"]
    third_party = {services[s]["image"] for s in ("postgres", "s3")}
    for d in documents:
        for c in containers(d):
            assert c["image"] == project_image["name"] or c["image"] in third_party, c["image"]
    # ... and the same scripts: PostgreSQL's init SQL, SeaweedFS's start.
    init_sql = by_kind["ConfigMap"]["postgres-initdb"]["data"]["10-optuna.sql"]
    assert init_sql == (REPO / "deploy" / "postgres" / "initdb.sql").read_text()
    (seaweedfs,) = containers(by_kind["StatefulSet"]["seaweedfs"])
    assert seaweedfs["args"][0] == raw_compose()["services"]["s3"]["command"][0].replace("$$", "$")
    tables, _ = containers(by_kind["Deployment"]["optuna-dashboard"])
    assert tables["command"][:3] == services["optuna-init"]["command"][:3]

    # The addresses the workloads use are Services of this kustomization, on their ports.
    endpoints = dict(item.split("=", 1) for item in kustomization["configMapGenerator"][0]["literals"])
    ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in by_kind["Service"].items()}
    for host, port in re.findall(r"(?://|@)([a-z0-9-]+):(\d+)", " ".join(endpoints.values())):
        assert int(port) in ports.get(host, set()), (host, port)

    # The RayJob runs launch.py on that cluster's head, whose environment (the endpoints) names the stores:
    # the bucket, the MLflow Service and Optuna's database. Each trial asks for a GPU, so that the autoscaler
    # adds GPU workers from zero. Only the head holds MLflow's variable, under its own name.
    (job,) = k8s_documents("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    head_container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_env = container_env(head_container, {"fpa-endpoints": endpoints})
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["python", "/app/sweeps/launch.py"]
    args = launch_args(command[2:], head_env)
    assert args.storage == f"s3://{endpoints['FPA_BUCKET']}/sweeps" == endpoints["FPA_STORAGE"]
    assert args.tracking_uri == "http://mlflow:5000" and 5000 in ports["mlflow"]
    assert args.optuna_storage == endpoints["FPA_OPTUNA_STORAGE"]
    assert args.gpus_per_trial == 1 and args.dataset
    assert not any("MLFLOW_TRACKING_URI" in container_env(c, {"fpa-endpoints": endpoints})
                   for d in documents for c in containers(d) if c is not head_container)


# Kueue's CRDs (kubernetes-sigs/kueue, config/components/crd/bases, read through the search tool): for API
# kueue.x-k8s.io/v1beta1, served by every release that has these kinds, the fields each spec may hold, those
# an item must hold, and the enums used here.
KUEUE_SPEC = {
    "ClusterQueue": {"admissionChecks", "admissionChecksStrategy", "admissionScope", "cohort",
                     "excludeResourcePrefixes", "fairSharing", "flavorFungibility", "namespaceSelector", "preemption",
                     "queueingStrategy", "resourceGroups", "stopPolicy"},
    "LocalQueue": {"clusterQueue", "stopPolicy"},
    "ResourceFlavor": {"nodeLabels", "nodeTaints", "tolerations", "topologyName"},
}
KUEUE_ENUMS = {"queueingStrategy": {"StrictFIFO", "BestEffortFIFO"},
               "reclaimWithinCohort": {"Never", "LowerPriority", "Any"},
               "withinClusterQueue": {"Never", "LowerPriority", "LowerOrNewerEqualPriority"}}
QUEUE_LABEL, PRIORITY_LABEL = "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"


def _quantity(value) -> float:
    text = str(value)
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * factor
    return float(text)


def test_the_kueue_manifests_queue_each_sweep_into_a_team_quota():
    documents = [d for d in yaml.safe_load_all((K8S / "kueue" / "queues.yaml").read_text()) if d]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d["kind"] == "Namespace":
            continue
        assert d["apiVersion"] == "kueue.x-k8s.io/v1beta1", d["metadata"]["name"]
        if d["kind"] in KUEUE_SPEC:
            assert set(d["spec"]) <= KUEUE_SPEC[d["kind"]], (d["kind"], set(d["spec"]) - KUEUE_SPEC[d["kind"]])
    flavors = set(by_kind["ResourceFlavor"])
    for name, queue in by_kind["ClusterQueue"].items():
        spec = queue["spec"]
        assert spec["cohort"] == "fpa-lab"  # one cohort: a team borrows what the others leave idle
        assert spec["queueingStrategy"] in KUEUE_ENUMS["queueingStrategy"]
        for key in ("reclaimWithinCohort", "withinClusterQueue"):
            assert spec["preemption"][key] in KUEUE_ENUMS[key]
        assert spec["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": name}}
        assert len(spec["resourceGroups"]) <= 16
        for group in spec["resourceGroups"]:
            assert "nvidia.com/gpu" in group["coveredResources"] and len(group["coveredResources"]) <= 64
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors
                # "flavors must have the same number of resources as the coveredResources", each with a quota
                assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
                assert all("nominalQuota" in r and set(r) <= {"name", "nominalQuota", "borrowingLimit",
                                                              "lendingLimit"} for r in flavor["resources"])
    # A LocalQueue per team, in the team's namespace, pointing at its ClusterQueue.
    local = [d for d in documents if d["kind"] == "LocalQueue"]
    assert {(q["metadata"]["namespace"], q["spec"]["clusterQueue"]) for q in local} == {
        (name, name) for name in by_kind["ClusterQueue"]}
    assert set(by_kind["Namespace"]) == set(by_kind["ClusterQueue"])
    assert {n: c["value"] for n, c in by_kind["WorkloadPriorityClass"].items()} == {"sweep-high": 1000,
                                                                                    "sweep-low": 100}
    assert all(set(c) <= {"apiVersion", "kind", "metadata", "value", "description"}
               for c in by_kind["WorkloadPriorityClass"].values())

    # The RayJob: suspended and labelled for a LocalQueue and a priority; a cluster of its own that Kueue can
    # count (no autoscaling, fixed replicas, at most 7 worker groups) and that ends with the sweep; and an
    # entrypoint that resumes the sweep when a preempted RayJob comes back on a new cluster.
    (job,) = [d for d in yaml.safe_load_all((K8S / "kueue" / "rayjob.yaml").read_text()) if d]
    labels = job["metadata"]["labels"]
    assert {q["metadata"]["name"] for q in local} == {labels[QUEUE_LABEL]}
    assert labels[PRIORITY_LABEL] in by_kind["WorkloadPriorityClass"]
    spec = job["spec"]
    assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True and "clusterSelector" not in spec
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False and len(cluster["workerGroupSpecs"]) <= 7
    import ray

    assert cluster["rayVersion"] == ray.__version__
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["python", "/app/sweeps/launch.py"]
    args = launch_args(command[2:], {})
    assert args.or_resume and args.name == job["metadata"]["name"] and args.dataset

    # What one sweep asks for fits the quota of each team whole (else it would never be admitted), and the
    # GPU is what runs out first (no team's CPUs or memory idle its GPUs).
    pods = [(1, cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["replicas"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    need = {}
    for count, pod in pods:
        for container in pod["containers"]:
            for resource, value in container["resources"]["requests"].items():
                need[resource] = need.get(resource, 0) + count * _quantity(value)
    for name, queue in by_kind["ClusterQueue"].items():
        quota = {r["name"]: _quantity(r["nominalQuota"]) for r in queue["spec"]["resourceGroups"][0]["flavors"][0][
            "resources"]}
        fits = {resource: quota[resource] // need[resource] for resource in need}
        assert min(fits.values()) >= 1 and fits["nvidia.com/gpu"] == min(fits.values()), (name, fits)

    # The pods carry the same secrets and endpoints as the shared RayCluster's (raycluster.yaml), less its job
    # queue's start timeout: a RayJob of Kueue's runs one sweep and queues in Kueue.
    (shared,) = [d for d in k8s_documents("raycluster.yaml") if d["kind"] == "RayCluster"]
    for ours, theirs in zip(containers({"kind": "RayCluster", "spec": cluster}), containers(shared)):
        assert ours["env"] == [e for e in theirs["env"] if not e["name"].startswith("RAY_JOB_")]
        assert ours["envFrom"] == theirs["envFrom"] and ours["image"] == theirs["image"]
