"""The tool registry, the file tools and message, on real temp dirs through Registry.call."""
import json
import os

import pytest

from lib.config import load_config
from lib.tools import Context, Registry, default_registry, schema
from lib.tools.files import MAX_READ
from tests.conftest import write_config


def make_ctx(home, yaml="", **kw):
    """A Context on a config loaded from `yaml`, with its workspace created."""
    write_config(home, yaml)
    cfg = load_config()
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    return Context(cfg, cfg.workspace, **kw)


def call(ctx, name, **args):
    return default_registry().call(name, args, ctx)


@pytest.fixture
def ctx(home):
    return make_ctx(home)


@pytest.fixture
def ws(ctx):
    return ctx.workspace


# --- registry ---

def sample(ctx, name: str, count: int = 3, loud: bool = False, ratio: float = 0.5,
           tags: list[str] = None):
    """Do a sample thing.

    It has a second paragraph.

    Args:
        name: who to greet
        count (int): how many times
        loud: shout it
    """
    return {"name": name, "count": count, "loud": loud, "ratio": ratio, "tags": tags}


def broken(ctx):
    """Always fails with a bug."""
    raise KeyError("oops")


def test_schema_from_signature_and_docstring():
    fn = schema(sample)["function"]
    assert fn["name"] == "sample"
    assert fn["description"] == "Do a sample thing. It has a second paragraph."
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["name"]
    props = params["properties"]
    assert list(props) == ["name", "count", "loud", "ratio", "tags"]     # ctx is not a parameter
    assert props["name"] == {"type": "string", "description": "who to greet"}
    assert props["count"] == {"type": "integer", "description": "how many times"}
    assert props["loud"] == {"type": "boolean", "description": "shout it"}
    assert props["ratio"] == {"type": "number"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}


def test_default_registry_has_exactly_the_spec_tools():
    reg = default_registry()
    names = {"read_file", "write_file", "edit_file", "list_dir", "exec", "web_search", "web_fetch",
             "message", "spawn", "cron"}
    assert set(reg.tools) == names
    assert {s["function"]["name"] for s in reg.schemas()} == names
    for s in reg.schemas():
        assert s["type"] == "function" and s["function"]["description"]
        for prop in s["function"]["parameters"]["properties"].values():
            assert prop.get("description"), s["function"]["name"]
    assert set(default_registry(exclude=("message",)).tools) == names - {"message"}



@pytest.mark.parametrize("tool, required, optional", [
    ("read_file", ["path"], []), ("write_file", ["path", "content"], []),
    ("edit_file", ["path", "old_text", "new_text"], []), ("list_dir", ["path"], []),
    ("exec", ["command"], ["working_dir"]), ("web_search", ["query"], ["count"]),
    ("web_fetch", ["url"], ["max_chars"]), ("message", ["content"], ["channel", "chat_id", "media"]),
    ("spawn", ["task"], ["label"]),
    ("cron", ["action"], ["message", "every_seconds", "cron_expr", "at", "job_id"])])
def test_each_tool_takes_the_parameters_of_spec_section_7(tool, required, optional):
    """Names and parameters are part of the contract; optional ones are in brackets there."""
    params = schema(default_registry().tools[tool])["function"]["parameters"]
    assert params["required"] == required and list(params["properties"]) == required + optional

def test_unknown_tool_lists_the_available_ones(ctx):
    out = call(ctx, "delete_everything")
    assert out.startswith("Error:") and "delete_everything" in out
    for name in ("read_file", "exec", "message"):
        assert name in out


@pytest.mark.parametrize("arguments", ["{not json", '["a"]', "42", ["a"]])
def test_bad_arguments_are_an_error(ctx, arguments):
    out = Registry([sample]).call("sample", arguments, ctx)
    assert out.startswith("Error:") and "sample" in out


def test_missing_required_parameter(ctx):
    out = Registry([sample]).call("sample", {"count": 2}, ctx)
    assert out.startswith("Error:") and "missing name" in out


def test_unknown_parameter(ctx):
    out = Registry([sample]).call("sample", {"name": "a", "colour": "red"}, ctx)
    assert out.startswith("Error:") and "colour" in out


