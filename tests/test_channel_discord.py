"""The Discord channel against a fake Discord (REST and gateway websocket) on 127.0.0.1: through
the real gateway subprocess where the whole path matters, in-process for the gateway protocol's
corner cases."""
import json
import logging
import time

import pytest

from lib.channels import wsgateway
from lib.mail import post_outbox
from tests.fakes.discord_server import BOT_ID, FakeDiscord
from tests.conftest import (block, inbox, kill_mid_download, model_yaml,
                            replies, wait_for, write_config)


@pytest.fixture
def discord():
    with FakeDiscord(token="test-token") as fake:
        yield fake


def configure(home, llm, discord, extra=""):
    write_config(home, model_yaml(llm) + f"""channels:
  discord:
    enabled: true
    token: test-token
    api_base: {discord.api_base}
    allow_from: ["111", "bob"]
{extra}""")


@pytest.fixture
def gateway_config(home, llm, discord):
    configure(home, llm, discord)


def answered(discord, n, channel="500"):
    return discord.wait_for(lambda: len(discord.texts(channel)) >= n and discord.texts(channel),
                            what=f"{n} replies in channel {channel}")


def test_a_dm_reaches_the_model_and_the_reply_answers_it(gateway, llm, discord):
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    ident = next(m["d"] for m in discord.received if m["op"] == 2)
    assert ident["token"] == "Bot test-token" and ident["intents"] == 37377
    assert ("GET", "/api/v10/gateway/bot", 200) in discord.rest
    assert "v=10" in discord.gateway_urls[0] and "encoding=json" in discord.gateway_urls[0]
    msg_id = discord.say("hello there", author_id="111")
    assert answered(discord, 1) == ["echo: hello there"]
    reply = discord.sent[0]
    assert reply["body"]["message_reference"]["message_id"] == msg_id
    assert discord.typing and discord.typing[0]["at"] < reply["at"]       # "typing…" came first
    assert llm.chat_requests[-1]["messages"][-1]["content"] == "hello there"


def test_strangers_guilds_and_bots(gateway, llm, discord):
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("let me in", author_id="222", username="mallory")
    discord.say("please", author_id="222", username="mallory")
    discord.say("no mention here", author_id="111", guild_id="77", channel_id="600")
    discord.say("I am a bot", author_id="333", bot=True)
    discord.say(f"<@{BOT_ID}> what time is it", author_id="444", username="bob",
                guild_id="77", channel_id="600", mentions=[BOT_ID])
    assert answered(discord, 1, "600") == ["echo: what time is it"]      # "bob" is allowed by name
    assert answered(discord, 1) == ["This assistant is private. Your discord id is 222."]
    assert len(llm.chat_requests) == 1
    assert "222" in gateway.logs() and "channels.discord.allow_from" in gateway.logs()
    discord.say("one more", author_id="222", username="mallory")    # told once a day, not again
    discord.say("still here?", author_id="111")
    discord.wait_for(lambda: "echo: still here?" in discord.texts(), what="the DM reply")
    assert discord.texts().count("This assistant is private. Your discord id is 222.") == 1
    assert discord.texts("600") == ["echo: what time is it"]
    done = [json.loads(p.read_text()) for p in (gateway.home / "inbox" / "done").glob("*.json")]
    assert {m["chat_id"]: m["metadata"]["is_group"] for m in done if m["sender_id"] != "222"} == \
        {"600": True, "500": False}                     # a guild channel, a DM (SPEC §13)


def test_a_username_made_of_digits_cannot_pass_for_an_allowed_id(channel, discord, home):
    ch = channel()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("it's me, 111", author_id="666", username="111")
    discord.say("bob here", author_id="777", username="bob")
    msg = wait_for(lambda: inbox(home), what="bob's message")[0]
    assert msg["sender_id"] == "777" and msg["metadata"]["sender_aliases"] == ["bob"]
    ch.wake()
    wait_for(lambda: discord.texts(), what="the refusal")
    assert discord.texts() == ["This assistant is private. Your discord id is 666."]
    assert len(inbox(home)) == 1


def test_a_long_reply_is_split_at_2000_characters(gateway, llm, discord):
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 150 for i in range(8))
    llm.script(text)
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("tell me a long story")
    wait_for(lambda: replies(gateway.home), what="the reply filed as sent")
    parts = discord.texts()
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    refs = [("message_reference" in m["body"]) for m in discord.sent]
    assert refs == [True] + [False] * (len(parts) - 1)          # the first part answers


