"""Mochat against a fake Mochat (Claw REST API and Socket.IO websocket) on 127.0.0.1: through the
real gateway subprocess where the whole path matters, in-process for the receive paths' corners."""
import json
import re
import struct
import time
from datetime import datetime, timedelta, timezone

import pytest

from lib.agent import skills
from lib.config import load_config
from lib.mail import post_outbox
from tests.fakes.mochat_server import AGENT, OWNER, FakeMochat
from tests.conftest import block, Gateway, inbox, model_yaml, wait_for, write_config

DM = "session_dm"


@pytest.fixture
def mochat():
    with FakeMochat(ping_ms=300, ping_timeout_ms=2000) as fake:
        fake.session(DM)
        yield fake


def configure(home, llm, mochat, **over):
    settings = {"enabled": True, "base_url": mochat.url, "claw_token": mochat.token,
                "agent_user_id": AGENT, "sessions": ["*"], "panels": ["*"],
                "allow_from": [OWNER], "reply_delay_mode": "off", **over}
    write_config(home, model_yaml(llm, groq=None) +
                 f"channels:\n  mochat: {json.dumps(settings)}\n")


@pytest.fixture
def gateway_config(home, llm, mochat):
    configure(home, llm, mochat)


def on_the_socket(mochat) -> int:
    """The events the fake pushed through the websocket, after checking that every Socket.IO
    packet was in its encoding and that nothing came by the HTTP long poll instead."""
    assert not mochat.bad_packets
    assert not [r for r in mochat.requests if r[0] == "sessions/watch"]
    return mochat.pushed


def answered(mochat, n, target=DM):
    return mochat.wait_for(lambda: len(mochat.texts(target)) >= n and mochat.texts(target),
                           what=f"{n} replies in {target}")


def test_a_dm_reaches_the_model_and_the_reply_answers_it(gateway, llm, mochat):
    gateway.start()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mid = mochat.say(DM, "hello there")
    assert answered(mochat, 1) == ["echo: hello there"]
    sent = mochat.sent[0]
    assert sent["route"] == "sessions/send" and sent["body"]["replyTo"] == mid
    assert llm.chat_requests[-1]["messages"][-1]["content"] == "hello there"
    subscribed = dict(mochat.calls)
    assert subscribed["com.claw.im.subscribeSessions"]["sessionIds"] == [DM]
    mochat.wait_for(lambda: mochat.pongs >= 2, what="pongs to the server's pings")
    mochat.say(DM, "and again")                     # the reply's echo was not taken as a message
    answered(mochat, 2)
    assert len(llm.chat_requests) == 2 and mochat.handshakes == 1
    assert on_the_socket(mochat) >= 4               # two messages and two echoes, all pushed


def test_a_stranger_is_refused_before_the_model_and_told_once(gateway, llm, mochat):
    gateway.start()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mochat.say(DM, "let me in", author="user-mallory", name="mallory")
    assert answered(mochat, 1) == ["This assistant is private. Your mochat id is user-mallory."]
    mochat.say(DM, "please", author="user-mallory")
    mochat.say(DM, "it's me")
    mochat.wait_for(lambda: "echo: it's me" in mochat.texts(DM), what="the owner's reply")
    assert len(mochat.texts(DM)) == 2 and len(llm.chat_requests) == 1
    assert "user-mallory" in gateway.logs() and "channels.mochat.allow_from" in gateway.logs()