def test_json_string_arguments_and_coercion(ctx):
    out = Registry([sample]).call("sample", '{"name": 7, "count": "5", "loud": "true", "ratio": "2"}', ctx)
    assert json.loads(out) == {"name": "7", "count": 5, "loud": True, "ratio": 2.0, "tags": None}


def test_empty_arguments_mean_none(ctx):
    assert Registry([broken]).call("broken", "", ctx).startswith("Error:")
    assert json.loads(Registry([sample]).call("sample", {"name": "x"}, ctx))["count"] == 3


def test_whole_float_is_an_int(ctx):
    assert json.loads(Registry([sample]).call("sample", {"name": "a", "count": 5.0}, ctx))["count"] == 5


@pytest.mark.parametrize("field,value", [("count", "five"), ("count", True), ("count", 2.5),
                                         ("count", "2.5"), ("loud", "yes"), ("loud", 1),
                                         ("name", ["a"]), ("tags", "a,b")])
def test_uncoercible_value_is_an_error(ctx, field, value):
    out = Registry([sample]).call("sample", {"name": "a", field: value}, ctx)
    assert out.startswith("Error:") and field in out


def test_unexpected_exception_becomes_error_text(ctx):
    out = Registry([broken]).call("broken", {}, ctx)
    assert out.startswith("Error:") and "KeyError" in out and "oops" in out


# --- files ---

def test_relative_paths_land_in_the_workspace(ctx, ws):
    assert call(ctx, "write_file", path="notes.txt", content="héllo").startswith("Wrote 6 bytes")
    assert (ws / "notes.txt").read_text() == "héllo"
    assert call(ctx, "read_file", path="notes.txt") == "héllo"


def test_write_file_makes_parent_folders_and_replaces(ctx, ws):
    call(ctx, "write_file", path="a/b/c.txt", content="one")
    call(ctx, "write_file", path="a/b/c.txt", content="two")
    assert (ws / "a" / "b" / "c.txt").read_text() == "two"


def test_read_missing_file(ctx):
    out = call(ctx, "read_file", path="nope.txt")
    assert out.startswith("Error:") and "no such file" in out


def test_read_a_folder(ctx, ws):
    (ws / "sub").mkdir()
    out = call(ctx, "read_file", path="sub")
    assert out.startswith("Error:") and "folder" in out and "list_dir" in out


def test_read_binary_file(ctx, ws):
    (ws / "img.bin").write_bytes(b"\x89PNG\r\n\x00\x00\x01" * 10)
    out = call(ctx, "read_file", path="img.bin")
    assert out.startswith("Error:") and "binary" in out and "90 bytes" in out


def test_read_huge_file_is_truncated(ctx, ws):
    (ws / "big.txt").write_text("x" * (MAX_READ + 5000))
    out = call(ctx, "read_file", path="big.txt")
    assert out.startswith("x" * MAX_READ + "\n[truncated:")
    assert str(MAX_READ + 5000) in out


def test_edit_replaces_exactly_once(ctx, ws):
    (ws / "f.txt").write_text("alpha\nbeta\ngamma\n")
    out = call(ctx, "edit_file", path="f.txt", old_text="beta", new_text="BETA\nmore")
    assert not out.startswith("Error:")
    assert (ws / "f.txt").read_text() == "alpha\nBETA\nmore\ngamma\n"


def test_edit_old_text_missing(ctx, ws):
    (ws / "f.txt").write_text("alpha\n")
    out = call(ctx, "edit_file", path="f.txt", old_text="omega", new_text="x")
    assert out.startswith("Error:") and "not found" in out
    assert (ws / "f.txt").read_text() == "alpha\n"


def test_edit_old_text_ambiguous(ctx, ws):
    (ws / "f.txt").write_text("a = 1\na = 1\na = 1\n")
    out = call(ctx, "edit_file", path="f.txt", old_text="a = 1", new_text="a = 2")
    assert out.startswith("Error:") and "3 times" in out
    assert (ws / "f.txt").read_text() == "a = 1\na = 1\na = 1\n"


def test_edit_missing_file(ctx):
    out = call(ctx, "edit_file", path="nope.txt", old_text="a", new_text="b")
    assert out.startswith("Error:") and "no such file" in out


