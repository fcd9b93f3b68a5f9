"""A node lost mid-sweep, on a real multi-node Ray: a head and two workers started with `ray start`, each in a
process group of its own with its own CPUs and custom resource, as KubeRay's pods would be; trials checkpoint
to moto's S3. First every process of one worker dies mid-trial, then the head with the driver."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import child_runs, free_port, own_ray, sweep_file, tracking_db
from local_stack import forget_cluster, stop
from mlflow.tracking import MlflowClient

from fpa_core import storage

psutil = pytest.importorskip("psutil")
pytestmark = [pytest.mark.ray, pytest.mark.process]

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
STEPS, INTERVAL = 15, 3  # a trial's steps; its checkpoint and evaluation interval (TINY_FIXED)


class Node:
    """One `ray start --block`, in a session of its own: every process of the node is in it (the raylet and
    agents in its process group, each trial's worker in a group of its own), so killing the session's processes
    is losing the node."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path):
        self.name, self.log = name, logs / f"{name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats",
                                             "--node-ip-address=127.0.0.1", *args], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "will now block forever" not in self.log.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.process.pid:
                    found.append(process)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    @property
    def node_id(self) -> str:
        for process in self.processes():
            match = re.search(r"--node_id=(\w+)", " ".join(process.cmdline()))
            if match:
                return match.group(1)
        raise AssertionError(f"no raylet in {self.name}'s processes")

    def kill(self) -> list[str]:
        """SIGKILL to every process of the node at once, as when its pod or machine goes: their names."""
        processes = self.processes()
        names = [p.name() for p in processes]
        for process in processes:
            process.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, alive
        self.process.wait(timeout=30)
        return names


def _checkpoint_steps(root: str, trial: str) -> list[int]:
    names = storage.list_names(f"{root}/trials/{trial}/checkpoints")
    return sorted(int(n[len("latest-"):-len(".pt")]) for n in names if n.startswith("latest-"))


def _trials(root: str) -> list[str]:
    return sorted(n for n in storage.list_names(f"{root}/trials") if n.startswith("trial_"))


def _records(root: str, trial: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(f"{root}/trials/{trial}/metrics.jsonl").decode().splitlines()]


def _node_of(client: MlflowClient, experiment_ids: list[str], trial: str) -> str | None:
    runs = client.search_runs(experiment_ids, f"tags.`fpa.trial_id` = '{trial}'")
    return runs[0].data.tags.get("fpa.node_id") if runs else None