def test_a_long_reply_is_split_at_4000_characters(gateway, llm, mochat):
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 300 for i in range(8))
    llm.script(text)
    gateway.start()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mochat.say(DM, "tell me a long story")
    parts = mochat.wait_for(lambda: len(" ".join(mochat.texts(DM))) >= len(text) - 50 and
                            mochat.texts(DM), what="every part")
    assert len(parts) >= 3 and all(len(p) <= 4000 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    assert ["replyTo" in s["body"] for s in mochat.sent] == [True] + [False] * (len(parts) - 1)


def test_drops_and_a_refused_socket_lose_nothing(gateway, llm, mochat):
    gateway.start()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mochat.say(DM, "m1")
    answered(mochat, 1)
    mochat.drop()                                   # no close frame: a lost network
    mochat.say(DM, "m2")                            # while the socket is away
    mochat.say(DM, "m3")
    mochat.wait_for(lambda: mochat.connected, what="the socket back")
    mochat.say(DM, "m4")
    answered(mochat, 4)
    mochat.refuse_socket = True                     # now the socket cannot come back at all
    tries = mochat.handshakes
    mochat.drop()
    mochat.say(DM, "m5")
    mochat.say(DM, "m6")
    answered(mochat, 6)                             # answered through sessions/watch
    mochat.wait_for(lambda: mochat.handshakes > tries, what="a refused reconnection")
    assert not mochat.connected
    mochat.refuse_socket = False
    mochat.wait_for(lambda: mochat.connected, what="the socket back again", timeout=20)
    mochat.say(DM, "m7")
    answered(mochat, 7)
    wait_for(lambda: len(list((gateway.home / "inbox" / "done").glob("*.json"))) == 7,
             what="done/")
    assert sorted(mochat.texts(DM)) == [f"echo: m{i}" for i in range(1, 8)]    # each once
    assert any(r[0] == "sessions/watch" for r in mochat.requests)


def test_the_long_poll_alone_is_a_complete_receive_path(home, llm, mochat):
    mochat.refuse_socket = True
    configure(home, llm, mochat)
    g = Gateway(home).start()
    try:
        wait_for(lambda: sum(r[0] == "sessions/watch" for r in mochat.requests) >= 2,
                 what="a watch after the first batch")
        mochat.say(DM, "over http")
        assert answered(mochat, 1) == ["echo: over http"]
        assert mochat.handshakes >= 1 and not mochat.connected
        assert "polling over HTTP" in g.logs()
    finally:
        g.kill()


# --- in-process: the channel object ---

@pytest.fixture
def channel(home, llm, mochat, run_channel):
    from lib.channels.mochat import MochatChannel

    def make(**over):
        configure(home, llm, mochat, **over)
        return run_channel(MochatChannel)
    return make


def state(home):
    path = home / "state" / "mochat.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_rate_limit_is_honoured(channel, mochat, home):
    ch = channel()
    mochat.rate_limit(0.6)
    post_outbox(home, "mochat", DM, "hi after a pause")
    ch.wake()
    mochat.wait_for(lambda: len(mochat.sent) >= 2, what="the retry")
    limited, ok = mochat.sent[0], mochat.sent[1]
    assert limited["status"] == 429 and ok["status"] == 200
    assert ok["at"] - limited["at"] >= 0.6          # waited retry_after, not the 0.05 s backoff
    wait_for(lambda: list((home / "outbox" / "sent").glob("mochat.*")), what="sent/")


def test_files_cannot_go_to_mochat_so_the_text_names_them(channel, mochat, home, tmp_path):
    ch = channel()
    (tmp_path / "plan.pdf").write_bytes(b"%PDF")
    post_outbox(home, "mochat", DM, "The plan", media=[str(tmp_path / "plan.pdf")])
    ch.wake()
    assert answered(mochat, 1) == [
        "The plan\n[attachment plan.pdf could not be sent: Mochat's API takes no files]"]


def test_a_silent_server_is_left_and_the_socket_reopened(channel, mochat, home):
    channel()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mochat.mute()                                   # no pings: gone quiet, yet not closed
    mochat.say(DM, "said to a zombie connection")
    mochat.wait_for(lambda: mochat.handshakes == 2 and mochat.connected, what="a new socket")
    mochat.say(DM, "said on the new one")
    wait_for(lambda: len(inbox(home)) == 2, what="both messages")
    assert [m["text"] for m in inbox(home)] == ["said to a zombie connection",
                                                "said on the new one"]


def test_cursors_survive_a_restart_and_history_is_not_answered(channel, mochat, home):
    mochat.say(DM, "written before nanoclaw ever started")
    mochat.refuse_socket = True                     # the watch long poll carries everything
    ch = channel()
    wait_for(lambda: state(home).get("cursors", {}).get(DM) == 1, what="the first cursor")
    mochat.say(DM, "m1")
    wait_for(lambda: len(inbox(home)) == 1, what="m1")
    wait_for(lambda: state(home)["cursors"][DM] == 2, what="the cursor saved")
    ch.stop()
    mochat.say(DM, "m2 while stopped")
    mochat.say(DM, "m3 while stopped")
    channel()
    wait_for(lambda: len(inbox(home)) == 3, what="m2 and m3")
    time.sleep(0.3)                                 # a chance for anything else to turn up
    assert [m["text"] for m in inbox(home)] == ["m1", "m2 while stopped", "m3 while stopped"]
    watches = [b for r, b, _ in mochat.requests if r == "sessions/watch"]
    assert any(b["cursor"] == 2 for b in watches) and all(b["cursor"] >= 0 for b in watches)


def test_panel_messages_without_a_mention_are_batched_after_the_delay(channel, mochat, home):
    mochat.panel("panel_general")
    channel(reply_delay_mode="non-mention", reply_delay_ms=1500,
            allow_from=[OWNER, "user-alice", "user-bob"])
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    posted = time.monotonic()       # before the first post: its hold starts when it arrives
    mochat.post("panel_general", "first", author="user-alice", name="alice")
    mochat.post("panel_general", "second", author="user-bob", name="bob")
    mochat.say(DM, "a DM is not held back")
    wait_for(lambda: len(inbox(home)) == 2, what="the DM and the batch")
    arrived = time.monotonic()
    dm, batch = sorted(inbox(home), key=lambda m: m["chat_id"] != DM)   # named by when written
    assert dm["text"] == "a DM is not held back"
    assert batch["text"] == "alice: first\nbob: second" and batch["chat_id"] == "panel_general"
    assert batch["metadata"]["batched"] == 2 and batch["metadata"]["kind"] == "panel"
    assert batch["metadata"]["is_group"] is True and dm["metadata"]["is_group"] is False
    assert arrived - posted >= 1.5                  # not before reply_delay_ms
    wait_for(lambda: not state(home)["pending"], what="nothing left held")


def test_a_mention_answers_at_once_with_what_was_held_and_held_messages_survive_a_restart(
        channel, mochat, home):
    mochat.panel("panel_general")
    allow = [OWNER, "user-alice"]
    ch = channel(reply_delay_mode="non-mention", reply_delay_ms=600000, allow_from=allow)
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    mochat.post("panel_general", "anyone around?", author="user-alice", name="alice")
    mochat.post("panel_general", f"@{AGENT} you?", author="user-alice", name="alice",
                mentions=[AGENT])
    msg = wait_for(lambda: inbox(home), what="the mention")[0]
    assert msg["text"] == f"alice: anyone around?\nalice: @{AGENT} you?"
    assert msg["metadata"]["mentioned"] is True
    mochat.post("panel_general", "held over a restart", author="user-alice", name="alice")
    wait_for(lambda: "held over a restart" in json.dumps(state(home)["pending"]),
             what="the held message saved")         # (not the batch answered a moment ago)
    ch.stop()
    channel(reply_delay_mode="non-mention", reply_delay_ms=200, allow_from=allow)
    wait_for(lambda: len(inbox(home)) == 2, what="the held message")
    assert inbox(home)[1]["text"] == "held over a restart"
    wait_for(lambda: not state(home)["pending"], what="nothing left held")


def test_sessions_and_panels_filter_what_is_heard(channel, mochat, home):
    for sid in ("session_a", "session_b"):
        mochat.session(sid)
    for pid in ("panel_1", "panel_2"):
        mochat.panel(pid)
    channel(sessions=["session_a"], panels=["panel_1"])
    calls = mochat.wait_for(lambda: len(mochat.calls) >= 2 and dict(mochat.calls),
                            what="both subscriptions")
    assert calls["com.claw.im.subscribeSessions"]["sessionIds"] == ["session_a"]
    assert calls["com.claw.im.subscribePanels"]["panelIds"] == ["panel_1"]
    mochat.say("session_b", "not followed", everyone=True)     # even if the server sends it
    mochat.post("panel_2", "not followed either", author=OWNER, everyone=True)
    mochat.say("session_a", "followed")
    mochat.post("panel_1", "followed too", author=OWNER)
    wait_for(lambda: len(inbox(home)) == 2, what="the followed ones")
    time.sleep(0.3)
    assert sorted(m["text"] for m in inbox(home)) == ["followed", "followed too"]


def test_a_star_follows_every_session_and_text_panel(channel, mochat):
    mochat.session("session_b")
    mochat.panel("panel_1")
    channel()
    calls = mochat.wait_for(lambda: len(mochat.calls) >= 2 and dict(mochat.calls),
                            what="both subscriptions")
    assert calls["com.claw.im.subscribeSessions"]["sessionIds"] == ["session_b", DM]
    assert calls["com.claw.im.subscribePanels"]["panelIds"] == ["panel_1"]     # not the folder


def test_the_bundled_skill_sets_mochat_up_with_real_endpoints(tmp_path, mochat):
    skill = {s.name: s for s in skills.discover(tmp_path)}["mochat"]
    assert skill.path.parent.name == "mochat" and "Register on MoChat" in skill.description
    assert skill.bins == ["curl"] and not skill.always
    routes = set(re.findall(r"/api/claw/([\w/]+)", skill.body))
    assert {"agents/selfRegister", "agents/bind"} <= routes
    import requests
    for route in routes:                            # every endpoint it names is a real one
        r = requests.post(f"{mochat.url}/api/claw/{route}", json={},
                          headers={"X-Claw-Token": mochat.token}, timeout=5)
        assert "no route" not in r.text, route
    for key in ("claw_token", "agent_user_id", "allow_from", "edit_file", "restart"):
        assert key in skill.body


def test_the_socket_speaks_msgpack_by_default_and_carries_every_message(channel, mochat, home):
    """The service's parser is msgpack, as in the reference clients: a JSON text packet gets the
    socket closed, and the channel would quietly live on HTTP long polls."""
    mochat.panel("panel_general")
    channel()
    mochat.wait_for(lambda: len(mochat.calls) >= 2, what="both subscriptions")
    mochat.say(DM, "through the socket")
    mochat.post("panel_general", "and in a panel", author=OWNER)
    wait_for(lambda: len(inbox(home)) == 2, what="both messages")
    assert [m["text"] for m in inbox(home)] == ["through the socket", "and in a panel"]
    assert on_the_socket(mochat) == 2 and mochat.handshakes == 1


def test_socket_disable_msgpack_speaks_json_as_the_original_projects_config_says(
        home, llm, run_channel):
    from lib.channels.mochat import MochatChannel
    with FakeMochat(encoding="json") as fake:
        fake.session(DM)
        configure(home, llm, fake, socketDisableMsgpack=True)     # camelCase, as in config.json
        assert load_config().channels.mochat.socket_disable_msgpack is True
        run_channel(MochatChannel)
        fake.wait_for(lambda: fake.connected, what="the socket subscription")
        fake.say(DM, "in JSON")
        assert wait_for(lambda: inbox(home), what="the message")[0]["text"] == "in JSON"
        assert on_the_socket(fake) == 1


@pytest.mark.parametrize("socket", [True, False], ids=["socket", "long-poll"])
def test_a_new_sessions_first_batch_is_history_whatever_its_timestamps_say(
        channel, mochat, home, socket):
    soon = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="milliseconds")
    old = [mochat.say(DM, "from last year", at="2025-01-01T00:00:00.000Z"),
           mochat.say(DM, "stamped after the channel started", at=soon.replace("+00:00", "Z"))]
    mochat.refuse_socket = not socket
    channel()
    wait_for(lambda: state(home).get("cursors", {}).get(DM) == 2, what="the first batch seen")
    assert set(old) <= set(state(home)["seen"])
    mochat.say(DM, "after the cursor", at="2025-01-01T00:00:00.000Z")    # new, whatever its stamp
    wait_for(lambda: inbox(home), what="the new message")
    time.sleep(0.3)                                 # a chance for anything else to turn up
    assert [m["text"] for m in inbox(home)] == ["after the cursor"]
    if socket:
        on_the_socket(mochat)
    else:                                           # the first look does not wait for news
        first = next(b for r, b, _ in mochat.requests if r == "sessions/watch")
        assert first["timeoutMs"] == 0 and first["cursor"] == 0



