"""The control plane's cost as the trial count grows, side by side with raw Ray Tune, in one run.

    python benchmarks/scale.py --trials 100 1000 [--backends sqlite postgres] [--out scale.json]

Ray's bookkeeping test scaled to this machine (release/tune_tests/scalability_tests): N one-second trials with
5 reports each, on a local Ray with 16 logical CPUs, 16 at a time, so the theoretical minimum is N / 16 s. For
each N, interleaved, each in a fresh process:

    raw      the same trials as a plain function through tune.Tuner: no Optuna, no MLflow, no checkpoints
    sqlite   ``sweeps/launch.py --simulate model`` with the embedded default's stores (SQLite MLflow and Optuna)
    postgres the same with Optuna on PostgreSQL and MLflow as a real ``mlflow server`` on PostgreSQL

A simulated sweep here is the real driver, Tune, study, pruner (``--pruner none``: every trial runs its 5
reports, as the raw ones do), MLflow runs and records; only the training is a sleep (500 steps at 2 ms, an
evaluation every 100). Measured in the driver's process: wall time, CPU-seconds, peak RSS, Optuna's ask and
tell by trial number, the bridge's work per report by trial number, MLflow client calls; then the stores'
sizes, ``fpa-status`` on the sweep, and the MLflow REST search for the experiment's runs. The postgres
backend also counts every MLflow REST request the trials and the driver made (the server's access log).

Needs: PostgreSQL at 127.0.0.1:5432 (user postgres, trust) for the postgres backend; nothing downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CPUS, CONCURRENT, REPORTS, TRIAL_SECONDS = 16, 16, 5, 1.0
STEPS, EVERY = 500, 100  # a simulated trial: 5 evaluations, 2 ms a step


# -- one measurement, in its own process ------------------------------------------------------------------


def raw_tune(n: int, folder: Path) -> dict[str, Any]:
    import ray
    from ray import tune

    def trial(config):
        for i in range(REPORTS):
            time.sleep(TRIAL_SECONDS / REPORTS)
            tune.report({"fid": 100.0 - i + config["x"], "step": (i + 1) * EVERY})

    ray.init(num_cpus=CPUS, include_dashboard=False, configure_logging=False)
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}), param_space={"x": tune.uniform(0, 1)},
                       tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=CONCURRENT, reuse_actors=True,
                                                   metric="fid", mode="min"),
                       run_config=tune.RunConfig(name="raw", storage_path=str(folder), verbose=0))
    started, cpu = time.perf_counter(), _cpu()
    results = tuner.fit()
    return {"wall_s": time.perf_counter() - started, "driver_cpu_s": _cpu() - cpu, "trials": len(results),
            "errors": results.num_errors}


def ours(n: int, folder: Path, backend: str) -> dict[str, Any]:
    import optuna
    import ray
    from mlflow.tracking import MlflowClient

    from sweeps.cli import launch
    from sweeps.study import OptunaBridge

    timings: dict[str, list[tuple[int, float]]] = {"ask": [], "tell": [], "report": [], "report_cpu": []}

    def timed(cls, name, key, index, cpu_key=None):
        plain = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            began, cpu = time.perf_counter(), time.thread_time()
            try:
                return plain(self, *args, **kwargs)
            finally:
                timings[key].append((index(self), time.perf_counter() - began))
                if cpu_key:
                    timings[cpu_key].append((index(self), time.thread_time() - cpu))
        setattr(cls, name, wrapper)

    timed(optuna.Study, "ask", "ask", lambda study: len(timings["ask"]))
    timed(optuna.Study, "tell", "tell", lambda study: len(timings["tell"]))
    timed(OptunaBridge, "report", "report", lambda bridge: len(timings["report"]) // REPORTS, "report_cpu")
    calls: dict[str, int] = {}
    for name in [m for m in vars(MlflowClient) if not m.startswith("_") and callable(getattr(MlflowClient, m))]:
        plain = getattr(MlflowClient, name)

        def counted(self, *args, _plain=plain, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _plain(self, *args, **kwargs)
        setattr(MlflowClient, name, counted)

    ray.init(num_cpus=CPUS, include_dashboard=False, configure_logging=False)
    stores = []
    if backend == "postgres":
        stores = ["--optuna-storage", os.environ["SCALE_OPTUNA"], "--tracking-uri", os.environ["SCALE_MLFLOW"]]
    argv = ["--dataset", "digits", "--simulate", "model", "--num-trials", str(n), "--max-concurrent",
            str(CONCURRENT), "--cpus-per-trial", "1", "--pruner", "none", "--step-seconds",
            str(TRIAL_SECONDS / STEPS), "--set", f"steps={STEPS}", "--set", f"fid.every={EVERY}",
            "--name", "scale", "--storage", str(folder / "sweeps"), *stores]
    started, cpu = time.perf_counter(), _cpu()
    code = launch.main(argv)
    wall, driver_cpu = time.perf_counter() - started, _cpu() - cpu
    summary = json.loads((folder / "sweeps" / "scale" / "summary.json").read_text())
    return {"wall_s": wall, "driver_cpu_s": driver_cpu, "exit": code, "trials": len(summary["trials"]),
            "states": _count(t["state"] for t in summary["trials"]),
            "reports": sum(len(t["evaluations"]) for t in summary["trials"]),
            "timings": timings, "mlflow_calls": calls, "experiment_id": summary["mlflow_url"].split("/")[-1].split("?")[0]}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count(values) -> dict[str, int]:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return counted


def one(kind: str, n: int, folder: str, profile: Path | None = None) -> None:
    os.chdir(folder)  # the embedded default's stores (mlflow.db, optuna) land here
    if profile:  # the driver's main thread, where Ray Tune's loop and the bridge run
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    measured = raw_tune(n, Path(folder)) if kind == "raw" else ours(n, Path(folder), kind)
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    measured["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("SCALE-RESULT " + json.dumps(measured), flush=True)
    os._exit(0)  # Ray's shutdown is not what is measured


# -- the run: every N and backend, interleaved ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres(name: str, create: bool) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if create:
            cursor.execute(f"CREATE DATABASE {name}")
    connection.close()


def database_bytes(name: str) -> int:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(%s)", (name,))
        size = cursor.fetchone()[0]
    connection.close()
    return size


def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
                                "--workers", "1"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"mlflow server did not start; see {log}")
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait()


def search_runs(url: str, experiment_id: str) -> tuple[float, int]:
    """Seconds to page through every run of the experiment with MLflow's REST search, and how many."""
    began, runs, token = time.perf_counter(), 0, None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 1000, **({"page_token": token} if token else {})}
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        page = json.loads(urllib.request.urlopen(request, timeout=300).read())
        runs += len(page.get("runs", []))
        token = page.get("next_page_token")
        if not token:
            return time.perf_counter() - began, runs


