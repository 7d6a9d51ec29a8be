"""The web page (SPEC §11) in a real headless Chromium on a 390-pixel-wide phone screen:
nothing private before login, login and the chat by keyboard, every section and its buttons,
no sideways scrolling. A screenshot of each section goes to $WEB_SCREENSHOTS (default: a folder
in the test's temporary directory, printed)."""
import json
import time
import os
from datetime import datetime
from pathlib import Path

import pytest

from tests.browser import Chromium, find_chromium
from tests.conftest import run_cli, wait_for
from tests.test_web_api import Web

pytestmark = pytest.mark.skipif(not find_chromium(), reason="Chromium is not installed "
                                "(apt-get install chromium); the page cannot be tried in a browser")
PRIVATE = ("Miso", "water the plants", "4821", "retry me")
WIDE_ENOUGH = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("WEB_SCREENSHOTS") or tmp_path / "web-page-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture
def site(home, llm, gateway, tmp_path):
    """The gateway with a memory, a cron job, failed messages, today's usage and a parked
    approval; and a browser tab the size of a phone, on the page, not logged in."""
    memory = home / "workspace" / "memory" / "MEMORY.md"
    memory.parent.mkdir(parents=True)
    memory.write_text("# Facts\n- The owner's cat is called Miso.\n- " + "unbroken" * 40 + "\n")
    failed = home / "inbox" / "failed"
    failed.mkdir(parents=True)
    (failed / "00000000000000000001.1.0001.json").write_text("{broken")
    (failed / "00000000000000000001.1.0001.json.error").write_text("not valid JSON: Expecting a name\n")
    (failed / "00000000000000000002.1.0001.json").write_text(
        json.dumps({"channel": "local", "chat_id": "t", "text": "retry me"}))
    (failed / "00000000000000000002.1.0001.json.error").write_text("internal error: boom\n")
    day = datetime.now().astimezone().date().isoformat()
    (home / "usage").mkdir()
    (home / "usage" / f"{day}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in (
        {"ts": "x", "source": "chat", "model": "m", "prompt_tokens": 1000, "completion_tokens": 200,
         "cost_usd": 0.01, "ok": True},
        {"ts": "x", "source": "heartbeat", "model": "m", "prompt_tokens": 300, "completion_tokens": 0,
         "ok": True})))
    (home / "state" / "approvals").mkdir(parents=True)
    command = "rm -rf build/ /a/very/long/path/" + "x" * 200        # as lib/approvals.py parks it
    (home / "state" / "approvals" / "4821.json").write_text(json.dumps(
        {"code": "4821", "binding": {"tool": "exec", "command": command, "cwd": str(home / "workspace"),
                                     "files": {}},
         "call": {"id": "c1", "name": "exec", "arguments": json.dumps({"command": command})},
         "msg": {"id": "m1", "channel": "local", "chat_id": "owner", "text": "clean"},
         "channel": "local", "chat_id": "owner", "asked_at": time.time(),
         "expires_at": time.time() + 3600, "question": f"Run in workspace/: {command}"}))
    w = Web(home, llm, "limits: {daily_tokens: 100000}\n")
    w.gateway = gateway
    w.start()
    assert run_cli("cron", "add", "--name", "water the plants", "--message", "remind me",
                   "--every", "86400").returncode == 0
    with Chromium(tmp_path) as browser:
        page = browser.page(width=390)
        page.goto(f"http://127.0.0.1:{w.port}/")
        page.wait("!document.getElementById('login').hidden")
        yield w, page


def visible(section: str) -> str:
    return f"!document.getElementById('{section}').hidden"


def text(selector: str) -> str:
    return f"((document.querySelector('{selector}') || {{}}).innerText || '')"


def click(page, selector: str, label: str):
    page.js(f"[...document.querySelectorAll('{selector} button')].find(b => b.textContent === "
            f"{json.dumps(label)}).click()")


def test_nothing_private_before_login(site, shots):
    w, page = site
    body = page.js("document.documentElement.outerHTML") + page.js("document.body.innerText")
    assert not [p for p in PRIVATE if p in body]
    assert page.js("document.getElementById('nav').hidden")
    for path in ("/ui/memory", "/ui/cron", "/ui/failed", "/ui/approvals", "/ui/sessions"):
        status = page.js(f"fetch('{path}').then(r => r.status)")
        assert status == 401, path
    assert page.js(WIDE_ENOUGH)
    page.screenshot(shots / "00-login.png")


def test_a_wrong_token_is_refused_on_the_page(site):
    w, page = site
    page.js("document.getElementById('token').focus()")
    page.type("not-the-token")
    page.key("Enter")
    page.wait(f"{text('#login-error')}.includes('wrong token')")
    assert page.js(visible("login")) and page.js("document.getElementById('nav').hidden")