def test_a_session_opened_while_running_has_its_first_message_answered(channel, mochat, home,
                                                                      monkeypatch):
    """Only what was there when nanoclaw first looked is history: someone who opens a new
    conversation later is answered, though that session's first batch is new here too."""
    from lib.channels import mochat as module
    monkeypatch.setattr(module, "REFRESH_S", 0.2)
    channel()
    wait_for(lambda: state(home).get("cursors", {}).get(DM) is not None, what="the first look")
    mochat.session("session_new")
    mochat.say("session_new", "hello, I am new here")
    wait_for(lambda: inbox(home), what="the new session's first message")
    assert [m["text"] for m in inbox(home)] == ["hello, I am new here"]

# An ack {type: 3, nsp: "/", id: 1, data: [{result: true}]} from Socket.IO's msgpack parser
ACK = bytes([0x84, 0xA4, *b"type", 0x03, 0xA3, *b"nsp", 0xA1, *b"/", 0xA2, *b"id", 0x01,
             0xA4, *b"data", 0x91, 0x81, 0xA6, *b"result", 0xC3])


def test_the_msgpack_codec_reads_and_writes_hand_built_bytes():
    from lib.channels.msgpack import pack, unpack
    assert unpack(ACK) == {"type": 3, "nsp": "/", "id": 1, "data": [{"result": True}]}
    assert pack(unpack(ACK)) == ACK
    for value, raw in [(None, b"\xc0"), (False, b"\xc2"), (-1, b"\xff"), (-33, b"\xd0\xdf"),
                       (200, b"\xcc\xc8"), (70000, b"\xce\x00\x01\x11\x70"),
                       (-2**40, b"\xd3" + (-2**40).to_bytes(8, "big", signed=True)),
                       (2**64 - 1, b"\xcf" + b"\xff" * 8), (1.5, b"\xcb" + struct.pack(">d", 1.5)),
                       ("é" * 16, b"\xd9\x20" + "é".encode() * 16),
                       (b"\x01\x02", b"\xc4\x02\x01\x02"),
                       ([0] * 16, b"\xdc\x00\x10" + bytes(16)), ({"a": []}, b"\x81\xa1a\x90")]:
        assert pack(value) == raw and unpack(raw) == value, value
    assert unpack(b"\xca" + struct.pack(">f", 0.25)) == 0.25
    assert unpack(b"\xdb\x00\x00\x00\x02hi") == "hi"                # a str32 that could be shorter
    # notepack.io's Date (timestamp extension, 32 and 64 bits) and undefined (fixext 1, type 0)
    assert unpack(bytes.fromhex("d6ff5f5e1000")) == "2020-09-13T12:26:40.000Z"
    both = (500_000_000 << 34) | 1_600_000_000
    assert unpack(b"\xd7\xff" + both.to_bytes(8, "big")) == "2020-09-13T12:26:40.500Z"
    assert unpack(b"\x81\xa1u\xd4\x00\x00") == {"u": None}
    for bad in (b"", b"\xc1", b"\x92\x01", b"\xa5ab", b"\x01\x02", b"\x81\x91\x01\x02"):
        with pytest.raises(ValueError):
            unpack(bad)


