"""The WhatsApp channel against a fake of our bridge (its JSON protocol on 127.0.0.1): through the
real gateway subprocess where the whole path matters, in-process for sending, typing, the bridge
process supervision and the set-up errors. The bridge's own logic is tested in bridge/test/."""
import json
import os
import signal
import sys
import time

import pytest

from lib.channels import whatsapp
from lib.config import load_config
from lib.errors import ConfigError
from lib.mail import post_outbox
from tests.fakes.whatsapp_bridge import FakeBridge
from tests.conftest import (block, inbox, model_yaml, replies,
                            ROOT, run_cli, wait_for, write_config)

ALICE, BOB = "+15550001", "+4915112345678"
ALICE_JID = "15550001@s.whatsapp.net"


@pytest.fixture
def bridge():
    with FakeBridge(token="test-token") as fake:
        yield fake


def configure(home, llm, url, extra="    start_bridge: false\n    bridge_token: test-token\n",
              allow=f'["{ALICE}", "{BOB.lstrip("+")}"]'):
    write_config(home, model_yaml(llm) + f"""channels:
  whatsapp:
    enabled: true
    bridge_url: {url}
    allow_from: {allow}
{extra}""")


@pytest.fixture
def gateway_config(home, llm, bridge):
    configure(home, llm, bridge.url)


def answered(bridge, n, to=ALICE_JID):
    return bridge.wait_for(lambda: len(bridge.texts(to)) >= n and bridge.texts(to),
                           what=f"{n} replies to {to}")


def test_a_message_reaches_the_model_and_the_reply_reaches_whatsapp(gateway, llm, bridge):
    gateway.start()
    bridge.wait_for(lambda: bridge.connected, what="auth")
    assert bridge.auths == [{"type": "auth", "token": "test-token"}] and not bridge.refused
    msg_id = bridge.say("hello there")
    assert answered(bridge, 1) == ["echo: hello there"]
    assert bridge.sent[0]["to"] == ALICE_JID
    composing = [p for p in bridge.presence if p["state"] == "composing"]
    assert composing and composing[0]["at"] < bridge.sent[0]["at"]     # "typing…" came first
    asked = llm.chat_requests[-1]["messages"][-1]["content"]
    assert asked == "hello there"
    assert msg_id in bridge.received                    # confirmed once it was in the inbox
    bridge.say("and from the number without +", phone=BOB)
    answered(bridge, 1, "4915112345678@s.whatsapp.net")


def test_strangers_are_refused_before_the_model_and_told_once(gateway, llm, bridge, home):
    gateway.start()
    bridge.wait_for(lambda: bridge.connected, what="auth")
    stranger = "15559999@s.whatsapp.net"
    photo = home / "media" / "whatsapp" / "1-image.jpg"
    photo.parent.mkdir(parents=True, exist_ok=True)
    photo.write_bytes(b"\xff\xd8 a stranger's photo")
    bridge.say("let me in", phone="+15559999", kind="image", media=[photo])
    bridge.say("please", phone="+15559999")
    bridge.say("hi all", phone="+15559999", group=True)           # groups: not even told
    bridge.say("chatter", group=True, mentioned=False)             # not addressed to us
    bridge.say("me too", group=True)                               # Alice @mentions us
    assert answered(bridge, 1, "120363041234567890@g.us") == ["echo: me too"]
    assert answered(bridge, 1, stranger) == ["This assistant is private. Your whatsapp id is "
                                             "+15559999."]
    bridge.say("still there?")
    answered(bridge, 1)
    assert len(bridge.texts(stranger)) == 1                          # told once a day
    assert len(llm.chat_requests) == 2 and not photo.exists()       # the files are not kept
    assert "+15559999" in gateway.logs() and "channels.whatsapp.allow_from" in gateway.logs()
    done = [json.loads(p.read_text()) for p in (home / "inbox" / "done").glob("*.json")]
    assert sorted(m["metadata"]["is_group"] for m in done if m["sender_id"] != "+15559999") == \
        [False, True]                                              # SPEC §13