def test_edit_large_file_keeps_all_of_it(ctx, ws):
    body = "".join(f"line {i}\n" for i in range(40000))       # well over MAX_READ
    assert len(body) > 2 * MAX_READ
    (ws / "big.txt").write_text(body + "THE END\n")
    call(ctx, "edit_file", path="big.txt", old_text="THE END", new_text="the end")
    assert (ws / "big.txt").read_text() == body + "the end\n"


def test_list_dir_sorted_with_folders_marked(ctx, ws):
    for name in ("b.txt", "A.txt"):
        (ws / "d" / name).parent.mkdir(exist_ok=True)
        (ws / "d" / name).write_text("")
    (ws / "d" / "zdir").mkdir()
    (ws / "d" / "Cdir").mkdir()
    assert call(ctx, "list_dir", path="d") == "Cdir/\nzdir/\nA.txt\nb.txt"


def test_list_dir_of_dot_is_the_workspace(ctx, ws):
    (ws / "here.txt").write_text("")
    assert "here.txt" in call(ctx, "list_dir", path=".").splitlines()


def test_list_empty_folder(ctx, ws):
    (ws / "empty").mkdir()
    out = call(ctx, "list_dir", path="empty")
    assert not out.startswith("Error:") and "empty" in out


def test_list_missing_folder(ctx):
    out = call(ctx, "list_dir", path="nowhere")
    assert out.startswith("Error:") and "no such folder" in out


def test_list_a_file(ctx, ws):
    (ws / "f.txt").write_text("")
    assert call(ctx, "list_dir", path="f.txt").startswith("Error:")


# --- the workspace boundary ---

SECRET = "top secret\n"


@pytest.fixture
def world(home, tmp_path, monkeypatch):
    """A workspace plus places outside it: a folder, a sibling whose name has the workspace's
    as a prefix, and symlinks inside the workspace that lead out. HOME points outside."""
    ws = make_ctx(home).workspace
    outside = tmp_path / "outside"
    sibling = ws.parent / (ws.name + "2")
    for d in (outside, sibling):
        (d / "sub").mkdir(parents=True)
        (d / "secret.txt").write_text(SECRET)
        (d / "sub" / "inner.txt").write_text("")
    (ws / "link.txt").symlink_to(outside / "secret.txt")
    (ws / "linkdir").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("HOME", str(outside))
    return ws, outside, sibling


# name -> (file path, folder path, where they really are: "outside" or "sibling")
ESCAPES = {
    "absolute": ("{outside}/secret.txt", "{outside}", "outside"),
    "dotdot": ("../../outside/secret.txt", "../../outside", "outside"),
    "dotdot-inside-first": ("sub/../../../outside/secret.txt", "./../../outside", "outside"),
    "tilde": ("~/secret.txt", "~", "outside"),
    "home-var": ("$HOME/secret.txt", "${{HOME}}/sub/..", "outside"),
    "symlink": ("link.txt", "linkdir", "outside"),
    "through-symlinked-dir": ("linkdir/secret.txt", "linkdir/sub", "outside"),
    "sibling-prefix": ("{ws}2/secret.txt", "{ws}2", "sibling"),
}


def escape(world, case):
    ws, outside, sibling = world
    (ws / "sub").mkdir(exist_ok=True)
    file, folder, where = ESCAPES[case]
    fmt = {"ws": ws, "outside": outside}
    return file.format(**fmt), folder.format(**fmt), {"outside": outside, "sibling": sibling}[where]


def restricted(home, on=True):
    return make_ctx(home, f"tools: {{restrict_to_workspace: {'true' if on else 'false'}}}\n",
                    ask=None if on else lambda question: True)      # outside: the owner says yes


def refused(out):
    return out.startswith("Error:") and "outside the workspace" in out


@pytest.mark.parametrize("case", ESCAPES)
def test_read_file_escape(home, world, case):
    file, _, _ = escape(world, case)
    assert refused(call(restricted(home), "read_file", path=file))
    assert call(restricted(home, on=False), "read_file", path=file) == SECRET


@pytest.mark.parametrize("case", ESCAPES)
def test_write_file_escape(home, world, case):
    file, _, real = escape(world, case)
    assert refused(call(restricted(home), "write_file", path=file, content="pwned"))
    assert (real / "secret.txt").read_text() == SECRET
    assert not call(restricted(home, on=False), "write_file", path=file, content="ok").startswith("Error")
    assert (real / "secret.txt").read_text() == "ok"