def test_the_fake_speaks_the_same_msgpack():
    """The fake's codec is its own; each reads what the other writes."""
    from lib.channels.msgpack import pack, unpack
    from tests.fakes.mochat_server import mp_decode, mp_encode
    packet = {"type": 2, "nsp": "/", "id": 70000, "data": ["claw.session.events", {
        "sessionId": "s" * 40, "cursor": -5, "events": [{"seq": 1, "ok": True, "x": None,
                                                         "f": 0.5, "b": b"\x00"}]}]}
    assert mp_decode(pack(packet)) == packet and unpack(mp_encode(packet)) == packet
    assert mp_decode(ACK) == unpack(ACK)


def test_a_missing_package_is_one_line_naming_it(home, llm, mochat, monkeypatch):
    import sys
    from lib.channels import enabled
    from lib.errors import ConfigError
    configure(home, llm, mochat)
    monkeypatch.setitem(sys.modules, "websocket", None)    # `import websocket` fails
    with pytest.raises(ConfigError, match="needs the Python package websocket-client: "
                                          r"\.venv/bin/pip install -r requirements\.txt"):
        enabled(load_config(), home)


def test_a_message_the_inbox_cannot_take_is_fetched_again_not_skipped(channel, mochat, home,
                                                                       caplog):
    """A full disk (here: a file where inbox/tmp goes) must not move the session's cursor past
    the message: the socket is opened again from the cursor, and the message comes back."""
    channel()
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    unblock = block(home / "inbox" / "tmp")
    mochat.say(DM, "m1")
    wait_for(lambda: "cannot put a message in the inbox" in caplog.text, what="the failed write")
    unblock()
    mochat.say(DM, "m2")
    wait_for(lambda: len(inbox(home)) == 2, what="m1 again, and m2")
    assert [m["text"] for m in inbox(home)] == ["m1", "m2"]
    wait_for(lambda: state(home)["cursors"][DM] == 2, what="the cursor saved")


