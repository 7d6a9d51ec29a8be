#!/usr/bin/env python3
"""The gateway as a service: ready time, idle memory and CPU, inbox -> outbox latency and
throughput with an instant fake model; nanobot's gateway idle figures beside them.

Usage: python bench/gateway_bench.py [--idle SECONDS] [--messages N] [--no-nanobot]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench import nanobot_setup, table, user_env  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

def cpu_seconds(pid: int) -> float:
    """CPU time of every thread, in nanoseconds from schedstat (the tick counts in /proc/PID/stat
    are 10 ms coarse: too coarse for an idle process)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle(pid: int, seconds: float) -> tuple[float, float]:
    """(RSS MB at the end, CPU % over the window) of a process left alone."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    return rss_mb(pid), 100 * used / (time.monotonic() - start)


def wakeups(pid: int) -> int:
    """Context switches of every thread so far: each is a wake-up (or a preemption)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_latency(gw: "NanoclawGateway", n: int) -> list[float]:
    """One request at a time through POST /v1/chat/completions with the openai client."""
    import openai
    from lib.config import load_config
    token = load_config(str(gw.home / "config.yaml")).gateway.token
    client = openai.OpenAI(api_key=token, base_url=f"http://127.0.0.1:{gw.port}/v1", max_retries=0)
    out = []
    for i in range(n):
        start = time.perf_counter()
        client.chat.completions.create(model="nanoclaw", messages=[{"role": "user", "content": f"api {i}"}])
        out.append(time.perf_counter() - start)
    return sorted(out)


class NanoclawGateway:
    def __init__(self, tmp: Path, url: str, extra_config: str = "", port: int | None = None):
        self.home = tmp / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port      # 0: no HTTP server
        (self.home / "config.yaml").write_text(
            f"providers:\n  custom: {{api_base: '{url}'}}\nagents:\n  defaults: {{model: fake-model}}\n"
            f"heartbeat: {{enabled: false}}\ngateway: {{port: {self.port}}}\n{extra_config}")
        self.env = user_env(tmp / "user", NANOCLAW_HOME=str(self.home))

    def start(self) -> float:
        """Seconds from exec to READY=1 (sd_notify, as systemd sees it)."""
        path = str(self.home / "notify.sock")
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(30)
        start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "nanoclaw.py"), "gateway"],
                                     env={**self.env, "NOTIFY_SOCKET": path}, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sock.recv(64) != b"READY=1":
            pass
        sock.close()
        return time.perf_counter() - start

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)

    def drop(self, name: str, text: str):
        tmp = self.home / "inbox" / "tmp" / f"{name}.json"
        tmp.write_text(json.dumps({"channel": "local", "chat_id": "bench", "text": text}))
        os.rename(tmp, self.home / "inbox" / "new" / tmp.name)

    def replies(self) -> int:
        return sum(1 for _ in os.scandir(self.home / "outbox" / "sent"))


def latency(gw: NanoclawGateway, n: int) -> list[float]:
    """One message at a time: drop it, wait for its reply file."""
    out = []
    for i in range(n):
        want = gw.replies() + 1
        start = time.perf_counter()
        gw.drop(f"lat{i:05d}", f"ping {i}")
        while gw.replies() < want:
            time.sleep(0.0005)
        out.append(time.perf_counter() - start)
    return out


def throughput(gw: NanoclawGateway, n: int) -> float:
    """Messages per second for a burst of n dropped at once."""
    want = gw.replies() + n
    start = time.perf_counter()
    for i in range(n):
        gw.drop(f"burst{i:05d}", f"burst {i}")
    while gw.replies() < want:
        time.sleep(0.002)
    return n / (time.perf_counter() - start)


def model_round_trip(url: str, n: int = 50) -> float:
    """What the fake model itself costs per call through the SDK (median, seconds)."""
    import openai
    client = openai.OpenAI(api_key="x", base_url=url, max_retries=0)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nanobot_idle(tmp: Path, url: str, seconds: float):
    prog, env = nanobot_setup(tmp, url)
    proc = subprocess.Popen(prog + ["gateway"], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)                   # no readiness signal: give it time to settle
        if proc.poll() is not None:
            raise RuntimeError(f"nanobot gateway exited {proc.returncode}")
        return idle(proc.pid, seconds)
    finally:
        proc.terminate()
        proc.wait(10)