def test_login_chat_and_every_section_on_a_phone(site, llm, home, shots):
    w, page = site
    # log in with the keyboard alone: the token field has the focus, Enter sends
    assert page.js("document.activeElement.id") == "token"
    page.type(w.token)
    page.key("Enter")
    page.wait(visible("chat"))
    assert page.js("document.cookie") == ""         # HttpOnly: no script can read it

    # the chat: the tool step shows while the turn runs, then the reply
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]},
               "Your folder holds the memory.")
    page.js("document.getElementById('chat-text').focus()")
    page.type("what is in my folder?")
    page.key("Enter")
    page.wait(f"{text('#chat-log')}.includes('Your folder holds the memory.')")
    log = page.js(text("#chat-log"))
    assert "what is in my folder?" in log and "list_dir" in log
    done = wait_for(lambda: [json.loads(p.read_text()) for p in (home / "inbox" / "done").glob("*.json")],
                    what="the chat message done")
    assert [(m["channel"], m["chat_id"]) for m in done] == [("web", "page")]
    assert page.js(WIDE_ENOUGH)
    page.screenshot(shots / "01-chat.png")

    # the sections, reached by keyboard: from the menu's first link, Tab to the next, Enter
    page.js("document.querySelector('nav a').focus()")
    page.key("Tab")
    assert page.js("document.activeElement.getAttribute('href')") == "#parts"
    page.key("Enter")
    page.wait(visible("parts") + f" && {text('#part-list')}.includes('worker')")
    parts = page.js(text("#part-list"))
    assert "running" in parts and "cron" in parts and "stopped" not in parts
    page.screenshot(shots / "02-parts.png")

    page.js("location.hash = '#queues'")
    page.wait(f"{text('#failed-list')}.includes('retry me')")
    failed = page.js(text("#failed-list"))
    assert "not valid JSON" in failed and "internal error: boom" in failed
    assert page.js(WIDE_ENOUGH)
    page.screenshot(shots / "03-queues.png")
    click(page, "#failed-list li:nth-child(1)", "Retry")       # newest first: "retry me"
    wait_for(lambda: any(m["text"] == "echo: retry me" for m in _sent(home)), what="the retried reply")
    page.wait(f"!{text('#failed-list')}.includes('retry me')")
    click(page, "#failed-list li:nth-child(1)", "Drop")
    page.wait(f"{text('#failed-list')} === 'none'")
    assert not list((home / "inbox" / "failed").iterdir())

    page.js("location.hash = '#sessions'")
    page.wait(f"{text('#session-list')}.includes('web:page')")
    click(page, "#session-list", "web:page")
    page.wait(f"{text('#transcript')}.includes('what is in my folder?')")
    assert page.js(WIDE_ENOUGH)
    page.screenshot(shots / "04-sessions.png")

    page.js("location.hash = '#memory'")
    page.wait(f"{text('#memory-text')}.includes('Miso')")
    assert page.js(WIDE_ENOUGH)             # a long unbroken line wraps, the page does not widen
    page.screenshot(shots / "05-memory.png")

    page.js("location.hash = '#cron'")
    page.wait(f"{text('#job-list')}.includes('water the plants')")
    assert page.js(WIDE_ENOUGH)
    page.screenshot(shots / "06-cron.png")
    click(page, "#job-list", "Disable")
    page.wait(f"{text('#job-list')}.includes('disabled')")
    click(page, "#job-list", "Enable")
    page.wait(f"{text('#job-list')}.includes('enabled, next')")
    click(page, "#job-list", "Run now")
    wait_for(lambda: any("-run-" in p.name for p in (home / "inbox").rglob("cron-*.json")),
             what="the job posted to the inbox")
    page.js("window.confirm = () => true")
    click(page, "#job-list", "Remove")
    page.wait(f"{text('#job-list')} === 'none'")

    page.js("location.hash = '#usage'")
    page.wait(f"{text('#usage-body')}.includes('model calls')")
    usage = page.js(text("#usage-body"))    # the ledger above, and the calls this test made
    assert "heartbeat: 1 call, 300 tokens" in usage and "chat: " in usage
    assert " of 100,000 tokens" in usage and "USD (no daily limit)" in usage
    page.screenshot(shots / "07-usage.png")

    page.js("location.hash = '#approvals'")
    page.wait(f"{text('#approval-list')}.includes('rm -rf build/')")
    assert "4821" in page.js(text("#approval-list")) and page.js(WIDE_ENOUGH)
    page.screenshot(shots / "08-approvals.png")
    click(page, "#approval-list", "Approve")
    answer = wait_for(lambda: list((home / "inbox").rglob("approval-4821-web.json")), what="the answer")
    msg = json.loads(answer[0].read_text())
    assert (msg["channel"], msg["chat_id"], msg["sender_id"], msg["text"]) == \
        ("web", "page", "owner", "yes 4821")           # the page is the owner's (SPEC §9)

    click(page, "#nav", "Log out")
    page.wait(visible("login"))
    assert page.js("fetch('/ui/memory').then(r => r.status)") == 401


def _sent(home):
    return [json.loads(p.read_text()) for p in (home / "outbox" / "sent").glob("*.json")]
