"""``barge demo``: the whole loop in one command, with nothing else running."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType

import aiohttp
import click
import orjson
import uvicorn
from aiohttp import web

from barge.api.server import create_app
from barge.settings import Settings
from barge.simulator import simulator_app

DEMO_KEY = "sk-barge-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _example_file(n: int) -> bytes:
    lines = (
        orjson.dumps({
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "demo-model", "max_tokens": 64,
                     "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]},
        })
        for i in range(1, n + 1)
    )
    return b"\n".join(lines) + b"\n"


async def _client_walkthrough(base: str, n: int, where: str) -> None:
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", _example_file(n), filename="requests.jsonl",
                       content_type="application/jsonl")
        async with http.post(f"{base}/files", data=form) as r:
            f = await r.json()
        click.echo(f"1. uploaded {f['filename']}: {f['id']} ({f['bytes']} bytes)")
        body = {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h", "metadata": {"source": "barge demo"}}
        async with http.post(f"{base}/batches", json=body) as r:
            batch = await r.json()
        click.echo(f"2. created {batch['id']} (status {batch['status']})")
        started, last = time.monotonic(), ""
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.2)
            async with http.get(f"{base}/batches/{batch['id']}") as r:
                batch = await r.json()
            counts = batch["request_counts"]
            line = (f"   {batch['status']:<11} {counts['completed']}/{counts['total']} done,"
                    f" {counts['failed']} failed")
            if line != last:
                click.echo(line)
                last = line
        click.echo(f"3. {batch['status']} in {time.monotonic() - started:.1f}s")
        if batch["output_file_id"]:
            async with http.get(f"{base}/files/{batch['output_file_id']}/content") as r:
                output = (await r.read()).splitlines()
            click.echo(f"4. output file {batch['output_file_id']}: {len(output)} lines; first 3:")
            for raw in output[:3]:
                row = orjson.loads(raw)
                answer = row["response"]["body"]["choices"][0]["message"]["content"]
                click.echo(f"   {row['custom_id']}: {answer}")
        click.echo(f"\nData directory: {where} (barge.db holds the state, files/ the bytes).")


def _how_to_use(base: str, upstream: str) -> str:
    """The commands that use the running demo from another terminal, verbatim."""
    return "\n".join([
        "",
        "Barge and the simulated upstream keep running; Ctrl-C (or SIGTERM) stops both.",
        "Use them from another terminal:",
        "",
        f"  export OPENAI_BASE_URL={base}",
        f"  export OPENAI_API_KEY={DEMO_KEY}",
        "  python -c 'from openai import OpenAI; "
        "print([(b.id, b.status) for b in OpenAI().batches.list()])'",
        f"  curl -s {base}/batches -H 'Authorization: Bearer {DEMO_KEY}'",
        "",
        f"The simulated upstream alone: {upstream} (e.g. barge serve --upstream {upstream}).",
    ])


async def _demo(n: int, data_dir: Path, where: str, keep_running: bool = False) -> None:
    sim_port, port = _free_port(), _free_port()
    runner = web.AppRunner(simulator_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sim_port).start()
    settings = Settings(data_dir=data_dir, port=port, upstream=f"http://127.0.0.1:{sim_port}/v1",
                        admin_key=DEMO_KEY, shutdown_grace=2.0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                await serving
                raise click.ClickException("the Barge server did not start")
            await asyncio.sleep(0.05)
        base, upstream = f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{sim_port}/v1"
        click.echo(f"Barge on {base} (key {DEMO_KEY}), simulated upstream on {upstream}\n")
        try:
            await _client_walkthrough(base, n, where)
        except aiohttp.ClientError:
            if not server.should_exit:
                raise
            return  # stopped (Ctrl-C or SIGTERM) while the walkthrough ran
        if not keep_running:
            click.echo("Point the official SDK at it:  OpenAI(base_url=..., api_key=...) as in "
                       "the README, or run barge demo --keep-running.")
            return
        click.echo(_how_to_use(base, upstream))
        await serving  # until Ctrl-C or SIGTERM: uvicorn stops on either
        click.echo("Stopped Barge and the simulated upstream.")
    finally:
        server.should_exit = True
        await serving
        await runner.cleanup()


def _after_stop(signum: int, frame: FrameType | None) -> None:
    """uvicorn stops on SIGINT/SIGTERM and then raises the signal again under the
    handlers it found at start: with this one, that ends the demo cleanly (status 0)."""


def run_demo(n: int, data_dir: Path | None, keep_running: bool = False) -> None:
    signal.signal(signal.SIGTERM, _after_stop)
    signal.signal(signal.SIGINT, _after_stop)
    if data_dir is not None:
        asyncio.run(_demo(n, data_dir, str(data_dir), keep_running))
        return
    with tempfile.TemporaryDirectory(prefix="barge-demo-") as tmp:
        asyncio.run(_demo(n, Path(tmp), f"{tmp}, removed on exit; --data-dir keeps one",
                          keep_running))