@pytest.mark.parametrize("case", ESCAPES)
def test_edit_file_escape(home, world, case):
    file, _, real = escape(world, case)
    assert refused(call(restricted(home), "edit_file", path=file, old_text="top", new_text="pwned"))
    assert (real / "secret.txt").read_text() == SECRET
    call(restricted(home, on=False), "edit_file", path=file, old_text="top", new_text="not")
    assert (real / "secret.txt").read_text() == "not secret\n"


@pytest.mark.parametrize("case", ESCAPES)
def test_list_dir_escape(home, world, case):
    _, folder, _ = escape(world, case)
    assert refused(call(restricted(home), "list_dir", path=folder))
    listing = call(restricted(home, on=False), "list_dir", path=folder).splitlines()
    assert "secret.txt" in listing or "inner.txt" in listing


def test_system_files_refused_when_restricted(home):
    assert refused(call(restricted(home), "read_file", path="/etc/passwd"))
    assert refused(call(restricted(home), "list_dir", path="/etc"))
    assert refused(call(restricted(home), "list_dir", path="/"))
    assert "root" in call(restricted(home, on=False), "read_file", path="/etc/passwd")
    assert "passwd" in call(restricted(home, on=False), "list_dir", path="/etc").splitlines()


def test_write_through_symlinked_dir_makes_nothing_outside(home, world):
    ws, outside, _ = world
    assert refused(call(restricted(home), "write_file", path="linkdir/new/deep.txt", content="x"))
    assert not (outside / "new").exists()
    call(restricted(home, on=False), "write_file", path="linkdir/new/deep.txt", content="x")
    assert (outside / "new" / "deep.txt").read_text() == "x"


def test_dangling_symlink_out_is_refused(home, world):
    ws, outside, _ = world
    (ws / "dangling.txt").symlink_to(outside / "created.txt")
    assert refused(call(restricted(home), "write_file", path="dangling.txt", content="x"))
    assert not (outside / "created.txt").exists()


def test_symlink_inside_the_workspace_is_allowed(home, world):
    ws, _, _ = world
    (ws / "real").mkdir()
    (ws / "real" / "note.txt").write_text("inside\n")
    (ws / "alias.txt").symlink_to(ws / "real" / "note.txt")
    (ws / "aliasdir").symlink_to("real", target_is_directory=True)     # relative target
    ctx = restricted(home)
    assert call(ctx, "read_file", path="alias.txt") == "inside\n"
    assert call(ctx, "list_dir", path="aliasdir") == "note.txt"
    assert not call(ctx, "edit_file", path="aliasdir/note.txt", old_text="inside",
                    new_text="edited").startswith("Error")
    assert not call(ctx, "write_file", path="aliasdir/new.txt", content="n").startswith("Error")
    assert (ws / "real" / "note.txt").read_text() == "edited\n"
    assert (ws / "real" / "new.txt").read_text() == "n"


def test_absolute_path_inside_the_workspace_is_allowed(home, world):
    ws, _, _ = world
    ctx = restricted(home)
    assert not call(ctx, "write_file", path=str(ws / "abs.txt"), content="a").startswith("Error")
    assert call(ctx, "read_file", path=str(ws / "abs.txt")) == "a"
    assert call(ctx, "read_file", path="sub/../abs.txt") == "a"


def test_workspace_reached_through_a_symlink(home, tmp_path):
    """agents.defaults.workspace may itself be a symlink; its files are still inside."""
    real = tmp_path / "real-ws"
    real.mkdir()
    (tmp_path / "ws-link").symlink_to(real, target_is_directory=True)
    ctx = make_ctx(home, f"agents: {{defaults: {{workspace: '{tmp_path / 'ws-link'}'}}}}\n"
                         "tools: {restrict_to_workspace: true}\n")
    assert not call(ctx, "write_file", path="a.txt", content="a").startswith("Error")
    assert call(ctx, "read_file", path=str(tmp_path / "ws-link" / "a.txt")) == "a"
    assert call(ctx, "read_file", path=str(real / "a.txt")) == "a"


# --- message ---