def channels_idle(tmp: Path, url: str, seconds: float) -> tuple[float, float, str]:
    """Idle RSS and CPU with Telegram, Slack, Discord and Email enabled against the fakes
    (Email only where dovecot is installed)."""
    import json as _json
    from contextlib import ExitStack

    from tests.fakes.discord_server import FakeDiscord
    from tests.fakes.slack_server import FakeSlack
    from tests.fakes.telegram_server import TOKEN, FakeTelegram
    with ExitStack() as stack:
        tg, sl = stack.enter_context(FakeTelegram()), stack.enter_context(FakeSlack())
        dc = stack.enter_context(FakeDiscord(token="t", heartbeat_ms=41250))   # Discord's own
        channels = {
            "telegram": {"enabled": True, "token": TOKEN, "api_base": tg.api_base, "allow_from": ["1"]},
            "slack": {"enabled": True, "bot_token": sl.bot_token, "app_token": sl.app_token,
                      "api_base": sl.api_base, "allow_from": ["U1"]},
            "discord": {"enabled": True, "token": "t", "api_base": dc.api_base, "allow_from": ["1"]}}
        note = "telegram, slack, discord, email"
        try:
            from tests.fakes.mailserver import PASSWORD, USER, Dovecot, SmtpRecorder
            imap = stack.enter_context(Dovecot())
            smtp = stack.enter_context(SmtpRecorder(imap.dir / "cert.pem", imap.dir / "key.pem"))
            channels["email"] = {
                "enabled": True, "consent_granted": True, "imap_host": "127.0.0.1",
                "imap_port": imap.imaps_port, "imap_username": USER, "imap_password": PASSWORD,
                "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_username": USER,
                "smtp_password": PASSWORD, "from_address": USER, "ca_file": str(imap.ca),
                "allow_from": ["owner@example.com"]}
        except Exception as e:          # no dovecot here: measure the other three
            note = f"telegram, slack, discord (email not measured: {e})"
        gw = NanoclawGateway(tmp, url, "channels: " + _json.dumps(channels) + "\n")
        gw.start()
        time.sleep(5)                   # connections made, first polls sent
        rss, cpu = idle(gw.proc.pid, seconds)
        gw.stop()
        return rss, cpu, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=60, help="idle window in seconds (default 60)")
    ap.add_argument("--messages", type=int, default=300, help="latency samples (default 300)")
    ap.add_argument("--no-nanobot", action="store_true")
    opts = ap.parse_args()
    with FakeOpenAI() as server, tempfile.TemporaryDirectory(prefix="nanoclaw-gw-") as tmp:
        gw = NanoclawGateway(Path(tmp) / "nanoclaw", server.url)
        ready = []
        for _ in range(5):
            ready.append(gw.start())
            gw.stop()
        gw.start()
        woke = wakeups(gw.proc.pid)
        rss, cpu = idle(gw.proc.pid, opts.idle)
        woke = wakeups(gw.proc.pid) - woke
        first = latency(gw, 1)[0]           # loads the model SDK: measured on its own
        lat = sorted(latency(gw, opts.messages))
        api = api_latency(gw, min(opts.messages, 200))
        rate = throughput(gw, 500)
        busy_rss = rss_mb(gw.proc.pid)
        gw.stop()
        off = NanoclawGateway(Path(tmp) / "web-off", server.url, port=0)
        off.start()
        off_woke = wakeups(off.proc.pid)
        off_rss, off_cpu = idle(off.proc.pid, opts.idle)
        off_woke = wakeups(off.proc.pid) - off_woke
        off.stop()
        model = model_round_trip(server.url)
        ch_rss, ch_cpu, ch_note = channels_idle(Path(tmp) / "channels", server.url, opts.idle)
        nb, note = None, "nanobot skipped (--no-nanobot)"
        if not opts.no_nanobot:
            try:
                nb, note = nanobot_idle(Path(tmp) / "nanobot", server.url, opts.idle), None
            except (RuntimeError, OSError) as e:
                note = f"nanobot gateway not measured: {e}"
        shutil.rmtree(Path(tmp) / "nanoclaw", ignore_errors=True)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rows = [["measure", "nanoclaw", "nanobot", "target"],
            ["ready (READY=1), median of 5", f"{statistics.median(ready):.3f} s", "-", "<= 0.3 s"],
            [f"idle RSS before the first message", f"{rss:.1f} MB",
             f"{nb[0]:.1f} MB" if nb else "-", "<= 30 MB"],
            [f"idle CPU over {opts.idle:.0f} s", f"{cpu:.3f} %", f"{nb[1]:.3f} %" if nb else "-",
             "<= 0.05 %"],
            ["idle RSS and CPU, web page off (port 0)", f"{off_rss:.1f} MB, {off_cpu:.3f} %", "-",
             "web on: within 3 MB"],
            ["idle wake-ups (context switches) per 5 s", f"{woke * 5 / opts.idle:.1f}", "-", "<= 1"],
            ["  the same with the web page off", f"{off_woke * 5 / opts.idle:.1f}", "-", "the same"],
            ["first message (loads the SDK)", f"{first * 1000:.0f} ms", "-", ""],
            [f"inbox -> outbox p50 ({opts.messages} msgs)", f"{p50 * 1000:.1f} ms", "-", ""],
            ["inbox -> outbox p99", f"{p99 * 1000:.1f} ms", "-", ""],
            ["  of which the fake model call", f"{model * 1000:.1f} ms", "-", ""],
            ["  gateway overhead p50", f"{(p50 - model) * 1000:.1f} ms", "-", "<= 15 ms"],
            [f"API request p50 ({len(api)}, openai client)", f"{api[len(api) // 2] * 1000:.1f} ms", "-", ""],
            ["  API added over inbox -> outbox p50", f"{(api[len(api) // 2] - p50) * 1000:.1f} ms", "-",
             "<= 20 ms"],
            ["throughput (500 at once)", f"{rate:.0f} msg/s", "-", ">= 50 msg/s"],
            ["RSS after the burst", f"{busy_rss:.1f} MB", "-", ""],
            ["idle RSS, 4 channels on (fakes)", f"{ch_rss:.1f} MB", "-", "<= 80 MB"],
            [f"idle CPU, 4 channels on, {opts.idle:.0f} s", f"{ch_cpu:.3f} %", "-", "<= 0.1 %"]]
    print(table(rows))
    print(f"\nchannels measured: {ch_note}")
    if note:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