def test_a_batch_taken_again_after_a_kill_is_not_answered_twice(channel, mochat, home):
    """A kill after a message reached the inbox but before the cursor was saved: the same events
    come again, and the inbox name (the message id) drops them."""
    mochat.refuse_socket = True                     # the long poll: it asks from the cursor
    ch = channel()
    wait_for(lambda: DM in state(home).get("cursors", {}), what="the first look")
    before = state(home)
    mochat.say(DM, "m1")
    wait_for(lambda: inbox(home), what="m1")
    ch.stop()
    (home / "state" / "mochat.json").write_text(json.dumps(before))    # as if killed before saving
    channel()
    mochat.say(DM, "m2")
    wait_for(lambda: len(inbox(home)) >= 2, what="m2")
    wait_for(lambda: state(home)["cursors"][DM] == 2, what="the cursor saved")
    assert [m["text"] for m in inbox(home)] == ["m1", "m2"]


def test_held_panel_messages_the_inbox_cannot_take_stay_held(channel, mochat, home, caplog):
    mochat.panel("panel_general")
    channel(reply_delay_mode="non-mention", reply_delay_ms=200, allow_from=[OWNER, "user-alice"])
    mochat.wait_for(lambda: mochat.connected, what="the socket subscription")
    unblock = block(home / "inbox" / "tmp")
    mochat.post("panel_general", "anyone around?", author="user-alice", name="alice")
    wait_for(lambda: "cannot put held messages in the inbox" in caplog.text, what="the failure")
    assert "anyone around?" in json.dumps(state(home)["pending"])
    unblock()
    msg = wait_for(lambda: inbox(home), what="the held message, tried again")[0]
    assert msg["text"] == "anyone around?"
    wait_for(lambda: not state(home)["pending"], what="nothing left held")
