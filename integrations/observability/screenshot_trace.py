"""Screenshot a Phoenix trace with one span selected and its Attributes tab open (headless Chromium, CDP).

    python integrations/observability/screenshot_trace.py --project inferenceguard-demo \
        [--span-name inferenceguard.block] [--out docs/img/trace.png] [--url http://127.0.0.1:6006]

Picks the newest trace of the project; selects the first span named ``--span-name`` that has a resample event
(else the first with that name). Needs ``chromium`` (Debian) and the ``websockets`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - localhost
        return json.loads(r.read().decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick(base: str, project: str, span_name: str) -> str:
    projects = {p["name"]: p["id"] for p in _get(f"{base}/v1/projects")["data"]}
    spans = _get(f"{base}/v1/projects/{project}/spans?limit=200")["data"]
    trace_id = max(spans, key=lambda s: s["start_time"])["context"]["trace_id"]
    mine = [s for s in spans if s["context"]["trace_id"] == trace_id and s["name"] == span_name]
    mine.sort(key=lambda s: (not any("resample" in e["name"] for e in s["events"]), s["start_time"]))
    sel = f"?selectedSpanNodeId={mine[0]['id']}" if mine else ""
    return f"{base}/projects/{projects[project]}/traces/{trace_id}{sel}"


async def shoot(url: str, out: str, size: tuple[int, int], tab: str) -> None:
    import websockets

    port, profile = _free_port(), tempfile.mkdtemp()
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", f"--window-size={size[0]},{size[1]}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(60):
            try:
                targets = _get(f"http://127.0.0.1:{port}/json")
                page = next(t for t in targets if t.get("type") == "page")
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.5)
        else:
            raise RuntimeError("chromium did not start")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20) as ws:
            n = 0

            async def call(method: str, **params):
                nonlocal n
                n += 1
                await ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == n:
                        return msg.get("result", {})

            await call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                       mobile=False)  # fmt: skip
            await call("Page.navigate", url=url)
            js = (
                "(() => { const t = [...document.querySelectorAll('[role=tab]')]"
                f".find(e => e.textContent.trim().startsWith({json.dumps(tab)})); if (t) t.click(); return !!t; }})()"
            )
            for _ in range(120):  # the UI renders after its GraphQL queries: wait for the tab, then click it
                await asyncio.sleep(1)
                res = await call("Runtime.evaluate", expression=js, returnByValue=True)
                if res.get("result", {}).get("value"):
                    break
            await asyncio.sleep(4)
            shot = await call("Page.captureScreenshot", format="png")
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:6006")
    ap.add_argument("--project", default="inferenceguard-demo")
    ap.add_argument("--span-name", default="inferenceguard.block")
    ap.add_argument("--tab", default="Attributes")
    ap.add_argument("--out", default="docs/img/trace.png")
    ap.add_argument("--size", default="1600,1000")
    args = ap.parse_args()
    page = pick(args.url.rstrip("/"), args.project, args.span_name)
    w, h = (int(x) for x in args.size.split(","))
    asyncio.run(shoot(page, args.out, (w, h), args.tab))
    print(f"{page} -> {args.out}")


if __name__ == "__main__":
    main()