def _wait(condition, what: str, driver: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert driver.poll() is None, f"the driver ended before {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def test_a_lost_worker_node_and_then_a_lost_head_lose_no_trial(tmp_path, image_folder, s3_bucket):
    own_ray()  # the tests' shared local Ray: this test runs a cluster of its own
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{RAY.parent}:{os.environ['PATH']}"}
    nodes: list[Node] = []
    gcs_ports: list[int] = []

    def head() -> str:
        port = free_port()
        gcs_ports.append(port)
        nodes.append(Node(f"head-{len(nodes)}", ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                                                 "--include-dashboard=false", f"--ray-client-server-port={free_port()}"],
                          env, tmp_path))
        return f"127.0.0.1:{port}"

    def worker(address: str, pod: str) -> Node:
        nodes.append(Node(pod, [f"--address={address}", "--num-cpus=2", "--num-gpus=0", f"--resources={{\"{pod}\": 1}}"],
                          env, tmp_path))
        return nodes[-1]

    name, sweep = "lost-nodes", sweep_file(tmp_path, image_folder, {"model.d_hidden": [8, 16]}, steps=STEPS, log_every=1)
    root = f"s3://{s3_bucket}/sweeps/{name}"
    tracking, optuna_db = tracking_db(tmp_path), f"sqlite:///{tmp_path / 'optuna.db'}"
    common = ["--storage", f"s3://{s3_bucket}/sweeps", "--tracking-uri", tracking, "--optuna-storage", optuna_db]
    client = MlflowClient(tracking)
    log = tmp_path / "driver.log"
    driver = None
    try:
        address = head()
        pod_a, pod_b = worker(address, "pod-a"), worker(address, "pod-b")
        with open(log, "w") as out:
            driver = subprocess.Popen([sys.executable, "sweeps/launch.py", "--dataset", sweep, "--name", name,
                                       "--address", address, "--num-trials", "4", "--max-concurrent", "2",
                                       "--pruner", "none", *common], cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)

        # 1. Once a trial is part-way (a checkpoint written, steps to go), every process of its node dies.
        def a_trial_midway():
            experiments = [e.experiment_id for e in client.search_experiments()]
            for trial in _trials(root):
                steps = _checkpoint_steps(root, trial)
                if steps and steps[-1] < STEPS - INTERVAL and _node_of(client, experiments, trial):
                    return trial, _node_of(client, experiments, trial)
            return None

        trial, node_id = _wait(a_trial_midway, "a trial part-way through", driver, log)
        lost, survivor = (pod_a, pod_b) if node_id == pod_a.node_id else (pod_b, pod_a)
        assert node_id == lost.node_id
        experiments = [e.experiment_id for e in client.search_experiments()]
        on_lost = [t for t in _trials(root) if _node_of(client, experiments, t) == lost.node_id
                   and not storage.exists(f"{root}/trials/{t}/summary.json")]
        assert trial in on_lost, on_lost
        killed = lost.kill()
        killed_at = time.time()
        assert "raylet" in killed and any(n.startswith("ray::ImplicitFunc") for n in killed), killed  # the trial's worker too
        newest = {t: (_checkpoint_steps(root, t) or [0])[-1] for t in on_lost}

        # Its trials resume on the surviving node, each from its newest checkpoint.
        def resumed_elsewhere():
            return all(_node_of(client, experiments, t) == survivor.node_id for t in on_lost)

        _wait(resumed_elsewhere, "the lost node's trials on the surviving node", driver, log)
        noticed = time.time() - killed_at

        def resumed():  # each trial's `resumed` record, in its log once its next checkpoint is written
            found = [[r for r in _records(root, t) if r.get("event") == "resumed"] for t in on_lost]
            return all(found) and found

        back = max(records[0]["time"] for records in _wait(resumed, "the resumed trials' logs", driver, log))
        print(f"\nnode lost: trials {on_lost} at checkpoints {newest}; restored on the surviving node "
              f"{back - killed_at:.1f} s after the kill (its MLflow run named the new node after {noticed:.1f} s)")

        # 2. Then the head dies with the driver (and the surviving worker, whose head is gone: a new cluster).
        def a_later_trial_midway():
            return [t for t in _trials(root) if t not in on_lost
                    and not storage.exists(f"{root}/trials/{t}/summary.json") and _checkpoint_steps(root, t)]

        _wait(a_later_trial_midway, "a later trial part-way through", driver, log)
        driver.kill()
        for node in (nodes[0], survivor):
            node.kill()
        driver.wait(timeout=30)
        running = {t: (_checkpoint_steps(root, t) or [0])[-1] for t in _trials(root)
                   if not storage.exists(f"{root}/trials/{t}/summary.json")}
        assert not storage.exists(f"{root}/summary.json")

        address = head()
        worker(address, "pod-c")
        started, started_at = time.monotonic(), time.time()
        resumed = subprocess.run([sys.executable, "sweeps/launch.py", "--resume", name, "--address", address,
                                  *common], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        back = max(r["time"] for t in running for r in _records(root, t) if r.get("event") == "resumed")
        print(f"head lost: trials {sorted(running)} at checkpoints {running}; --resume had them restored in "
              f"{back - started_at:.1f} s and finished the sweep in {time.monotonic() - started:.1f} s")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in reversed(nodes):
            stop(node.process)
        for port in gcs_ports:
            forget_cluster(port)

    # Every trial ended once, complete, at its full step count; nothing finished was lost.
    summary = json.loads(storage.read_bytes(f"{root}/summary.json"))
    names = [t["trial_id"] for t in summary["trials"]]
    assert len(names) == 4 == len(set(names)) and {t["state"] for t in summary["trials"]} == {"COMPLETE"}
    assert all(t["steps"] == STEPS for t in summary["trials"])
    for t in on_lost:  # resumed from the newest checkpoint it had when its node died
        resumes = [r for r in _records(root, t) if r.get("event") == "resumed"]
        assert resumes and resumes[0]["step"] == newest[t], (t, newest[t], resumes)
    for t, step in running.items():  # ... and when the head died, on the new cluster
        resumes = [r for r in _records(root, t) if r.get("event") == "resumed"]
        assert step and resumes and resumes[-1]["step"] == step, (t, step, resumes)
    for t in summary["trials"]:  # every evaluation reported once, through the restarts
        assert [e["step"] for e in t["evaluations"]] == list(range(INTERVAL, STEPS + 1, INTERVAL)), t

    # MLflow and the study agree with the summary: one run and one Optuna trial per trial, all finished.
    _, parent, runs = child_runs(tracking, summary)
    assert sorted(r.data.tags["fpa.trial_id"] for r in runs) == sorted(names)
    assert all(r.info.status == "FINISHED" for r in runs)
    best = {t["trial_id"]: t["best_value"] for t in summary["trials"]}
    assert {r.data.tags["fpa.trial_id"]: float(r.data.tags["fpa.best_fid"]) for r in runs} == pytest.approx(best)
    study = optuna.load_study(study_name=name, storage=optuna_db)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert {f"trial_{t.number:04d}": t.value for t in complete} == pytest.approx(best)
    assert all(t.state.name == "FAIL" and not t.intermediate_values for t in study.trials if t not in complete)