def test_a_dropped_connection_loses_nothing(gateway, llm, discord):
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("m1")
    answered(discord, 1)
    discord.drop()                                  # no close frame: a lost network
    discord.say("m2")                               # while the bot is away
    discord.say("m3")
    discord.wait_for(lambda: discord.connected, what="RESUME")
    discord.say("m4")
    answered(discord, 4)
    discord.reconnect()                             # op 7: come back elsewhere
    discord.say("m5")
    discord.wait_for(lambda: discord.resumes == 2 and discord.connected, what="RESUME after op 7")
    discord.close(4000, "Unknown error")            # a resumable close code
    discord.say("m6")
    answered(discord, 6)
    wait_for(lambda: len(list((gateway.home / "inbox" / "done").glob("*.json"))) == 6, what="done/")
    assert sorted(discord.texts()) == [f"echo: m{i}" for i in range(1, 7)]      # each exactly once
    resumes = [m["d"] for m in discord.received if m["op"] == 6]
    assert len(resumes) >= 3 and all(r["seq"] and r["session_id"] for r in resumes)
    assert sum(m["op"] == 2 for m in discord.received) == 1          # never identified again


def test_voice_notes_are_transcribed_and_files_downloaded(gateway, llm, discord):
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    voice = discord.attachment("voice-message.ogg", b"OggS fake audio", "audio/ogg")
    doc = discord.attachment("notes.txt", b"buy milk", "text/plain")
    discord.say("", attachments=[voice, doc])
    answered(discord, 1)
    asked = llm.chat_requests[-1]["messages"][-1]["content"]
    assert "[voice note, transcribed] hello from a voice note" in asked
    saved = sorted((gateway.home / "media" / "discord").iterdir())
    assert [(p.name.split("-", 1)[1], p.read_bytes()) for p in saved] == [
        ("voice-message.ogg", b"OggS fake audio"), ("notes.txt", b"buy milk")]
    assert all(f"[attached: {p}]" in asked for p in saved)
    assert any(r["path"] == "/v1/audio/transcriptions" for r in llm.requests)


def test_a_message_in_hand_when_the_gateway_is_killed_is_answered_after_the_restart(
        gateway, llm, discord):
    """Discord sends an event once: one read from the socket but not yet in the inbox (its file
    still coming) must survive a kill -9, and the new session does not bring it again."""
    gateway.start()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    big = discord.attachment("big.bin", b"a large file")
    kill_mid_download(gateway, discord, lambda: discord.say("keep this", attachments=[big]))
    assert answered(discord, 1)[0].startswith("echo: keep this\n[attached: ")
    assert len(llm.chat_requests) == 1 and discord.identifies == 2
    wait_for(lambda: not list((gateway.home / "state" / "discord" / "pending").glob("*")),
             what="the kept message removed")


# --- in-process: the channel object and the gateway protocol's corners ---

@pytest.fixture
def channel(home, llm, discord, run_channel):
    from lib.channels.discord import DiscordChannel

    def make(extra=""):
        configure(home, llm, discord, extra)
        return run_channel(DiscordChannel)
    return make


def test_typing_lasts_until_the_reply_is_delivered(channel, discord, home, monkeypatch):
    monkeypatch.setattr("lib.channels.discord.TYPING_EVERY", 0.05)
    ch = channel()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("think hard")
    msg = wait_for(lambda: inbox(home), what="inbox")[0]
    assert msg["sender_id"] == "111" and msg["metadata"]["message_id"]
    assert msg["metadata"]["sender_aliases"] == ["alice"]
    discord.wait_for(lambda: len(discord.typing) >= 3, what="typing renewed")
    post_outbox(home, "discord", msg["chat_id"], "done thinking", reply_to="x",
                metadata=msg["metadata"])
    ch.wake()
    answered(discord, 1)
    wait_for(lambda: not ch.typing.chats, what="typing stopped")
    count = len(discord.typing)
    time.sleep(0.3)                                 # six renewals' worth of time
    assert len(discord.typing) <= count + 1         # at most one that was already on its way