def test_message_goes_to_the_current_chat(ctx):
    sent = []
    ctx = Context(ctx.config, ctx.workspace, channel="telegram", chat_id="42",
                  send=lambda *a, **k: sent.append(a))
    out = call(ctx, "message", content="on my way")
    assert sent == [("telegram", "42", "on my way")]
    assert not out.startswith("Error:") and "telegram:42" in out


def test_message_to_another_chat(ctx):
    sent = []
    ctx = Context(ctx.config, ctx.workspace, channel="telegram", chat_id="42",
                  send=lambda *a, **k: sent.append(a))
    call(ctx, "message", content="hi", channel="slack", chat_id="C1")
    call(ctx, "message", content="hi again", chat_id="43")
    assert sent == [("slack", "C1", "hi"), ("telegram", "43", "hi again")]


@pytest.mark.parametrize("content", ["", "  \n"])
def test_message_empty_content(ctx, content):
    sent = []
    ctx = Context(ctx.config, ctx.workspace, send=lambda *a, **k: sent.append(a))
    assert call(ctx, "message", content=content).startswith("Error:")
    assert sent == []


@pytest.mark.parametrize("channel", ["../../escaped", "pigeon"])
def test_message_to_an_unknown_channel_is_an_error_and_writes_nothing(ctx, home, channel):
    from functools import partial
    from lib.mail import post_outbox
    send = partial(post_outbox, home)        # what the gateway hands the agent
    ctx = Context(ctx.config, ctx.workspace, channel="telegram", chat_id="42", send=send)
    out = call(ctx, "message", content="hi", channel=channel, chat_id="1")
    assert out.startswith("Error: unknown channel") and "telegram" in out
    assert not [p for p in home.rglob("*.json") if "escaped" in p.name or "pigeon" in p.name]


def test_message_without_send(ctx):
    out = call(ctx, "message", content="hello")
    assert out.startswith("Error:") and "not available" in out


def test_null_for_a_required_parameter_counts_as_missing(ctx):
    out = Registry([sample]).call("sample", '{"name": null}', ctx)
    assert out.startswith("Error:") and "missing name" in out


# --- message with files ---

def test_message_with_files_queues_their_real_paths_in_the_outbox(ctx, home):
    from functools import partial
    from lib.mail import post_outbox
    (ctx.workspace / "out").mkdir()
    (ctx.workspace / "out" / "report.pdf").write_bytes(b"%PDF-1.4 report")
    (ctx.workspace / "link.png").symlink_to(ctx.workspace / "out" / "report.pdf")
    ctx = Context(ctx.config, ctx.workspace, channel="telegram", chat_id="42",
                  send=partial(post_outbox, home))
    out = call(ctx, "message", content="", media=["out/report.pdf", str(ctx.workspace / "link.png")])
    assert out == "Sent to telegram:42 with 2 file(s)"
    queued = [json.loads(p.read_text()) for p in (home / "outbox" / "new").glob("telegram.*")]
    real = str((ctx.workspace / "out" / "report.pdf").resolve())
    assert [(m["chat_id"], m["text"], m["media"]) for m in queued] == [("42", "", [real, real])]