def test_a_long_reply_is_split_at_4000_characters(gateway, llm, bridge):
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 300 for i in range(8))
    llm.script(text)
    gateway.start()
    bridge.say("tell me a long story")
    wait_for(lambda: replies(gateway.home), what="the reply filed as sent")
    parts = bridge.texts()
    assert len(parts) >= 3 and all(len(p) <= 4000 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())


def test_a_dropped_connection_loses_nothing_and_sends_nothing_twice(gateway, llm, bridge):
    gateway.start()
    bridge.say("m1")
    answered(bridge, 1)
    bridge.drop()                                   # the link to the bridge goes away
    bridge.say("m2")                                # while nanoclaw is away
    bridge.say("m3")
    bridge.wait_for(lambda: len(bridge.auths) == 2, what="the reconnect")
    bridge.say("m4")
    answered(bridge, 4)
    bridge.lose_next_ack = True                     # sent, but the ack never arrives
    bridge.say("m5")
    bridge.wait_for(lambda: bridge.resends == 1 and len(bridge.auths) == 3,
                    what="the retry after the lost ack")
    bridge.state("disconnected")                    # the bridge loses WhatsApp for a moment
    bridge.say("m6")
    time.sleep(0.5)
    bridge.state("connected")
    answered(bridge, 6)
    wait_for(lambda: len(replies(gateway.home)) == 6, what="all six filed as sent")
    assert sorted(bridge.texts()) == [f"echo: m{i}" for i in range(1, 7)]      # each exactly once
    asked = [r["messages"][-1]["content"] for r in llm.chat_requests]
    assert sorted(asked) == [f"m{i}" for i in range(1, 7)]



def test_a_message_offered_again_after_a_crash_is_not_answered_twice(gateway, llm, bridge):
    """nanoclaw dies after the message is in the inbox but before the bridge heard "received":
    the bridge offers it again to the next process, whose memory is empty."""
    gateway.start()
    bridge.lose_received = 1
    bridge.say("only once")
    answered(bridge, 1)
    gateway.kill()
    gateway.start()
    bridge.wait_for(lambda: len(bridge.auths) == 2 and len(bridge.received) == 2,
                    what="the offer again, confirmed")
    bridge.say("next")
    answered(bridge, 2)
    assert [r["messages"][-1]["content"] for r in llm.chat_requests] == ["only once", "next"]

def test_voice_notes_are_transcribed_and_files_passed_on(gateway, llm, bridge, home):
    media = home / "media" / "whatsapp"
    media.mkdir(parents=True)
    voice, doc = media / "1-voice-note.ogg", media / "2-notes.pdf"
    voice.write_bytes(b"OggS fake audio")
    doc.write_bytes(b"%PDF-1.4 fake")
    gateway.start()
    bridge.say("", kind="audio", media=[voice])
    bridge.say("what is in this?", kind="document", media=[doc])
    answered(bridge, 2)
    asked = [r["messages"][-1]["content"] for r in llm.chat_requests]
    assert "[voice note, transcribed] hello from a voice note" in asked[0]
    assert f"[attached: {voice}]" in asked[0]
    assert asked[1].startswith("what is in this?") and f"[attached: {doc}]" in asked[1]
    assert any(r["path"] == "/v1/audio/transcriptions" for r in llm.requests)
    (home / "config.yaml").chmod(0o600)
    bridge.say("and this?", kind="document", media=[home / "config.yaml"])     # not the bridge's
    answered(bridge, 3)
    assert "config.yaml" not in llm.chat_requests[-1]["messages"][-1]["content"]


# --- in-process: the channel object ---

@pytest.fixture
def channel(home, llm, bridge, run_channel):

    def make(extra=None, url=None, **allow):
        configure(home, llm, url or bridge.url, *([extra] if extra is not None else []), **allow)
        return run_channel(whatsapp.WhatsAppChannel)
    return make


