"""``asr serve`` at scale: a short soak (tools/soak_serve.py) and two servers behind one reverse
proxy (nginx, Caddy) on loopback, configured as docs/serve.md shows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import torch

aiohttp = pytest.importorskip("aiohttp", reason="asr serve needs aiohttp (pip install 'asr[serve]')")

from conftest import requires_espeak  # noqa: E402
from test_serve import Result, bounded, health, read_until_closed, start_server, stop_server  # noqa: E402

pytestmark = requires_espeak
TOOLS = Path(__file__).resolve().parents[1] / "tools"
HELLO = json.dumps({"type": "hello", "sample_rate": 16000, "format": "pcm16"})


@pytest.mark.slow
def test_soak_short_run_keeps_every_good_stream_intact(tiny_streaming_checkpoint, tmp_path):
    """Clients joining, leaving, pausing and misbehaving at random for 20 s: every well-behaved
    client gets its clip's finals, every fault its own close code, and the server stays up."""
    clips = []
    for i in (0, 3):
        clips.append(tmp_path / f"clip{i}.wav")
        sf.write(clips[-1], tiny_streaming_checkpoint.audio[i].numpy(), 16000, subtype="PCM_16")
    report = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(TOOLS / "soak_serve.py"), "--model", str(tiny_streaming_checkpoint.path),
         "--audio", *map(str, clips), "--minutes", "0.33", "--clients", "6", "--speed", "4", "--seed", "1",
         "--idle-timeout", "3", "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert figures["well_behaved"] >= 5 and figures["identical"] == figures["well_behaved"]
    assert figures["faults"] >= 5 and len(figures["by_kind"]) >= 6, figures["by_kind"]
    assert figures["failures"] == [] and figures["server_alive"] and figures["streams_open_at_end"] == 0
    assert figures["health_failed"] == 0 and figures["health_ok"] > 0
    assert set(figures["memory_mib"]) == {"initial", "half", "end", "peak"} and len(figures["memory_timeline_mib"]) == 11


# ---------------------------------------------------------------------------------------------
# Two servers behind one proxy: the configurations of docs/serve.md, on 127.0.0.1

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_config(directory: Path, port: int, backends: list[int]) -> list[str]:
    """docs/serve.md's nginx site, in a configuration of its own (files under ``directory``)."""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in backends)
    temp = "\n".join(f"    {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (directory / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {directory}/nginx.pid;
events {{ worker_connections 256; }}
http {{
{temp}
    access_log off;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream asr {{
        least_conn;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 200m;
        location / {{
            proxy_pass http://asr;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_request_buffering off;
        }}
    }}
}}
""")
    return ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log"),
            "-g", "daemon off;"]


def caddy_config(directory: Path, port: int, backends: list[int]) -> list[str]:
    """docs/serve.md's Caddyfile, with its admin endpoint and HTTPS off (loopback only)."""
    (directory / "Caddyfile").write_text(f"""
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    reverse_proxy {" ".join(f"127.0.0.1:{p}" for p in backends)} {{
        lb_policy least_conn
        health_uri /health
        health_interval 5s
    }}
}}
""")
    return ["caddy", "run", "--config", str(directory / "Caddyfile"), "--adapter", "caddyfile"]


async def stream_through(url: str, sockets: list, pcm: bytes) -> list[Result]:
    """Stream ``pcm`` on each open socket at once (in 80 ms frames) and collect what each gets."""
    async def one(ws) -> Result:
        reader = asyncio.create_task(read_until_closed(ws, Result()))
        for i in range(0, len(pcm), 2560):
            await ws.send_bytes(pcm[i : i + 2560])
            await asyncio.sleep(0.02)
        await ws.send_str(json.dumps({"type": "end"}))
        return await reader

    return await asyncio.gather(*(one(ws) for ws in sockets))


@pytest.mark.slow
@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_two_servers_behind_a_proxy_both_take_streams(proxy, tiny_streaming_checkpoint, tmp_path):
    """Four streams through the proxy: two land on each server (their own /health says so), and
    each gets the finals its audio gets from a server directly; /health answers through the proxy."""
    if shutil.which(proxy) is None:
        pytest.skip(f"{proxy} not installed (apt-get install {proxy})")
    audio = tiny_streaming_checkpoint.audio
    pcm = (torch.cat([audio[3], torch.zeros(20000), audio[0], torch.zeros(8000)]).clamp(-1, 1) * 32767).short().numpy().tobytes()
    model = str(tiny_streaming_checkpoint.path)
    backends = [start_server("--model", model, "--offline-model", model) for _ in range(2)]
    directory = tmp_path / proxy
    directory.mkdir()
    port = free_port()
    command = (nginx_config if proxy == "nginx" else caddy_config)(directory, port, [int(url.rsplit(":", 1)[1]) for _, url in backends])
    env = {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory), "XDG_CONFIG_HOME": str(directory)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"

    async def run() -> tuple[list[str], list[dict], list[Result], dict]:
        alone = Result()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{backends[0][1]}/stream") as ws:  # a server directly
                await ws.send_str(HELLO)
                await ws.receive()
                alone = (await stream_through(backends[0][1], [ws], pcm))[0]
            while True:  # until the proxy listens
                try:
                    async with session.get(f"{url}/health") as response:
                        if response.status == 200:
                            through = await response.json()
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.poll() is None, process.stderr.read().decode()
                await asyncio.sleep(0.1)
            sockets = []
            for _ in range(4):
                ws = await session.ws_connect(f"{url}/stream")
                await ws.send_str(HELLO)
                assert json.loads((await ws.receive()).data)["type"] == "ready"
                sockets.append(ws)
            counts = [await health(backend) for _, backend in backends]
            results = await stream_through(url, sockets, pcm)
            return alone.finals, counts, results, through

    try:
        expected, counts, results, through = bounded(run(), 180)
    finally:
        process.terminate()
        process.wait(timeout=30)
        for server, _ in backends:
            stop_server(server)
    sentences = tiny_streaming_checkpoint.sentences
    assert jiwer.cer([sentences[3].upper(), sentences[0].upper()], expected) < 0.05, expected
    assert [c["streams"] for c in counts] == [2, 2]  # least_conn: each server holds two of the four
    assert all(r.close_code == 1000 and r.finals == expected for r in results), [(r.close_code, r.finals) for r in results]
    assert through["max_streams"] == 32
