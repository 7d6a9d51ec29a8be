"""MCP servers as tools (SPEC §12), against real servers built with the official SDK
(tests/fakes/mcp_server.py) over stdio, Streamable HTTP and the older HTTP+SSE."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lib import mcp, sandbox
from lib.agent.loop import agent_tools
from lib.config import load_config
from lib.mail import post_inbox
from lib.tools import Context
from tests.conftest import ROOT, model_yaml, replies, run_cli, wait_for, write_config

FAKE = ROOT / "tests" / "fakes" / "mcp_server.py"


def stdio(mode="stdio", **settings) -> dict:
    """A server entry running the fake server (mode stdio, or exit: it dies at once)."""
    return {"command": sys.executable, "args": [str(FAKE), mode], **settings}


def mcp_names(registry) -> set:
    return {s["function"]["name"] for s in registry.schemas() if s["function"]["name"].startswith("mcp_")}


@pytest.fixture
def tools(home):
    """tools(servers) -> (registry, context) as a conversation gets them, with these servers in
    tools.mcp_servers; the servers are stopped after the test."""
    made = []

    def make(servers, **more):
        write_config(home, json.dumps({"tools": {"mcp_servers": servers, **more}}))  # JSON is YAML
        cfg = load_config()
        cfg.workspace.mkdir(parents=True, exist_ok=True)
        registry = agent_tools(cfg)
        made.append(registry.more)
        return registry, Context(cfg, cfg.workspace)
    yield make
    for servers in made:
        servers.stop()


@pytest.fixture
def http_server():
    """http_server(mode[, port]) starts the fake server over HTTP (streamable-http or sse) and
    returns (port, process)."""
    procs = []

    def start(mode, port=0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = port or s.getsockname()[1]
        procs.append(subprocess.Popen([sys.executable, str(FAKE), mode, str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(listening, what=f"the MCP server on port {port}")
        return port, procs[-1]
    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(mcp, "FIRST_RETRY", 0.2)
    monkeypatch.setattr(mcp, "MAX_RETRY", 0.4)


def test_a_stdio_servers_tools_reach_the_model_with_its_schema(tools):
    registry, ctx = tools({"fake": stdio()})
    schemas = {s["function"]["name"]: s["function"] for s in registry.schemas()}
    assert {"read_file", "exec", "mcp_fake_echo", "mcp_fake_env", "mcp_fake_grow"} <= set(schemas)
    echo = schemas["mcp_fake_echo"]
    assert echo["description"] == "Says the text back."
    assert echo["parameters"]["properties"]["text"]["type"] == "string"
    assert echo["parameters"]["required"] == ["text"]
    assert registry.call("mcp_fake_echo", '{"text": "hi"}', ctx) == "echo: hi"


def test_an_is_error_result_comes_back_as_an_error(tools):
    registry, ctx = tools({"fake": stdio()})
    registry.schemas()
    out = registry.call("mcp_fake_fail", {"why": "the disk is full"}, ctx)
    assert out.startswith("Error: ") and "it broke: the disk is full" in out


def test_text_is_returned_other_content_named_and_the_size_bounded(tools):
    registry, ctx = tools({"fake": stdio()})
    assert registry.call("mcp_fake_picture", {}, ctx) == "here it is\n[image image/png, not shown]"
    out = registry.call("mcp_fake_big", {"size": mcp.MAX_RESULT + 1234}, ctx)
    assert out == "x" * mcp.MAX_RESULT + "\n[... 1234 more characters cut]"



def test_a_stdio_answer_longer_than_max_line_is_never_held_whole(tools, monkeypatch, caplog):
    """A server (or what it relays: a web page) answering with one huge line cannot fill the
    Pi's memory: past MAX_LINE bytes the line is dropped as it arrives, the call gets an error
    once the line has gone by, and the server goes on."""
    monkeypatch.setattr(mcp, "MAX_LINE", 100_000, raising=False)
    registry, ctx = tools({"fake": stdio(tool_timeout=20)})
    registry.schemas()
    out = registry.call("mcp_fake_big", {"size": 300_000}, ctx)
    assert out.startswith("Error: ") and "longer than 100000 bytes" in out, out[:300]
    assert "longer than 100000 bytes" in caplog.text
    assert registry.call("mcp_fake_echo", {"text": "still here"}, ctx) == "echo: still here"
    # a server that writes its answer's id last (the TypeScript SDK): the error comes once the
    # line has gone by, not after tool_timeout
    registry, ctx = tools({"ts": {"command": sys.executable, "tool_timeout": 60,
                                  "args": [str(ROOT / "tests" / "fakes" / "mcp_id_last.py")]}})
    registry.schemas()
    assert registry.call("mcp_ts_big", {"size": 10}, ctx) == "x" * 10
    ctx.deadline = time.monotonic() + 20                    # far before tool_timeout
    out = registry.call("mcp_ts_big", {"size": 300_000}, ctx)
    assert "longer than 100000 bytes" in out, out[:300]


def test_bad_arguments_are_an_error_the_model_can_read(tools):
    registry, ctx = tools({"fake": stdio()})
    registry.schemas()
    assert registry.call("mcp_fake_echo", "{not json", ctx).startswith(
        "Error: the arguments for mcp_fake_echo are not valid JSON")
    out = registry.call("mcp_fake_echo", {"text": 5}, ctx)
    assert out.startswith("Error: ") and "text" in out


def test_a_slow_tool_past_its_timeout_is_an_error_and_the_server_goes_on(tools):
    registry, ctx = tools({"fake": stdio(tool_timeout=1)})
    registry.schemas()
    assert registry.call("mcp_fake_slow", {"seconds": 60}, ctx) == \
        "Error: mcp_fake_slow gave no answer within 1 s (tools.mcp_servers.fake.tool_timeout)"
    assert registry.call("mcp_fake_echo", {"text": "still here"}, ctx) == "echo: still here"


def test_the_turns_deadline_bounds_a_call_too(tools):
    import time
    registry, ctx = tools({"fake": stdio()})         # tool_timeout: 30 s
    registry.schemas()
    ctx.deadline = time.monotonic() + 1
    out = registry.call("mcp_fake_slow", {"seconds": 60}, ctx)
    assert out.startswith("Error: mcp_fake_slow gave no answer within")
    assert "the turn ran out of time, agents.defaults.turn_timeout_s" in out
    ctx.deadline = time.monotonic() - 1
    assert "ran out of time" in registry.call("mcp_fake_echo", {"text": "x"}, ctx)


def test_a_server_that_never_answers_initialize_is_down_not_waited_for(tools, monkeypatch):
    monkeypatch.setattr(mcp, "START_TIMEOUT", 1)
    registry, ctx = tools({"mute": {"command": "sleep", "args": ["60"]}})

    def failed():
        out = registry.call("mcp_mute_echo", {}, ctx)
        return None if "is starting" in out else out
    out = wait_for(failed, what="the first start to fail")
    assert out.startswith("Error: MCP server mute is down: ") and "Timed out" in out, out



def test_the_first_turn_waits_for_starting_servers_no_longer_than_its_deadline(tools):
    import threading
    import time
    from lib.agent.loop import run_turn
    from tests.fakes.scripted import ScriptedProvider
    registry, ctx = tools({"mute": {"command": "sleep", "args": ["60"]}})  # never initializes
    ctx.deadline = time.monotonic() + 1          # START_TIMEOUT (60 s) is far longer
    out = []
    turn = threading.Thread(target=lambda: out.append(run_turn(
        [{"role": "user", "content": "hi"}], ScriptedProvider("hello"), registry, ctx, 5)),
        daemon=True)
    turn.start()
    turn.join(20)
    assert out, "the turn waited for the starting MCP server past its deadline"
    assert "I ran out of time" in out[0][-1]["content"]

def test_enabled_tools_takes_the_servers_names_or_ours(tools):
    registry, ctx = tools({"fake": stdio(enabled_tools=["echo", "mcp_fake_env"])})
    assert mcp_names(registry) == {"mcp_fake_echo", "mcp_fake_env"}
    assert registry.call("mcp_fake_fail", {"why": "x"}, ctx) == \
        "Error: MCP server fake has no tool 'mcp_fake_fail'; its tools: mcp_fake_echo, mcp_fake_env"


def test_two_servers_never_offer_the_model_one_name_twice(tools, caplog):
    registry, ctx = tools({"x.y": stdio(), "x_y": stdio()})        # both are mcp_x_y_*
    names = [s["function"]["name"] for s in registry.schemas()]
    assert len(names) == len(set(names)) and "mcp_x_y_echo" in names
    assert "left out (name taken" in caplog.text
    assert registry.call("mcp_x_y_echo", {"text": "once"}, ctx) == "echo: once"


def test_a_name_no_server_has_says_so(tools):
    registry, ctx = tools({"fake": stdio()})
    registry.schemas()
    assert registry.call("mcp_other_echo", {}, ctx) == \
        "Error: there is no tool named 'mcp_other_echo': no MCP server in tools.mcp_servers has it"


def test_a_server_that_exits_at_once_is_logged_and_restarted_with_back_off(tools, fast_retry, caplog):
    with caplog.at_level(logging.WARNING, logger="lib.mcp"):
        registry, ctx = tools({"dead": stdio("exit"), "fake": stdio()})
        assert "mcp_fake_echo" in mcp_names(registry)
        assert not any(n.startswith("mcp_dead_") for n in mcp_names(registry))
        out = registry.call("mcp_dead_echo", {"text": "x"}, ctx)
        assert out.startswith("Error: MCP server dead is down: the server exited; next try at ")
        assert out.endswith("; its tools come when it answers")

        def downs():
            said = [r.getMessage() for r in caplog.records if "MCP server dead is down" in r.getMessage()]
            return said if len(said) >= 3 else None
        said = wait_for(downs, what="three failed starts")
    assert "Its last lines on stderr:\n    fake mcp server starting (exit)\n    fatal: the fake " \
           "server was told to exit at once" in said[0]
    assert [m.split("starting it again in ")[1].split(" s")[0] for m in said[:3]] == ["0.2", "0.4", "0.4"]
    assert registry.call("mcp_fake_echo", {"text": "fine"}, ctx) == "echo: fine"    # the other one


def test_a_server_that_dies_is_restarted_and_its_tools_come_back(tools, fast_retry, caplog):
    registry, ctx = tools({"fake": stdio()})
    registry.schemas()
    pid = int(registry.call("mcp_fake_pid", {}, ctx))
    with caplog.at_level(logging.WARNING, logger="lib.mcp"):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: any("MCP server fake is down: the server exited" in r.getMessage()
                             for r in caplog.records), what="the death noticed")

    def new_pid():
        out = registry.call("mcp_fake_pid", {}, ctx)
        return out if out.isdigit() and int(out) != pid else None
    wait_for(new_pid, what="the restarted server")


def test_a_dead_servers_first_retry_comes_within_5_s_of_its_death(tools, tmp_path):
    """SPEC §12, with the real delays: each start of the server notes its time in a file."""
    starts = tmp_path / "starts"
    note = (f"import os, sys, time\nopen({str(starts)!r}, 'a').write(f'{{time.time()}}\\n')\n"
            f"os.execv(sys.executable, [sys.executable, {str(FAKE)!r}, 'stdio'])")
    registry, ctx = tools({"fake": {"command": sys.executable, "args": ["-c", note]}})
    pid = int(registry.call("mcp_fake_pid", {}, ctx))
    died = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(starts.read_text().split()) == 2, timeout=10, what="the first retry")
    after = float(starts.read_text().split()[1]) - died
    assert after < 5, f"the first retry came {after:.2f} s after the death"


def test_list_changed_refreshes_the_tools_without_a_restart(tools):
    registry, ctx = tools({"fake": stdio()})
    assert "mcp_fake_extra" not in mcp_names(registry)
    pid = registry.call("mcp_fake_pid", {}, ctx)
    assert registry.call("mcp_fake_grow", {}, ctx) == "grown"
    wait_for(lambda: "mcp_fake_extra" in mcp_names(registry), what="the new tool listed")
    assert registry.call("mcp_fake_extra", {}, ctx) == "extra here"
    assert registry.call("mcp_fake_pid", {}, ctx) == pid


def test_a_stdio_server_gets_only_its_own_environment(tools, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-secret")
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:secret")
    monkeypatch.setenv("FAKE_LEAK", "never")
    registry, ctx = tools({"fake": stdio(env={"FAKE_MINE": "yes"})})
    registry.schemas()
    got = registry.call("mcp_fake_env", {}, ctx).split()
    assert "FAKE_MINE=yes" in got and "secret" not in " ".join(got)
    # SPEC §12, plus what Python itself sets when no locale is given (PEP 538)
    assert {g.split("=")[0] for g in got} <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM",
                                              "LC_CTYPE", "FAKE_MINE"}


@pytest.mark.skipif(bool(sandbox.problem()), reason="bubblewrap does not work here")
def test_sandbox_true_runs_the_server_in_the_exec_sandbox(tools, home):
    # Python, the venv and the server's script may be under a home or /tmp, which the sandbox hides
    shown = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), str(ROOT.resolve())]
    registry, ctx = tools({"boxed": stdio(sandbox=True), "free": stdio()}, exec={"expose": shown})
    registry.schemas()
    (ctx.workspace / "note.txt").write_text("x")
    secret, note = str(home / "config.yaml"), str(ctx.workspace / "note.txt")
    assert registry.call("mcp_boxed_where", {"path": secret}, ctx) == f"missing in {ctx.workspace}"
    assert registry.call("mcp_boxed_where", {"path": note}, ctx) == f"exists in {ctx.workspace}"
    assert registry.call("mcp_free_where", {"path": secret}, ctx) == f"exists in {ctx.workspace}"


def test_a_sandboxed_server_without_bubblewrap_is_down_and_says_why(tools, monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no" / "bwrap"))
    registry, ctx = tools({"boxed": stdio(sandbox=True)})
    assert mcp_names(registry) == set()
    assert registry.call("mcp_boxed_echo", {"text": "x"}, ctx).startswith(
        f"Error: MCP server boxed is down: tools.mcp_servers.boxed.sandbox is true, but "
        f"{tmp_path / 'no' / 'bwrap'} is not installed: install bubblewrap")


@pytest.mark.parametrize("mode, path", [("streamable-http", "/mcp"), ("sse", "/sse")])
def test_http_servers_get_the_configured_headers_and_old_sse_ones_the_fallback(
        tools, http_server, mode, path):
    port, _ = http_server(mode)
    registry, ctx = tools({"web": {"url": f"http://127.0.0.1:{port}{path}",
                                   "headers": {"X-Token": "t0k"}}})
    assert "mcp_web_echo" in mcp_names(registry)
    assert registry.call("mcp_web_echo", {"text": mode}, ctx) == f"echo: {mode}"
    assert registry.call("mcp_web_header", {"name": "x-token"}, ctx) == "t0k"


def test_an_http_server_that_dies_fails_the_call_at_once_and_is_reached_again(
        tools, http_server, fast_retry, caplog):
    port, proc = http_server("streamable-http")
    registry, ctx = tools({"web": {"url": f"http://127.0.0.1:{port}/mcp"}})
    assert registry.call("mcp_web_echo", {"text": "a"}, ctx) == "echo: a"
    with caplog.at_level(logging.WARNING, logger="lib.mcp"):
        proc.kill()
        proc.wait()
        out = registry.call("mcp_web_echo", {"text": "b"}, ctx)      # tool_timeout: 30 s
        assert out.startswith("Error: ") and "gave no answer" not in out
        wait_for(lambda: any("MCP server web is down: " in r.getMessage() for r in caplog.records),
                 what="the death noticed")
    http_server("streamable-http", port)
    wait_for(lambda: registry.call("mcp_web_echo", {"text": "c"}, ctx) == "echo: c",
             what="the server reached again")


def test_an_http_server_that_is_not_there_is_down(tools):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # nobody listens there once it is closed
    registry, ctx = tools({"gone": {"url": f"http://127.0.0.1:{port}/mcp"}})
    assert mcp_names(registry) == set()
    out = registry.call("mcp_gone_echo", {}, ctx)
    assert out.startswith("Error: MCP server gone is down: http: ConnectError: ") and "; sse: " in out


def test_a_server_needs_a_command_or_a_url(home):
    from lib.errors import ConfigError
    write_config(home, "tools:\n  mcp_servers:\n    odd: {args: [x]}\n")
    with pytest.raises(ConfigError, match=r"tools.mcp_servers.odd needs either command .* or url"):
        agent_tools(load_config())
    r = run_cli("status")
    assert "✗ odd" in r.stdout and "needs either command" in r.stdout


def _mcp_config(llm) -> str:
    servers = {"fake": stdio(), "dead": stdio("exit")}
    return model_yaml(llm, groq=None) + "tools: " + json.dumps({"mcp_servers": servers}) + "\n"


def test_a_gateway_turn_calls_an_mcp_tool_and_status_names_a_down_server(gateway, llm, home):
    write_config(home, _mcp_config(llm))
    llm.script({"tool_calls": [{"name": "mcp_fake_echo", "arguments": {"text": "from the model"}}]},
               "The server said it.")
    gateway.start()
    post_inbox(home, {"channel": "local", "chat_id": "t", "text": "use the echo tool"})
    assert wait_for(lambda: replies(home), what="the reply")[0]["text"] == "The server said it."
    first, second = llm.chat_requests[:2]
    echo = next(t["function"] for t in first["tools"] if t["function"]["name"] == "mcp_fake_echo")
    assert echo["parameters"]["required"] == ["text"]
    assert not any(t["function"]["name"].startswith("mcp_dead_") for t in first["tools"])
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": second["messages"][-1]["tool_call_id"],
                                      "name": "mcp_fake_echo", "content": "echo: from the model"}

    servers = run_cli("status").stdout.split("\nmcp servers\n")[1].splitlines()
    assert servers[0].startswith("  ✓ fake       up since ") and " 10 tool(s)  [" in servers[0]
    assert servers[1].startswith("  ✗ dead       down: the server exited; next try at ")
    assert "fatal: the fake server was told to exit at once" in gateway.logs()
    assert gateway.term() == 0
    assert "not running (the gateway starts it)" in run_cli("status").stdout


def test_agent_m_starts_the_servers_when_the_turn_needs_them(llm, home):
    write_config(home, _mcp_config(llm))
    llm.script({"tool_calls": [{"name": "mcp_fake_echo", "arguments": {"text": "cli"}}]}, "Done.")
    r = run_cli("agent", "-m", "go")
    assert (r.returncode, r.stdout.strip()) == (0, "Done."), r.stderr
    assert llm.chat_requests[1]["messages"][-1]["content"] == "echo: cli"


def test_help_status_and_a_gateway_without_servers_import_no_mcp(home, llm):
    """A feature that is off costs nothing: `mcp` (and its asyncio) stay out of sys.modules."""
    check = ("import sys\nfrom lib.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
             "    pass\nmain(['status'])\n{more}print('MCP', 'mcp' in sys.modules)\n")
    write_config(home, _mcp_config(llm))        # servers configured: status only reads their state
    out = subprocess.run([sys.executable, "-c", check.format(more="")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60).stdout
    assert "mcp servers" in out and out.rstrip().endswith("MCP False")
    write_config(home, model_yaml(llm, groq=None))
    gateway = ("from lib.config import load_config\nfrom lib.gateway import Gateway\n"
               "g = Gateway(load_config())\ng.build()\nassert g.agent.tools.more is None\n")
    out = subprocess.run([sys.executable, "-c", check.format(more=gateway)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.stdout.rstrip().endswith("MCP False"), out.stderr