def test_a_rate_limit_is_honoured(channel, discord, home):
    ch = channel()
    discord.rate_limit(0.6)
    post_outbox(home, "discord", "500", "hi after a pause")
    ch.wake()
    answered(discord, 2)
    limited, ok = discord.sent[0], discord.sent[1]
    assert limited["status"] == 429 and ok["status"] == 200
    assert ok["at"] - limited["at"] >= 0.6          # waited retry_after, not the 0.05 s backoff
    wait_for(lambda: list((home / "outbox" / "sent").glob("discord.*")), what="sent/")


def test_a_zombie_connection_is_replaced_and_resumed(discord, channel, home):
    discord.heartbeat_ms = 200
    channel()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.ack = False
    discord.wait_for(lambda: discord.resumes >= 1, what="RESUME after missing ACKs")
    discord.ack = True
    discord.say("still there?")
    wait_for(lambda: inbox(home), what="the message after the resume")
    assert 4000 in discord.closes                   # closed as resumable, not with 1000


def test_an_invalid_session_means_a_new_identify(discord, channel, home, monkeypatch):
    monkeypatch.setattr(wsgateway.GatewaySession, "invalid_session_wait", (0.05, 0.1))
    channel()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.invalidate(resumable=False)
    discord.wait_for(lambda: discord.identifies == 2, what="a second IDENTIFY")
    discord.say("after op 9")
    assert wait_for(lambda: inbox(home), what="inbox")[0]["text"] == "after op 9"


@pytest.mark.parametrize("code, hint", [(4014, "MESSAGE CONTENT INTENT"),
                                        (4004, "channels.discord.token")])
def test_a_fatal_close_stops_retrying_with_a_clear_error(discord, channel, caplog, code, hint):
    discord.refuse_with = code
    if code == 4004:
        discord.refuse_with, discord.token = None, "another-token"
    with caplog.at_level(logging.ERROR):
        ch = channel("    gateway_url: " + discord.gateway_url)
        wait_for(lambda: any(hint in r.getMessage() for r in caplog.records), what="the error")
    time.sleep(0.3)
    assert discord.identifies == 1 and ch.alive()    # no retries; the channel thread idles


def test_a_bad_token_is_reported_at_gateway_bot(discord, channel, caplog):
    discord.token = "the-real-one"
    with caplog.at_level(logging.ERROR):
        channel()
        wait_for(lambda: any("401" in r.getMessage() for r in caplog.records), what="the error")
    assert discord.identifies == 0 and ("GET", "/api/v10/gateway/bot", 401) in discord.rest


def test_files_follow_the_text_and_one_too_large_or_gone_is_named(channel, discord, home, tmp_path):
    ch = channel()
    discord.upload_limit = 1000
    (tmp_path / "plot.png").write_bytes(b"\x89PNG plot")
    (tmp_path / "big.bin").write_bytes(b"x" * 1001)
    post_outbox(home, "discord", "500", "", reply_to="x", metadata={"message_id": "77"},
                media=[str(tmp_path / n) for n in ("plot.png", "big.bin", "gone.txt")])
    ch.wake()
    wait_for(lambda: list((home / "outbox" / "sent").glob("discord.*")), what="the whole message")
    ok = [m for m in discord.sent if m["status"] == 200]
    assert [m["files"] for m in ok] == [{"plot.png": b"\x89PNG plot"}, {}, {}]
    assert ok[0]["body"]["message_reference"]["message_id"] == "77"
    assert [m["body"].get("content") for m in ok[1:]] == [
        "[attachment big.bin could not be sent: Discord answered 413: Request entity too large]",
        "[attachment gone.txt could not be sent: it no longer exists]"]


def test_a_message_that_cannot_be_kept_is_resumed_and_sent_again(channel, discord, home, caplog):
    """A full disk (here: a file where the folder goes) must not count the event as received:
    the session resumes from the one before it, and Discord replays it."""
    unblock = block(home / "state" / "discord" / "pending")
    channel()
    discord.wait_for(lambda: discord.connected, what="IDENTIFY")
    discord.say("still there?")
    wait_for(lambda: "cannot keep a MESSAGE_CREATE event" in caplog.text, what="the failed keep")
    unblock()
    msg = wait_for(lambda: inbox(home), what="the message after the resume")[0]
    assert msg["text"] == "still there?" and discord.resumes >= 1 and discord.identifies == 1
