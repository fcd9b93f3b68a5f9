"""deploy/ray/cluster.yaml (`ray up`): valid by Ray's own schema, and its sweep command names its stores."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from compose_file import REPO, STORE_VARIABLES, compose, filled_env, launch_args


def test_the_ray_cluster_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "deploy" / "ray" / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # as `ray up` does, after filling in the provider's defaults

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    (workers,) = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert workers["resources"]["GPU"] == 1
    assert workers["min_workers"] == 0 < workers["max_workers"] <= config["max_workers"]  # GPU workers from zero
    assert workers["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert config["docker"]["image"].rsplit("/", 1)[-1] == compose(filled_env())["services"]["ray-head"]["image"]
    # The image holds everything: Ray's default setup commands (which pip install Ray) are switched off.
    assert all(config[k] == [] for k in ("setup_commands", "head_setup_commands", "worker_setup_commands"))
    head_start, worker_start = config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]
    assert "--head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--num-gpus=0" in head_start and "--address=$RAY_HEAD_IP:6379" in worker_start
    # Secrets only from the ignored env file that every node gets and `ray start` reads.
    (remote, local), = config["file_mounts"].items()
    assert local == "deploy/ray/cluster.env" and all(f". {remote}" in c for c in (head_start, worker_start))
    example = (REPO / "deploy" / "ray" / "cluster.env.example").read_text()
    assert re.search(r"^RAY_AUTH_TOKEN=$", example, re.M) and re.search(r"^MLFLOW_TRACKING_PASSWORD=$", example, re.M)
    # ... which also names the stores: placeholders, no password in a URL. The job on the head takes them.
    stores = dict(re.findall(rf"^({'|'.join(STORE_VARIABLES)})=(\S+)$", example, re.M))
    assert set(stores) == set(STORE_VARIABLES)
    assert not any(re.search(r"://[^/\s:@]+:[^/\s@]+@", url) for url in stores.values())
    # docs/deploy.md's sweep on this cluster, submitted from a checkout, runs on the head with those stores;
    # each trial asks for a GPU, which makes the autoscaler add GPU workers (none is up when it starts).
    prefix = "python sweeps/launch.py "
    (line,) = [ln.strip() for ln in (REPO / "docs" / "deploy.md").read_text().split("## AWS", 1)[1]
               .split("\n## ", 1)[0].splitlines() if ln.strip().startswith(prefix)]
    args = launch_args(shlex.split(line[len(prefix):]), stores)
    assert (args.storage, args.tracking_uri, args.optuna_storage) == tuple(stores[name] for name in STORE_VARIABLES)
    assert args.gpus_per_trial == 1 and args.dataset and args.submit == "http://127.0.0.1:8265"
    text = (REPO / "deploy" / "ray" / "cluster.yaml").read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*\S", text)