def test_a_rate_limit_is_honoured(channel, bridge, home):
    ch = channel()
    bridge.rate_limit(0.6)
    post_outbox(home, "whatsapp", ALICE, "hi after a pause")        # a phone number as chat id
    ch.wake()
    bridge.wait_for(lambda: len(bridge.sent) == 2, what="the retry")
    limited, ok = bridge.sent
    assert not limited["ok"] and ok["ok"] and ok["to"] == ALICE
    assert ok["at"] - limited["at"] >= 0.6          # waited retry_after, not the 0.05 s backoff
    wait_for(lambda: list((home / "outbox" / "sent").glob("whatsapp.*")), what="sent/")


def test_a_message_that_cannot_be_kept_is_not_confirmed_and_comes_again(channel, bridge, home,
                                                                       caplog):
    """A full disk (here: a file where the folder goes): no "received" goes to the bridge, the
    connection is opened again, and the bridge offers the message again."""
    unblock = block(home / "state" / "whatsapp" / "pending")
    channel()
    bridge.wait_for(lambda: bridge.connected, what="the connection")
    bridge.say("still there?")
    wait_for(lambda: "cannot keep message" in caplog.text, what="the failed keep")
    assert bridge.received == []
    unblock()
    msg = wait_for(lambda: inbox(home), what="the message, offered again")[0]
    assert msg["text"] == "still there?" and len(bridge.auths) >= 2


def test_files_go_with_the_last_part_and_one_gone_since_is_named(channel, bridge, home, tmp_path):
    ch = channel()
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    post_outbox(home, "whatsapp", ALICE, "Here", media=[str(tmp_path / "photo.jpg"),
                                                       str(tmp_path / "gone.pdf")])
    ch.wake()
    wait_for(lambda: list((home / "outbox" / "sent").glob("whatsapp.*")), what="sent/")
    assert [(f["text"], f["media"]) for f in bridge.sent] == [
        ("Here\n[attachment gone.pdf could not be sent: it no longer exists]",
         [str(tmp_path / "photo.jpg")])]


def test_a_permanent_failure_is_not_retried(channel, bridge, home):
    ch = channel()
    bridge.fail_next("not a WhatsApp chat or phone number: \"bob\"", permanent=True)
    post_outbox(home, "whatsapp", "bob", "hello?")
    ch.wake()
    failed = wait_for(lambda: list((home / "outbox" / "failed").glob("whatsapp.*.json")),
                      what="failed/")
    assert "not a WhatsApp chat" in json.loads(failed[0].read_text())["error"]
    assert len(bridge.sent) == 1


def test_typing_lasts_until_the_reply_is_delivered(channel, bridge, home, monkeypatch):
    monkeypatch.setattr(whatsapp, "TYPING_EVERY", 0.05)
    ch = channel()
    bridge.say("think hard")
    msg = wait_for(lambda: inbox(home), what="inbox")[0]
    assert msg["sender_id"] == ALICE and msg["chat_id"] == ALICE_JID
    assert msg["metadata"]["sender_aliases"] == ["15550001", ALICE_JID]
    assert msg["metadata"]["phone"] == ALICE and msg["metadata"]["message_id"]
    bridge.wait_for(lambda: len(bridge.presence) >= 3, what="typing renewed")
    post_outbox(home, "whatsapp", msg["chat_id"], "done thinking", reply_to="x",
                metadata=msg["metadata"])
    ch.wake()
    answered(bridge, 1)
    bridge.wait_for(lambda: bridge.presence[-1]["state"] == "paused", what="typing stopped")
    count = len(bridge.presence)
    time.sleep(0.3)                                 # six renewals' worth of time
    assert len(bridge.presence) == count
    assert all(p["to"] == ALICE_JID for p in bridge.presence)


def test_the_number_and_jid_let_in_as_aliases_and_a_joined_entry_matches_nothing(
        channel, bridge, home):
    channel(allow=f'["{ALICE_JID}", "+4915112345678|4915112345678"]')
    bridge.say("by jid")
    bridge.say("joined?", phone=BOB)
    msg = wait_for(lambda: inbox(home), what="Alice's message")[0]
    assert msg["text"] == "by jid" and msg["sender_id"] == ALICE
    bridge.wait_for(lambda: bridge.texts("4915112345678@s.whatsapp.net"), what="the refusal")
    assert len(inbox(home)) == 1