def test_message_refuses_files_it_may_not_or_cannot_send_and_sends_nothing(ctx, tmp_path):
    sent = []
    ctx = Context(ctx.config, ctx.workspace, send=lambda *a, **k: sent.append(a))
    ws = ctx.workspace
    (tmp_path / "secret.txt").write_text("key")
    (ws / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (ws / "folder").mkdir()
    (ws / "a.txt").write_text("a")
    with open(ws / "huge.bin", "wb") as f:
        f.truncate(50 * 2**20 + 1)                  # sparse: no 50 MB written
    cases = {str(tmp_path / "secret.txt"): "outside the workspace",
             "escape.txt": "outside the workspace", "missing.txt": "no such file: missing.txt",
             "folder": "folder is a folder", "huge.bin": "files over 50 MB cannot be sent"}
    for path, why in cases.items():
        out = call(ctx, "message", content="here", media=["a.txt", path])
        assert out.startswith("Error:") and why in out, out
    out = call(ctx, "message", content="here", media=["a.txt"] * 11)
    assert out.startswith("Error:") and "at most 10 files" in out
    assert call(ctx, "message", content="here", media="a.txt").startswith("Error: message: media")
    assert sent == []


def test_message_may_send_files_outside_the_workspace_when_it_is_not_restricted(home, tmp_path):
    sent = []
    ctx = make_ctx(home, "tools: {restrict_to_workspace: false}\n",
                   send=lambda *a, **k: sent.append((a, k)))
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    assert call(ctx, "message", content="look", media=[str(tmp_path / "photo.jpg")]).startswith("Sent")
    assert sent == [(("cli", "default", "look"), {"media": [str(tmp_path / "photo.jpg")]})]


# --- what a restricted turn may read beyond the workspace, and memory in groups (SPEC §13) ---

def test_the_bundled_skills_the_prompt_names_can_be_read(home):
    from lib.agent.skills import discover
    weather = next(s for s in discover(restricted(home).workspace) if s.name == "weather")
    assert "weather" in call(restricted(home), "read_file", path=str(weather.path)).lower()
    assert "SKILL.md" in call(restricted(home), "list_dir", path=str(weather.path.parent))
    out = call(restricted(home), "write_file", path=str(weather.path), content="pwned")
    assert refused(out) and "pwned" not in weather.path.read_text()


def test_this_chats_attachments_can_be_read_and_no_other_file_beside_them(home):
    media = home / "media" / "telegram"
    media.mkdir(parents=True)
    (media / "1-report.txt").write_text("quarterly numbers\n")
    (media / "2-other-chat.txt").write_text("someone else's file\n")
    ctx = make_ctx(home, readable=(str(media / "1-report.txt"),))
    assert call(ctx, "read_file", path=str(media / "1-report.txt")) == "quarterly numbers\n"
    assert refused(call(ctx, "read_file", path=str(media / "2-other-chat.txt")))
    assert refused(call(ctx, "list_dir", path=str(media)))
    assert refused(call(ctx, "write_file", path=str(media / "1-report.txt"), content="x"))


def test_a_group_turn_cannot_reach_memory_by_any_path(home):
    ctx = make_ctx(home, memory=False)
    memory = ctx.workspace / "memory"
    memory.mkdir(exist_ok=True)
    (memory / "MEMORY.md").write_text("- the owner's PIN hint\n")
    (ctx.workspace / "mem").symlink_to(memory, target_is_directory=True)
    for tool, args in [("read_file", {"path": "memory/MEMORY.md"}),
                       ("read_file", {"path": "mem/MEMORY.md"}),
                       ("read_file", {"path": str(memory / "MEMORY.md")}),
                       ("list_dir", {"path": "memory"}),
                       ("write_file", {"path": "memory/MEMORY.md", "content": "x"}),
                       ("edit_file", {"path": "memory/MEMORY.md", "old_text": "PIN", "new_text": "x"})]:
        out = call(ctx, tool, **args)
        assert out.startswith("Error:") and "memory_in_groups" in out, (tool, args, out)
    assert (memory / "MEMORY.md").read_text() == "- the owner's PIN hint\n"
    assert "PIN" in call(make_ctx(home), "read_file", path="memory/MEMORY.md")


@pytest.mark.parametrize("target", ["memory", "home"])
def test_a_link_swapped_in_while_a_tool_runs_gains_nothing(home, target):
    """A command running meanwhile (a sub-agent's) turns a folder into a link to memory (in a
    group) or to the home with the keys (restricted), over and over: the check is made again on
    the file the tool really opened, so no read returns what is behind the link, and no write
    lands there."""
    import threading
    ctx = make_ctx(home, memory=target != "memory")
    secret = ctx.workspace / "memory" if target == "memory" else home
    secret.mkdir(exist_ok=True)
    (secret / "s.txt").write_text("SECRET\n")
    swap, stop = ctx.workspace / "a", threading.Event()
    real, link = ctx.workspace / "a.real", ctx.workspace / "a.link"
    swap.mkdir()
    (swap / "s.txt").write_text("plain\n")
    link.symlink_to(secret, target_is_directory=True)

    def swapper():              # a: a real folder, then a link to the secret, and again
        while not stop.is_set():
            os.rename(swap, real)
            os.rename(link, swap)
            os.rename(swap, link)
            os.rename(real, swap)
    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        outs = [call(ctx, "read_file", path="a/s.txt") for _ in range(1500)]
        writes = [call(ctx, "write_file", path="a/s.txt", content="pwned\n") for _ in range(300)]
    finally:
        stop.set()
        thread.join()
    assert not any("SECRET" in out for out in outs), "a read got through"
    assert (secret / "s.txt").read_text() == "SECRET\n", "a write got through"
    assert "plain\n" in outs and any(not w.startswith("Error") for w in writes)    # it raced


def test_a_fifo_is_refused_without_blocking(home):
    import threading
    ctx = make_ctx(home)
    os.mkfifo(ctx.workspace / "pipe")
    out = []
    thread = threading.Thread(target=lambda: out.append(call(ctx, "read_file", path="pipe")),
                              daemon=True)
    thread.start()
    thread.join(5)
    assert out and "not a regular file" in out[0], "read_file blocked on a FIFO"


def test_only_files_the_channels_saved_count_as_sent(home):
    """A path a message names as its media is readable only under $NANOCLAW_HOME/media: a
    bridge or a script cannot name the config and have it read. A bad path breaks nothing."""
    (home / "media").mkdir()
    (home / "media" / "ok.txt").write_text("sent\n")
    (home / "config.yaml").write_text("api_key: sk-SECRET\n")
    ctx = make_ctx(home, readable=(str(home / "config.yaml"), "bad\0path", str(home / "media" / "ok.txt")))
    assert refused(call(ctx, "read_file", path=str(home / "config.yaml")))
    assert call(ctx, "read_file", path=str(home / "media" / "ok.txt")) == "sent\n"
    loose = make_ctx(home, "tools: {restrict_to_workspace: false}\n", readable=("bad\0path",))
    assert call(loose, "read_file", path=str(home / "media" / "ok.txt")) == "sent\n"


def test_a_memory_folder_that_is_a_link_is_closed_to_groups_too(home, tmp_path):
    ctx = make_ctx(home, "tools: {restrict_to_workspace: false}\n", memory=False)
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "MEMORY.md").write_text("- PIN hint\n")
    (ctx.workspace / "memory").symlink_to(real, target_is_directory=True)
    for path in ("memory/MEMORY.md", str(real / "MEMORY.md")):
        assert "memory_in_groups" in call(ctx, "read_file", path=path)


