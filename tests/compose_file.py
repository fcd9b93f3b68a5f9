"""docker-compose.yml read as compose reads it (variable substitution), the docs' commands for its head,
and launch.py's arguments as a process with a given environment makes them out. Shared by the deploy tests."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
VENV_BIN = Path(sys.executable).parent

# The secrets .env must provide: compose refuses to start without any of them.
SECRETS = {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY",
           "RAY_AUTH_TOKEN"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# The services that run deploy/Dockerfile's image; the one-shot ones exit when done.
PROJECT_SERVICES = {"s3-init", "optuna-init", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"}
ONE_SHOT = {"s3-init", "optuna-init"}
DEFAULT_PORTS = {"postgres": {"5432"}, "ray-worker": {"52365"}}
# A Ray head's environment names the stores; the sweep commands take them as the defaults of --storage,
# --tracking-uri and --optuna-storage.
STORE_VARIABLES = ("FPA_STORAGE", "MLFLOW_TRACKING_URI", "FPA_OPTUNA_STORAGE")
HEAD_PREFIX = "docker compose exec ray-head "


# -- compose's variable substitution, to read the file as compose would --

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value, env: dict[str, str]):
    """${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$, everywhere in a parsed file.
    Raises ValueError naming every required variable that is missing or empty."""
    missing: list[str] = []

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        empty = value is None or (value == "" and op and op.startswith(":"))
        if op in (":?", "?") and empty:
            missing.append(name)
            return ""
        if op in (":-", "-") and empty:
            return arg
        return value or ""

    def walk(node):
        if isinstance(node, str):
            return _VARIABLE.sub(substitute, node)
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    result = walk(value)
    if missing:
        raise ValueError(f"required variables not set: {sorted(set(missing))}")
    return result


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: dict[str, str]) -> dict:
    return interpolate(raw_compose(), env)


def env_example() -> dict[str, str]:
    """.env.example's variables, the commented-out defaults included (`# NAME=value`)."""
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if match:
            out[match[1]] = match[2]
    return out


def filled_env() -> dict[str, str]:
    return {**{k: v for k, v in env_example().items() if k not in SECRETS}, **{k: "x" * 16 for k in SECRETS}}


def flags(command: list[str]) -> dict[str, str | None]:
    """--name=value (or a bare --flag: None) of a command line."""
    return {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else None) for a in command if a.startswith("-")}


def referenced_variables(text: str) -> set[str]:
    return {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}


def head_commands() -> list[list[str]]:
    """The commands README.md and docs/deploy.md run on the compose stack's head (the same in both): a
    script's path (`python` dropped) or a console script, then its arguments."""
    found = {readme: sorted(ln.strip() for ln in (REPO / readme).read_text().splitlines()
                            if ln.strip().startswith(HEAD_PREFIX)) for readme in ("README.md", "docs/deploy.md")}
    assert found["README.md"] == found["docs/deploy.md"], found
    commands = [shlex.split(line[len(HEAD_PREFIX):]) for line in found["README.md"]]
    return [c[1:] if c[0] == "python" else c for c in commands]


def head_command(script: str, *having: str) -> list[str]:
    """The arguments of the one head command that runs `script` with every flag in `having`."""
    (command,) = [c for c in head_commands() if c[0] == script and set(having) <= set(c)]
    return command[1:]


def the_sweep_command() -> list[str]:
    """The one command that runs a sweep on the compose stack: launch.py's arguments."""
    return head_command("sweeps/launch.py", "--dataset")


def launch_args(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """launch.py's arguments as a process with the environment `env` (a Ray head's) makes them out: the three
    stores resolved as sweeps.sweep resolves a new sweep's."""
    from sweeps.cli.launch import build_parser
    from sweeps.sweep import resolve_storage, resolve_tracking_uri

    saved = {name: os.environ.pop(name, None) for name in STORE_VARIABLES}
    try:
        os.environ.update({name: env[name] for name in STORE_VARIABLES if env.get(name)})
        args = build_parser().parse_args(argv)
        args.storage = resolve_storage(args.storage)
        args.tracking_uri = resolve_tracking_uri(args.tracking_uri)
        # A new sweep's Optuna store (a resumed one keeps the store it recorded).
        args.optuna_storage = args.optuna_storage or os.environ.get("FPA_OPTUNA_STORAGE")
        return args
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def service_hosts(service: dict) -> set[str]:
    """The compose services this one talks to, from the addresses in its command and environment."""
    text = json.dumps([service.get("command"), service.get("environment")])
    return set(re.findall(r"(?://|@)(s3|postgres|mlflow|ray-head):\d+", text)) | \
        set(re.findall(r"--address=(ray-head):\d+", text))