def status_seconds(storage: Path, env: dict[str, str], extra: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps.cli.status", "--storage", str(storage), "--json", *extra],
                   check=True, stdout=subprocess.DEVNULL, env=env, cwd=storage.parent)
    return time.perf_counter() - began


def measure(kind: str, n: int, work: Path, code: Path = ROOT, label: str | None = None) -> dict[str, Any]:
    """One run of ``kind`` with N trials, with the driver's code from ``code`` (a checkout: an older commit's,
    for a before-and-after in one run)."""
    label = label or kind
    folder = work / f"{label.replace(' ', '-')}-{n}"
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_DEDUP_LOGS": "0"}
    server = None
    if kind == "postgres":
        postgres("scale_optuna", create=True)
        postgres("scale_mlflow", create=True)
        server, url = mlflow_server("postgresql+psycopg2://postgres@127.0.0.1:5432/scale_mlflow",
                                    folder / "mlartifacts", folder / "mlflow-server.log")
        env.update(SCALE_OPTUNA="postgresql+psycopg2://postgres@127.0.0.1:5432/scale_optuna", SCALE_MLFLOW=url)
    try:
        print(f"[scale] {label} N={n} ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", kind, "--n", str(n), "--folder", str(folder)],
                              env=env, capture_output=True, text=True)
        (folder / "driver.log").write_text(done.stdout + done.stderr)
        lines = [line for line in done.stdout.splitlines() if line.startswith("SCALE-RESULT ")]
        if not lines:
            raise RuntimeError(f"{kind} N={n} reported nothing (exit {done.returncode}); see {folder}/driver.log")
        measured = json.loads(lines[-1][len("SCALE-RESULT "):])
        measured.update(kind=label, n=n, theory_s=n * TRIAL_SECONDS / CONCURRENT)
        if kind == "raw":
            return measured
        if kind == "sqlite":
            measured["optuna_db_mb"] = _mb(next((folder / "sweeps").rglob("optuna.db")))
            measured["mlflow_db_mb"] = _mb(folder / "mlflow.db")
            measured["status_s"] = status_seconds(folder / "sweeps", env, [])
            server, url = mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts",
                                        folder / "mlflow-server.log")
        else:
            measured["optuna_db_mb"] = database_bytes("scale_optuna") / 2**20
            measured["mlflow_db_mb"] = database_bytes("scale_mlflow") / 2**20
            measured["status_s"] = status_seconds(folder / "sweeps", env,
                                                  ["--optuna-storage", env["SCALE_OPTUNA"]])
            measured["rest_requests"] = _count(_requests(folder / "mlflow-server.log"))
        measured["search_s"], measured["search_runs"] = search_runs(url, measured["experiment_id"])
        return measured
    finally:
        if server is not None:
            stop(server)
        if kind == "postgres":
            postgres("scale_optuna", create=False)
            postgres("scale_mlflow", create=False)


