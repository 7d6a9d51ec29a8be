#!/usr/bin/env python3
"""What one MCP server costs: the gateway's RSS without and with a stdio server (the fake server
of tests/fakes, built with the official SDK), the time from start to its first tool list, and a
tool call through nanoclaw next to the same call made with the SDK alone.

Usage: python bench/mcp_bench.py [--calls N]
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench import table  # noqa: E402
from bench.gateway_bench import NanoclawGateway, rss_mb  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

FAKE = ROOT / "tests" / "fakes" / "mcp_server.py"
SERVER = {"command": sys.executable, "args": [str(FAKE), "stdio"]}


def gateway_rss(tmp: Path, url: str, servers: dict) -> tuple[float, float, float]:
    """(RSS in MB once settled, and after one message; seconds from exec until every server
    is up)."""
    gw = NanoclawGateway(tmp, url, "tools: " + json.dumps({"mcp_servers": servers}) + "\n")
    start = time.perf_counter()
    gw.start()
    state = gw.home / "state" / "mcp.json"
    while servers and not (state.exists() and all(up for up, _ in json.loads(state.read_text())["servers"].values())):
        time.sleep(0.01)
    up = time.perf_counter() - start
    time.sleep(3)                       # settled
    rss = rss_mb(gw.proc.pid)
    gw.drop("one", "hello")             # loads the model's SDK too
    while not gw.replies():
        time.sleep(0.01)
    busy = rss_mb(gw.proc.pid)
    gw.stop()
    return rss, busy, up


def through_nanoclaw(home: Path, calls: int) -> tuple[float, float]:
    """(seconds to the first tool list, median seconds of one call) in-process, as `agent` runs."""
    os.environ["NANOCLAW_HOME"] = str(home)
    (home / "config.yaml").write_text("tools: " + json.dumps({"mcp_servers": {"fake": SERVER}}))
    from lib.agent.loop import agent_tools
    from lib.config import load_config
    from lib.tools import Context
    cfg = load_config()
    registry, ctx = agent_tools(cfg), Context(cfg, cfg.workspace)
    start = time.perf_counter()
    registry.schemas()
    first = time.perf_counter() - start
    times = []
    for i in range(calls + 1):
        start = time.perf_counter()
        assert registry.call("mcp_fake_echo", {"text": str(i)}, ctx) == f"echo: {i}"
        times.append(time.perf_counter() - start)
    registry.more.stop()
    return first, statistics.median(times[1:])


async def sdk_alone(calls: int) -> float:
    """The same call with the SDK's client on a plain event loop: no thread hop, no registry."""
    from mcp import ClientSession, StdioServerParameters, stdio_client
    params = StdioServerParameters(command=SERVER["command"], args=SERVER["args"])
    async with stdio_client(params, errlog=open(os.devnull, "w")) as streams, \
            ClientSession(*streams) as client:
        await client.initialize()
        times = []
        for i in range(calls + 1):
            start = time.perf_counter()
            await client.call_tool("echo", {"text": str(i)})
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="calls timed (default 200)")
    opts = ap.parse_args()
    with FakeOpenAI() as server, tempfile.TemporaryDirectory(prefix="nanoclaw-mcp-") as tmp:
        without, without_busy, _ = gateway_rss(Path(tmp) / "without", server.url, {})
        with_one, with_busy, up = gateway_rss(Path(tmp) / "with", server.url, {"fake": SERVER})
        (Path(tmp) / "cli").mkdir()
        first, ours = through_nanoclaw(Path(tmp) / "cli", opts.calls)
    alone = asyncio.run(sdk_alone(opts.calls))
    print(table([
        ["measure (one stdio MCP server, the SDK's own)", "nanoclaw"],
        ["gateway RSS, no MCP server", f"{without:.1f} MB"],
        ["gateway RSS, one stdio server (not counting it)", f"{with_one:.1f} MB"],
        ["  the same after one message, without", f"{without_busy:.1f} MB"],
        ["  the same after one message, with", f"{with_busy:.1f} MB"],
        ["gateway start until its tools are listed", f"{up:.2f} s"],
        ["agent: first tool list (SDK import, start, list)", f"{first:.2f} s"],
        [f"tool call, median of {opts.calls}", f"{ours * 1000:.2f} ms"],
        ["  the same call, SDK alone", f"{alone * 1000:.2f} ms"],
        ["  nanoclaw's overhead per call", f"{(ours - alone) * 1000:.2f} ms"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