def test_a_wrong_token_is_reported(channel, bridge, caplog):
    bridge.token = "another-token"
    with caplog.at_level("ERROR"):
        channel()
        wait_for(lambda: any("refused our token" in r.getMessage() for r in caplog.records),
                 what="the error")
    assert "wrong token" in bridge.refused and not bridge.connected


def test_the_gateway_runs_the_bridge_restarts_it_and_stops_it(channel, home, monkeypatch):
    script = ROOT / "tests" / "fakes" / "whatsapp_bridge.py"
    monkeypatch.setattr(whatsapp, "node_command", lambda: [sys.executable, str(script)])
    with FakeBridge() as spare:                     # a free port for the child to take
        port = spare.url.rsplit(":", 1)[1]
    ch = channel("", url=f"ws://127.0.0.1:{port}")      # start_bridge, and no token: one is made up
    started = home / "bridge-started.json"
    first = wait_for(lambda: started.exists() and json.loads(started.read_text()), what="bridge")
    assert first["BRIDGE_PORT"] == port and first["argv"] == ["--supervised"]
    assert len(first["BRIDGE_TOKEN"]) >= 32 and first["cwd"] == str(whatsapp.BRIDGE_DIR)
    assert first["AUTH_DIR"] == str(home / "whatsapp-auth")
    assert first["MEDIA_DIR"] == str(home / "media" / "whatsapp")
    wait_for(ch._ready.is_set, what="authenticated with the child bridge")
    started.unlink()
    os.kill(first["pid"], signal.SIGKILL)           # the bridge dies
    second = wait_for(lambda: started.exists() and json.loads(started.read_text()),
                      what="the bridge started again")
    assert second["pid"] != first["pid"] and second["BRIDGE_TOKEN"] == first["BRIDGE_TOKEN"]
    wait_for(ch._ready.is_set, what="reconnected to the new bridge")
    ch.stop()
    assert ch.proc.poll() is not None               # stopped with the channel


def _path_without_node(tmp_path, version=None):
    """A PATH where `node` is missing, or is a script claiming to be `version`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if version:
        (bin_dir / "node").write_text(f"#!/bin/sh\necho {version}\n")
        (bin_dir / "node").chmod(0o755)
    return str(bin_dir)


def test_without_node_the_gateway_and_login_say_what_to_install(home, llm, tmp_path):
    configure(home, llm, "ws://127.0.0.1:3001", extra="")
    env = {"PATH": _path_without_node(tmp_path)}
    for args in (("gateway",), ("channels", "login")):
        r = run_cli(*args, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "WhatsApp needs Node.js 20+ (apt install nodejs npm) and " \
            "`cd bridge && npm ci`: node is not on PATH" in lines[0]


def test_an_old_node_or_a_missing_node_modules_is_named(home, llm, tmp_path, monkeypatch):
    configure(home, llm, "ws://127.0.0.1:3001", extra="")
    monkeypatch.setenv("PATH", _path_without_node(tmp_path, "v18.19.0"))
    with pytest.raises(ConfigError, match=r"npm ci`: .*node is v18\.19\.0"):
        whatsapp.WhatsAppChannel(load_config(), home)
    (tmp_path / "bin" / "node").write_text("#!/bin/sh\necho v20.19.2\n")
    monkeypatch.setattr(whatsapp, "BRIDGE_DIR", tmp_path / "bridge")
    with pytest.raises(ConfigError, match=r"npm ci`: .*bridge/node_modules is missing"):
        whatsapp.WhatsAppChannel(load_config(), home)


@pytest.mark.parametrize("url, extra, error", [
    ("ws://127.0.0.1:3001", "    start_bridge: false\n", "bridge_token is not set"),
    ("ws://192.168.1.5:3001", "", "must be on 127.0.0.1"),
    ("http://127.0.0.1:3001", "", "must look like ws://127.0.0.1:3001"),
])
def test_bridge_settings_are_checked_at_start_up(home, llm, url, extra, error):
    configure(home, llm, url, extra=extra)
    with pytest.raises(ConfigError, match=error):
        whatsapp.WhatsAppChannel(load_config(), home)