def _requests(log: Path) -> list[str]:
    """The MLflow REST endpoints of the server's access log, one per request."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        for verb in ('"GET /api/', '"POST /api/', '"PATCH /api/', '"DELETE /api/', '"PUT /api/'):
            if verb in line:
                endpoint = line.split(verb, 1)[1].split(" ", 1)[0].split("?")[0]
                found.append("2.0/mlflow-artifacts/artifacts/<run>/<file>" if "mlflow-artifacts/" in endpoint
                             else endpoint)
    return found


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def tenths(timings: list[list[float]], n: int) -> str:
    """Median milliseconds of the calls of the first and of the last tenth of the sweep's trials."""
    first = [seconds for i, seconds in timings if i < n / 10]
    last = [seconds for i, seconds in timings if i >= n - n / 10]
    return " / ".join("-" if not v else f"{1000 * statistics.median(v):.1f}" for v in (first, last))


def table(results: list[dict[str, Any]]) -> str:
    raw = {r["n"]: r for r in results if r["kind"] == "raw"}
    lines = ["| N | run | wall s | theory s | x theory | x raw Tune | driver CPU s | CPU ms/trial | CPU ms/report "
             "| peak RSS MB | trials (states) |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        base = raw.get(r["n"])
        reports = r.get("reports") or r["n"] * REPORTS
        states = ", ".join(f"{k} {v}" for k, v in sorted(r.get("states", {}).items())) or f"{r['trials']} trials"
        lines.append(f"| {r['n']} | {r['kind']} | {r['wall_s']:.1f} | {r['theory_s']:.1f} | "
                     f"{r['wall_s'] / r['theory_s']:.2f} | {r['wall_s'] / base['wall_s'] if base else float('nan'):.2f} | "
                     f"{r['driver_cpu_s']:.1f} | {1000 * r['driver_cpu_s'] / r['n']:.0f} | "
                     f"{1000 * r['driver_cpu_s'] / reports:.1f} | {r['peak_rss_mb']:.0f} | {states} |")
    lines += ["", "| N | run | ask ms (first / last tenth) | tell ms | report CPU ms "
              "| MLflow calls/trial (driver) | REST requests/trial (all) | optuna MB | mlflow MB | status s "
              "| REST search s (runs) |", "|---:|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r["kind"] == "raw":
            continue
        t = r["timings"]

        def three(key):
            return tenths(t[key], r["n"])
        rest = sum(r["rest_requests"].values()) / r["n"] if "rest_requests" in r else None
        lines.append(f"| {r['n']} | {r['kind']} | {three('ask')} | {three('tell')} | {three('report_cpu')} | "
                     f"{sum(r['mlflow_calls'].values()) / r['n']:.1f} | {'-' if rest is None else f'{rest:.1f}'} | "
                     f"{r['optuna_db_mb']:.1f} | {r['mlflow_db_mb']:.1f} | {r['status_s']:.2f} | "
                     f"{r['search_s']:.2f} ({r['search_runs']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--out", type=Path, help="write every measurement as JSON here")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run each backend with the driver's code of this checkout (e.g. a git worktree of an "
                             "older commit), interleaved with this one's: a before-and-after in one run")
    parser.add_argument("--before-backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite"],
                        help="the backends that --before runs (default: sqlite)")
    parser.add_argument("--keep", type=Path, help="keep the runs' folders here (default: a temporary folder)")
    parser.add_argument("--one", choices=("raw", "sqlite", "postgres"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=Path, help="with --one: the driver's cProfile stats, to this file")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.n, args.folder, args.profile)
    work = args.keep or Path(tempfile.mkdtemp(prefix="fpa-scale-"))
    results = []
    try:
        for n in args.trials:
            runs = [("raw", ROOT, "raw")]
            for backend in args.backends:
                if args.before and backend in args.before_backends:
                    runs.append((backend, args.before.resolve(), f"{backend} before"))
                runs.append((backend, ROOT, backend))
            for kind, code, label in runs:
                results.append(measure(kind, n, work, code, label))
                print(table(results), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
