#!/usr/bin/env python3
"""Start-up time and peak memory of nanoclaw's CLI next to nanobot's, against the issue's targets,
and what running a command in the sandbox costs.

Usage: python bench/bench.py [--runs N] [--no-nanobot]

Both programs are onboarded into their own temp HOME and pointed at one FakeOpenAI server run in
this process. Each command runs once untimed (byte-code caches, first-run files), then N times,
one at a time. Time: median wall time. Memory: the highest ru_maxrss that os.wait4 reports.
Targets are reported, never asserted: the exit code is 1 only when nanoclaw itself fails.
The exec tool runs `true` EXEC_RUNS times with tools.exec.sandbox off, then bwrap: median time.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

NANOBOT = "nanobot-ai==0.3.5"
NANOBOT_VENV = ROOT / "bench" / ".nanobot-venv"
COMMANDS = [("--help", ["--help"]), ("status", ["status"]), ("agent -m", ["agent", "-m", "hello"])]
EXEC_RUNS = 20
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: a stray download fails at once

# Linux copies the spawning process's peak RSS into the child's ru_maxrss at exec, so a command
# started from this process (fake server and its request log: 20+ MB) could never read lower.
# A bare `python -I -S` launcher (~8.5 MB, less than any Python program) starts each command,
# times it, and passes on what os.wait4 says about it.
LAUNCHER = """
import os, sys, time
out, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
os.write(out, b"%f %d %d" % (seconds, usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
"""


def measure(cmd, env, cwd):
    """Run cmd once; return (wall seconds, peak RSS in MB). Raises RuntimeError when it fails."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, *cmd], env=env,
                                cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
        report = proc.communicate()[0].split()
        code = int(report[2]) if len(report) == 3 else proc.returncode or 1
        if code:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"`{' '.join(cmd[-3:])}` exited {code}: {' | '.join(tail)}")
    return float(report[0]), int(report[1]) / 1024  # ru_maxrss is in KB on Linux


def bench(prog, env, cwd, runs, server):
    """{command: (median s, peak MB)}, and a warning if `agent -m` did not reach the server."""
    results, warning = {}, None
    for label, args in COMMANDS:
        before = len(server.chat_requests)
        samples = [measure(prog + args, env, cwd) for _ in range(runs + 1)][1:]  # 1st: warm-up
        results[label] = (statistics.median(s for s, _ in samples), max(mb for _, mb in samples))
        if args[0] == "agent" and len(server.chat_requests) - before < runs + 1:
            warning = f"`agent -m` did not reach the fake server on all {runs + 1} runs"
    return results, warning


def user_env(home: Path, **extra) -> dict:
    """This environment with a private HOME, no API keys or settings, and no way off the machine.
    Byte-code caches are written as on a user's machine (a PYTHONDONTWRITEBYTECODE=1 here would
    make every run compile every module from source)."""
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and not k.startswith(("NANOCLAW_", "NANOBOT_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = DEAD_PROXY
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "HOME": str(home), **extra}


def run(cmd, env=None, cwd=None):
    """Run a set-up step quietly; RuntimeError with its last error line if it fails."""
    done = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise RuntimeError(next((ln for ln in reversed(lines) if "rror" in ln), lines[-1]))


def nanoclaw_setup(tmp: Path, url: str):
    """Onboard (full config.yaml and workspace), then select the fake server and model."""
    import yaml
    env = user_env(tmp / "nanoclaw-user", NANOCLAW_HOME=str(tmp / "nanoclaw-user" / ".nanoclaw"))
    prog = [sys.executable, str(ROOT / "nanoclaw.py")]
    run(prog + ["onboard"], env, tmp)
    path = Path(env["NANOCLAW_HOME"]) / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["providers"]["custom"]["api_base"] = url
    cfg["agents"]["defaults"]["model"] = "fake-model"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return prog, env


def nanobot_setup(tmp: Path, url: str):
    """Install nanobot the first time, onboard it, then select the fake server as `custom`."""
    marker, exe = NANOBOT_VENV / f".installed-{NANOBOT}", NANOBOT_VENV / "bin" / "nanobot"
    if not (marker.exists() and exe.exists()):
        print(f"installing {NANOBOT} into bench/.nanobot-venv (first run only)...", flush=True)
        shutil.rmtree(NANOBOT_VENV, ignore_errors=True)
        try:
            run([sys.executable, "-m", "venv", str(NANOBOT_VENV)])
            run([str(NANOBOT_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", NANOBOT])
        except RuntimeError:
            shutil.rmtree(NANOBOT_VENV, ignore_errors=True)
            raise
        marker.touch()
    # tiktoken would download cl100k_base from the internet: the dead proxy refuses it at once.
    env = user_env(tmp / "nanobot-user", TIKTOKEN_CACHE_DIR=str(tmp / "tiktoken"))
    run([str(exe), "onboard"], env, tmp)
    path = tmp / "nanobot-user" / ".nanobot" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["providers"]["custom"].update(apiKey="fake-key", apiBase=url)
    cfg["agents"]["defaults"].update(model="fake-model", provider="custom")
    # Background jobs that would call out (the agent only runs them in gateway mode): off.
    cfg["agents"]["defaults"].setdefault("dream", {})["enabled"] = False
    cfg.setdefault("gateway", {}).setdefault("heartbeat", {})["enabled"] = False
    cfg.setdefault("transcription", {})["enabled"] = False
    path.write_text(json.dumps(cfg, indent=2))
    return [str(exe)], env


def table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def report(runs, nc, nc_warning, nb, nb_warning):
    rows = [["command", "nanoclaw median s", "nanoclaw peak MB", "nanobot median s",
             "nanobot peak MB", "time ratio", "memory ratio"]]
    for label, _ in COMMANDS:
        (s, mb), other = nc[label], nb.get(label)
        rows.append([label, f"{s:.3f}", f"{mb:.1f}"] + (["-"] * 4 if not other else [
            f"{other[0]:.3f}", f"{other[1]:.1f}", f"{s / other[0]:.2f}x", f"{mb / other[1]:.2f}x"]))
    print(f"\n{runs} timed runs per command after one warm-up; peak = highest ru_maxrss\n")
    print(table(rows))
    for who, warning in (("nanoclaw", nc_warning), ("nanobot", nb_warning)):
        if warning:
            print(f"WARNING  {who}: {warning}")
    checks = []
    for label in ("--help", "status"):
        s, mb = nc[label]
        checks += [(s <= 0.12, f"{label:<9} median {s:.3f} s <= 0.12 s"),
                   (mb <= 25, f"{label:<9} peak {mb:.1f} MB <= 25 MB")]
    if nb and not nb_warning:
        (s, mb), (other_s, other_mb) = nc["agent -m"], nb["agent -m"]
        checks += [(s <= 0.45 * other_s, f"agent -m  time {s / other_s:.2f}x nanobot's <= 0.45x"),
                   (mb <= 0.5 * other_mb, f"agent -m  memory {mb / other_mb:.2f}x nanobot's <= 0.5x")]
    else:
        checks.append((None, "agent -m  ratios to nanobot need a nanobot run that reached the server"))
    print("\ntargets")
    for ok, text in checks:
        print(f"  {'n/a ' if ok is None else 'PASS' if ok else 'MISS'}  {text}")


def exec_cost(runs: int) -> dict:
    """{sandbox mode: (median seconds, last output)} of the real exec tool running `true`."""
    import dataclasses
    from lib.config import load_config
    from lib.tools import Context, default_registry
    call, results = default_registry().call, {}
    with tempfile.TemporaryDirectory(prefix="nanoclaw-exec-") as tmp:
        for mode in ("off", "bwrap"):
            path = Path(tmp) / f"{mode}.yaml"
            path.write_text(f"agents: {{defaults: {{workspace: '{tmp}/ws'}}}}\ntools: "
                            f"{{restrict_to_workspace: false, exec: {{sandbox: {mode}}}}}\n")
            cfg = dataclasses.replace(load_config(str(path)), home=Path(tmp))
            cfg.workspace.mkdir(exist_ok=True)
            ctx, times = Context(cfg, cfg.workspace), []
            for _ in range(runs + 1):                       # the first: warm-up (and bwrap's probe)
                start = time.perf_counter()
                out = call("exec", {"command": "true"}, ctx)
                times.append(time.perf_counter() - start)
            results[mode] = (statistics.median(times[1:]), out)
    return results


def report_exec(results: dict):
    print(f"\nexec of `true` through the exec tool, median of {EXEC_RUNS} runs after one warm-up")
    (off, _), (boxed, out) = results["off"], results["bwrap"]
    print(f"  no sandbox   {off * 1000:6.1f} ms")
    print(f"  bubblewrap   {boxed * 1000:6.1f} ms  (+{(boxed - off) * 1000:.1f} ms)"
          if out == "[exit code 0]" else f"  bubblewrap   n/a: {out}")


def ledger_cost(calls: int = 2000) -> tuple[float, float]:
    """Microseconds per model call that usage.Metered adds (ledger line, totals, limit check) to
    a scripted model that answers at once: (without limits, with a daily token limit)."""
    import dataclasses
    from lib.config import load_config
    from lib.usage import Metered
    from tests.fakes.scripted import ScriptedProvider
    out = []
    with tempfile.TemporaryDirectory(prefix="nanoclaw-usage-") as tmp:
        for limits in ("", "limits: {daily_tokens: 1000000000}\n"):
            path = Path(tmp) / "config.yaml"
            path.write_text(limits)
            cfg = dataclasses.replace(load_config(str(path)), home=Path(tmp) / (limits and "l" or "n"))
            bare = ScriptedProvider(*["ok"] * (2 * calls + 2))
            metered = Metered(cfg, [("m", "scripted", bare)])
            msgs = [{"role": "user", "content": "hello " * 50}]
            costs = []
            for provider in (bare, metered):
                start = time.perf_counter()
                for _ in range(calls):
                    provider.complete(msgs)
                costs.append((time.perf_counter() - start) / calls)
            out.append((costs[1] - costs[0]) * 1e6)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="timed runs per command (default 10)")
    ap.add_argument("--no-nanobot", action="store_true", help="measure nanoclaw only")
    opts = ap.parse_args()
    nb, nb_warning, note = {}, None, "nanobot skipped (--no-nanobot)"
    with FakeOpenAI() as server, tempfile.TemporaryDirectory(prefix="nanoclaw-bench-") as tmp:
        try:
            nc, nc_warning = bench(*nanoclaw_setup(Path(tmp), server.url), tmp, opts.runs, server)
        except RuntimeError as e:
            print(f"nanoclaw failed: {e}", file=sys.stderr)
            return 1
        if not opts.no_nanobot:
            try:
                prog, env = nanobot_setup(Path(tmp), server.url)
            except (RuntimeError, OSError) as e:
                note = f"nanobot-ai not available: {e}"
            else:
                try:
                    (nb, nb_warning), note = bench(prog, env, tmp, opts.runs, server), None
                except RuntimeError as e:
                    note = f"nanobot failed: {e}"
    report(opts.runs, nc, nc_warning, nb, nb_warning)
    report_exec(exec_cost(EXEC_RUNS))
    plain, limited = ledger_cost()
    print(f"\nusage ledger, added to each model call (target: well under 1 ms)\n"
          f"  no limits        {plain:6.0f} us\n  a daily limit    {limited:6.0f} us")
    if note:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