def test_no_file_tool_waits_on_a_fifo_or_reads_a_huge_file_whole(home):
    """A command (in a group, say) can make a FIFO or a sparse 20 GB file: write_file must not
    block the only worker on the FIFO (past any deadline), and edit_file must not read the file
    whole into the gateway that holds the keys."""
    import threading
    ctx = make_ctx(home)
    os.mkfifo(ctx.workspace / "notes.txt")
    with open(ctx.workspace / "big.txt", "wb") as f:
        f.truncate(20 << 30)
    outs = []
    calls = [("write_file", {"path": "notes.txt", "content": "x"}),
             ("edit_file", {"path": "notes.txt", "old_text": "a", "new_text": "b"}),
             ("edit_file", {"path": "big.txt", "old_text": "a", "new_text": "b"})]
    thread = threading.Thread(target=lambda: outs.extend(call(ctx, t, **a) for t, a in calls),
                              daemon=True)
    thread.start()
    thread.join(10)
    assert len(outs) == 3, f"a tool blocked: {outs}"
    assert all(out.startswith("Error: ") and "failed" not in out for out in outs), outs
    assert "up to 8 MB" in outs[2]


@pytest.mark.parametrize("case", ["loop", "nul", "surrogate"])
def test_odd_paths_and_text_are_one_clear_error_and_change_nothing(home, case):
    ctx = make_ctx(home)
    (ctx.workspace / "keep.txt").write_text("kept\n")
    if case == "loop":
        (ctx.workspace / "loop").symlink_to("loop")
    path, content = {"loop": ("loop/x", "x"), "nul": ("a\0b", "x"),
                     "surrogate": ("keep.txt", "bad \ud800")}[case]
    tools = [("write_file", {"path": path, "content": content})] + (
        [] if case == "surrogate" else [("read_file", {"path": path}), ("list_dir", {"path": path})])
    for tool, args in tools:
        out = call(ctx, tool, **args)
        assert out.startswith("Error: ") and "failed" not in out, (tool, out)
    assert (ctx.workspace / "keep.txt").read_text() == "kept\n"
