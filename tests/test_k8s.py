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
