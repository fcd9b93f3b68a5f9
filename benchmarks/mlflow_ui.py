"""The MLflow UI of a finished sweep, checked and photographed in headless Chromium (Debian's `chromium`).

    .venv/bin/python benchmarks/mlflow_ui.py --tracking-uri sqlite:///mlflow.db --sweep NAME --out docs/

Serves the store with `mlflow ui` on a free loopback port and drives Chromium over its DevTools protocol (its
websocket through aiohttp, which Ray brings): each page is the link a sweep prints, with
`?workflowType=machine_learning`, and each is checked to show the training view before it is photographed:

    mlflow-runs.png     the experiment's runs table, the sweep's parent run opened on its trials
    mlflow-images.png   the trials' sample grids at their last step: an "Image grid" chart of the `samples`
                        images each trial logs at every evaluation, its step slider at the end
    mlflow-best.png     the parent run's metrics: the best-so-far curve (best_fid or best_kid against the
                        evaluations seen) and the sweep's cost

Exit 1, naming the page, when a check fails (the UI changed under the link, or opened another view).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from mlflow.tracking import MlflowClient

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer(url: str, process: subprocess.Popen, timeout: float = 120.0) -> bytes:
    """The body of the first answer from ``url``, polled while ``process`` (its server) starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url} within {timeout:.0f} s") from None
            time.sleep(0.3)


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.ids = ws, itertools.count(1)

    async def send(self, method: str, **params):
        message_id = next(self.ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait(self, condition: str, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                text = await self.js("document.body ? document.body.innerText.slice(0, 600) : ''")
                raise RuntimeError(f"{what} did not appear within {timeout:.0f} s; the page shows: {text!r}")
            await asyncio.sleep(0.5)

    async def click(self, element: str, what: str) -> None:
        """A real mouse click on the element ``element`` (a JS expression) finds: React's menus want one."""
        await self.wait(element, what)
        x, y = await self.js(f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}}); "
                             "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        await self.click_at(x, y)
        await asyncio.sleep(1)  # the UI's menus and dialogs animate open

    async def click_at(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait("document.querySelector('#root') && document.body.innerText.includes('Model training')",
                        f"the MLflow UI at {url}")

    async def photograph(self, path: Path, element: str | None = None) -> None:
        clip = {}
        if element is not None:
            x, y, width, height = await self.js(f"(() => {{ const r = ({element}).getBoundingClientRect(); "
                                                "return [r.x, r.y, r.width, r.height]; })()")
            clip = {"clip": {"x": x, "y": y, "width": width, "height": height, "scale": 1}}
        shot = await self.send("Page.captureScreenshot", format="png", **clip)
        path.write_bytes(base64.b64decode(shot["data"]))


BY_TEXT = "[...document.querySelectorAll('{tag}')].find(e => e.textContent.trim() === {text!r})"
CLOSE_ASSISTANT = "document.querySelector('button[aria-label=Close]')"


async def photograph_sweep(page: Page, base: str, parent, trial, best_metric: str, out: Path) -> None:
    view = "?workflowType=machine_learning"
    # The runs table: the parent opened on its trials.
    await page.open(f"{base}{view}")
    if await page.js(f"Boolean({CLOSE_ASSISTANT})"):
        await page.click(CLOSE_ASSISTANT, "the assistant's close button")
    await page.click(f"document.querySelector('[row-id=\"{parent.info.run_id}\"] "
                     "button[data-component-id*=runnamecellrenderer]')", "the sweep's parent run")
    await page.wait(f"document.body.innerText.includes({trial.info.run_name!r})", "the trials under the parent")
    await asyncio.sleep(1)
    await page.photograph(out / "mlflow-runs.png")

    # The trials' sample grids by step: a chart of the image grid, at the last step.
    await page.click("document.querySelector('input[value=CHART]')", "the chart view")
    await page.click(BY_TEXT.format(tag="button", text="Add chart"), "Add chart")
    await page.click(BY_TEXT.format(tag="[role=menuitem]", text="Image grid"), "the image grid chart")
    await page.click("document.querySelector('[role=dialog] button[aria-label^=Images]')", "the image keys")
    await page.click(BY_TEXT.format(tag="[role=option]", text="samples"), "the samples images")
    await page.key("Escape", 27)
    await page.click("document.querySelector('[role=dialog] [role=switch]')", "the run parameters switch")
    x, y = await page.js("(() => { let e = document.querySelector('[role=dialog] [role=slider]'); "
                         "while (e.getBoundingClientRect().width < 100) e = e.parentElement; "
                         "const r = e.getBoundingClientRect(); return [r.right - 3, r.y + r.height / 2]; })()")
    await page.click_at(x, y)  # the step slider's end: the last evaluation
    await page.wait("document.querySelector('[role=dialog] img')", "a trial's sample grid")
    await asyncio.sleep(2)
    await page.photograph(out / "mlflow-images.png", "document.querySelector('[role=dialog]')")
    await page.key("Escape", 27)

    # The parent's metrics: the best so far, against the evaluations seen.
    await page.open(f"{base}/runs/{parent.info.run_id}/model-metrics{view}")
    await page.wait(f"document.body.innerText.includes({f'({best_metric})'!r})", f"the {best_metric} chart")
    if await page.js(f"Boolean({CLOSE_ASSISTANT})"):
        await page.click(CLOSE_ASSISTANT, "the assistant's close button")
    await asyncio.sleep(2)
    await page.photograph(out / "mlflow-best.png")


async def drive(port: int, *args) -> None:
    targets = json.loads(answer(f"http://127.0.0.1:{port}/json/list", CHROME))
    url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                        mobile=False)
        await photograph_sweep(page, *args)


CHROME: subprocess.Popen


def main(argv: list[str] | None = None) -> int:
    global CHROME
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True, help="the sweep's MLflow store, e.g. sqlite:///mlflow.db")
    parser.add_argument("--sweep", required=True, help="the sweep's name (its parent run)")
    parser.add_argument("--out", default="docs", help="where the screenshots go (default docs/)")
    args = parser.parse_args(argv)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        parser.exit(2, "this needs Debian's chromium: apt-get install chromium\n")
    client = MlflowClient(args.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`mlflow.runName` = '{args.sweep}' "
                                              f"and tags.`fpa.sweep` = '{args.sweep}'")
    if not parents:
        parser.exit(2, f"no sweep {args.sweep!r} in {args.tracking_uri}\n")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trial = min(children, key=lambda r: r.info.run_name)
    best_metric = next(k for k in parent.data.metrics if k.startswith("best_"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ui_port, chrome_port = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri, "--host",
                           "127.0.0.1", "--port", str(ui_port), "--workers", "1"],
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp()
    CHROME = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--remote-debugging-port={chrome_port}", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            answer(f"http://127.0.0.1:{ui_port}/health", ui)
            base = f"http://127.0.0.1:{ui_port}/#/experiments/{parent.info.experiment_id}"
            asyncio.run(drive(chrome_port, base, parent, trial, best_metric, out))
        except RuntimeError as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
    finally:
        for process in (CHROME, ui):
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    for name in ("mlflow-runs.png", "mlflow-images.png", "mlflow-best.png"):
        print(f"ok   {out / name}: the training view of {args.sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
