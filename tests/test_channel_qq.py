"""The QQ channel against a fake QQ (token endpoint, REST and gateway websocket) on 127.0.0.1:
through the real gateway subprocess where the whole path matters, in-process for the corners
(tokens, msg_seq, rate limits, close codes)."""
import logging
import sys
import time

from pathlib import Path

import pytest

from lib.channels import wsgateway
from lib.config import load_config
from lib.errors import ConfigError
from lib.mail import post_outbox
from tests.fakes.qq_server import FakeQQ
from tests.conftest import inbox, kill_mid_download, model_yaml, replies, wait_for, write_config

ALICE, MALLORY = "OPENID_ALICE", "OPENID_MALLORY"


@pytest.fixture
def qq():
    with FakeQQ(app_id="1020", secret="s3cret") as fake:
        yield fake


def configure(home, llm, qq, extra="", groq=True):
    write_config(home, model_yaml(llm, groq="gk" if groq else None) + f"""channels:
  qq:
    enabled: true
    app_id: "1020"
    secret: s3cret
    api_base: {qq.api_base}
    token_url: {qq.token_url}
    allow_from: ["{ALICE}"]
{extra}""")


@pytest.fixture
def gateway_config(home, llm, qq):
    configure(home, llm, qq)


def answered(qq, n, openid=ALICE):
    return qq.wait_for(lambda: len(qq.texts(openid)) >= n and qq.texts(openid),
                       what=f"{n} replies to {openid}")


def test_a_private_message_reaches_the_model_and_the_reply_answers_it(gateway, llm, qq):
    gateway.start()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    ident = next(m["d"] for m in qq.received if m["op"] == 2)
    assert ident["token"] == f"QQBot {qq.tokens[0]['token']}"
    assert ident["intents"] == 1 << 25 and ident["shard"] == [0, 1]
    assert ("GET", "/gateway", 200) in qq.rest
    msg_id = qq.say("hello there", openid=ALICE)
    assert answered(qq, 1) == ["echo: hello there"]
    reply = qq.replies()[0]
    assert reply["body"]["msg_id"] == msg_id and reply["body"]["msg_type"] == 0
    typing = qq.typing[0]                       # the input notice came first, with msg_seq 1
    assert typing["body"]["msg_id"] == msg_id and typing["body"]["input_notify"]["input_type"] == 1
    assert typing["at"] < reply["at"]
    assert [typing["body"]["msg_seq"], reply["body"]["msg_seq"]] == [1, 2]
    assert llm.chat_requests[-1]["messages"][-1]["content"] == "hello there"


def test_a_stranger_is_refused_and_told_their_openid_once(gateway, llm, qq):
    gateway.start()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    first = qq.say("let me in", openid=MALLORY)
    qq.say("please", openid=MALLORY)
    notice = f"This assistant is private. Your qq id is {MALLORY}."
    assert answered(qq, 1, MALLORY) == [notice]
    assert qq.replies(MALLORY)[0]["body"]["msg_id"] == first          # a passive reply
    qq.say("still here?", openid=ALICE)
    answered(qq, 1)
    assert qq.texts(MALLORY) == [notice] and not [t for t in qq.typing if t["openid"] == MALLORY]
    assert len(llm.chat_requests) == 1
    logs = gateway.logs()
    assert f"refused sender {MALLORY}" in logs and "channels.qq.allow_from" in logs


def test_a_long_reply_is_split_with_increasing_msg_seq(gateway, llm, qq):
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 150 for i in range(8))
    llm.script(text)
    gateway.start()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    msg_id = qq.say("tell me a long story")
    wait_for(lambda: replies(gateway.home), what="the reply filed as sent")
    parts = qq.texts()
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    bodies = [m["body"] for m in qq.replies()]
    assert all(b["msg_id"] == msg_id for b in bodies)
    assert [b["msg_seq"] for b in bodies] == list(range(2, 2 + len(parts)))    # 1 was "typing"
    assert all(m["status"] == 200 for m in qq.sent)                 # no duplicate msg_seq


def test_a_dropped_connection_loses_nothing(gateway, llm, qq):
    gateway.start()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.say("m1")
    answered(qq, 1)
    qq.drop()                                       # no close frame: a lost network
    qq.say("m2")                                    # while the bot is away
    qq.say("m3")
    qq.wait_for(lambda: qq.connected, what="RESUME")
    qq.say("m4")
    answered(qq, 4)
    qq.reconnect()                                  # op 7
    qq.say("m5")
    qq.wait_for(lambda: qq.resumes == 2 and qq.connected, what="RESUME after op 7")
    qq.close(4009, "session timed out")             # QQ: reconnect and resume
    qq.say("m6")
    answered(qq, 6)
    wait_for(lambda: len(list((gateway.home / "inbox" / "done").glob("*.json"))) == 6, what="done/")
    assert sorted(qq.texts()) == [f"echo: m{i}" for i in range(1, 7)]         # each exactly once
    resumes = [m["d"] for m in qq.received if m["op"] == 6]
    assert len(resumes) >= 3 and all(r["seq"] and r["session_id"] for r in resumes)
    assert all(r["token"].startswith("QQBot ") for r in resumes)
    assert sum(m["op"] == 2 for m in qq.received) == 1              # never identified again


def test_a_message_in_hand_when_the_gateway_is_killed_is_answered_after_the_restart(
        gateway, llm, qq):
    """QQ sends an event once: one read but not yet in the inbox (its file still coming) must
    survive a kill -9."""
    gateway.start()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    big = qq.attachment("big.bin", b"a large file")
    kill_mid_download(gateway, qq, lambda: qq.say("keep this", attachments=[big]))
    assert answered(qq, 1)[0].startswith("echo: keep this\n[attached: ")
    assert len(llm.chat_requests) == 1


# --- in-process: the channel object ---

@pytest.fixture
def channel(home, llm, qq, run_channel):
    from lib.channels.qq import QQChannel

    def make(extra="", groq=True, fake=None):
        configure(home, llm, fake or qq, extra, groq)
        return run_channel(QQChannel)
    return make


def send(ch, home, text, msg_id=None):
    post_outbox(home, "qq", ALICE, text, metadata={"message_id": msg_id} if msg_id else {})
    ch.wake()


def test_voice_notes_are_transcribed_and_files_downloaded(channel, qq, home, llm):
    channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    voice = qq.attachment("note.silk", b"SILK data", "voice", wav=b"RIFF fake wav", asr="hi QQ")
    doc = qq.attachment("notes.txt", b"buy milk")
    qq.say("", attachments=[voice, doc])
    msg = wait_for(lambda: inbox(home), what="inbox")[0]
    assert msg["sender_id"] == ALICE and msg["chat_id"] == ALICE and msg["metadata"]["message_id"]
    assert msg["text"] == "[voice note, transcribed] hello from a voice note"
    saved = [(Path(p).name.split("-", 1)[1], Path(p).read_bytes()) for p in msg["media"]]
    assert saved == [("note.wav", b"RIFF fake wav"), ("notes.txt", b"buy milk")]   # QQ's WAV copy
    assert any(r["path"] == "/v1/audio/transcriptions" for r in llm.requests)


def test_without_a_groq_key_qqs_own_transcript_is_used(channel, qq, home):
    channel(groq=False)
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.say("", attachments=[qq.attachment("n.amr", b"#!AMR", "voice", asr="call mum")])
    assert wait_for(lambda: inbox(home), what="inbox")[0]["text"] == \
        "[voice note, transcribed by QQ] call mum"


def test_a_rate_limit_is_honoured(channel, qq, home):
    ch = channel()
    qq.rate_limit(1)
    send(ch, home, "hi after a pause", "ROBOT1.0_rl")
    answered(qq, 1)
    limited, ok = [m for m in qq.sent if m["body"].get("msg_type") == 0]
    assert limited["status"] == 429 and ok["status"] == 200
    assert ok["at"] - limited["at"] >= 1.0          # waited Retry-After, not the 0.05 s backoff
    assert limited["body"]["msg_seq"] == ok["body"]["msg_seq"]      # the same part, retried
    wait_for(lambda: list((home / "outbox" / "sent").glob("qq.*")), what="sent/")


def test_a_refused_token_is_renewed_once_and_the_send_retried(channel, qq, home):
    ch = channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.expire_tokens()
    send(ch, home, "after the token ran out")
    assert answered(qq, 1) == ["after the token ran out"]
    posts = [status for method, path, status in qq.rest if path == f"/v2/users/{ALICE}/messages"]
    assert posts == [401, 200] and len(qq.tokens) == 2
    assert qq.sent[0]["token"] == qq.tokens[1]["token"] and "msg_id" not in qq.sent[0]["body"]


def test_a_resume_with_a_refused_token_gets_a_new_token(channel, qq, home):
    channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.expire_tokens()
    qq.drop()
    qq.wait_for(lambda: qq.resumes == 2 and qq.connected, what="a RESUME with a new token")
    first, second = [m["d"]["token"] for m in qq.received if m["op"] == 6]
    assert first == f"QQBot {qq.tokens[0]['token']}" and second == f"QQBot {qq.tokens[1]['token']}"
    assert qq.identifies == 1                       # the session survived the refusal


def test_the_token_is_renewed_before_it_expires(channel, home):
    with FakeQQ(app_id="1020", secret="s3cret", expires_in=2) as short:    # renewed after 1 s
        ch = channel(fake=short)
        short.wait_for(lambda: short.connected, what="IDENTIFY")
        send(ch, home, "one")
        answered(short, 1)
        last = short.tokens[-1]
        wait_for(lambda: time.monotonic() > last["at"] + 1.1, what="a second")
        send(ch, home, "two")
        answered(short, 2)
        ch.stop()
    assert [m["status"] for m in short.sent] == [200, 200]             # never refused
    assert short.sent[1]["token"] != short.sent[0]["token"]


def test_msg_seq_used_before_a_restart_is_skipped(channel, qq, home):
    ch = channel()
    qq.use_seq("ROBOT1.0_old", 1)                   # by the run before a restart
    qq.use_seq("ROBOT1.0_old", 2)
    send(ch, home, "the answer", "ROBOT1.0_old")
    answered(qq, 1)
    assert [(m["status"], m["body"]["msg_seq"]) for m in qq.sent] == [(400, 1), (400, 2), (200, 3)]


def test_a_message_too_old_to_answer_is_sent_unprompted(channel, qq, home):
    ch = channel()
    msg_id = qq.say("a long job")
    qq.expire_reply(msg_id)
    send(ch, home, "done at last", msg_id)
    answered(qq, 1)
    assert "msg_id" not in qq.replies()[0]["body"]


def test_close_4006_means_a_new_identify(channel, qq, home):
    channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.close(4006, "invalid session")
    qq.wait_for(lambda: qq.identifies == 2 and qq.connected, what="a second IDENTIFY")
    assert qq.resumes == 0
    qq.say("after 4006")
    assert wait_for(lambda: inbox(home), what="inbox")[0]["text"] == "after 4006"


def test_an_invalid_session_means_a_new_identify(channel, qq, home, monkeypatch):
    monkeypatch.setattr(wsgateway.GatewaySession, "invalid_session_wait", (0.05, 0.1))
    channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    qq.invalidate(resumable=False)
    qq.wait_for(lambda: qq.identifies == 2, what="a second IDENTIFY")


def test_a_banned_bot_stops_retrying_with_a_clear_error(channel, qq, caplog):
    with caplog.at_level(logging.ERROR):
        ch = channel()
        qq.wait_for(lambda: qq.connected, what="IDENTIFY")
        qq.close(4915, "bot banned")
        wait_for(lambda: any("banned" in r.getMessage() for r in caplog.records), what="error")
    time.sleep(0.3)
    assert qq.identifies == 1 and qq.resumes == 0 and ch.alive()


def test_wrong_credentials_are_reported_and_not_retried(channel, qq, caplog):
    qq.secret = "the-real-one"
    with caplog.at_level(logging.ERROR):
        ch = channel()
        wait_for(lambda: any("channels.qq.secret" in r.getMessage() for r in caplog.records),
                 what="the error")
    time.sleep(0.3)
    assert qq.identifies == 0 and not qq.tokens and ch.alive()
    assert [r for r in qq.rest if r[1] == "/app/getAppAccessToken"] == [
        ("POST", "/app/getAppAccessToken", 200)]


def test_a_missing_package_is_named_in_one_line(home, llm, qq, monkeypatch):
    from lib.channels import enabled
    configure(home, llm, qq)
    monkeypatch.delitem(sys.modules, "lib.channels.qq", raising=False)
    monkeypatch.setitem(sys.modules, "websocket", None)         # as if it were not installed
    with pytest.raises(ConfigError) as e:
        enabled(load_config(), home)
    assert "websocket-client" in str(e.value) and "\n" not in str(e.value)


def test_files_are_uploaded_as_base64_and_sent_as_rich_media_after_the_text(channel, qq, home,
                                                                             tmp_path):
    ch = channel()
    qq.refuse_file_types = {4}
    files = {"photo.png": b"\x89PNG photo", "clip.mp4": b"ftyp clip", "notes.pdf": b"%PDF"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    post_outbox(home, "qq", ALICE, "Look", metadata={"message_id": "M1"},
                media=[str(tmp_path / n) for n in [*files, "gone.jpg"]])
    ch.wake()
    wait_for(lambda: list((home / "outbox" / "sent").glob("qq.*")), what="the whole message")
    assert qq.media() == [(1, b"\x89PNG photo"), (2, b"ftyp clip")]
    assert qq.texts() == [
        "Look", "[attachment notes.pdf could not be sent: QQ answered 400: 850029 file type not "
        "supported]", "[attachment gone.jpg could not be sent: it no longer exists]"]
    sent = [m["body"] for m in qq.sent]
    assert [(b["msg_type"], b["msg_id"], b["msg_seq"]) for b in sent] == [
        (0, "M1", 1), (7, "M1", 2), (7, "M1", 3), (0, "M1", 4), (0, "M1", 5)]


def test_past_five_passive_replies_the_rest_goes_unprompted(channel, qq, home):
    """QQ takes five passive calls per message (the input notice counts); a reply in more parts
    sends the rest without msg_id instead of having them refused (22009)."""
    ch = channel()
    qq.wait_for(lambda: qq.connected, what="IDENTIFY")
    msg_id = qq.say("tell me everything")
    wait_for(lambda: inbox(home), what="the message")
    qq.wait_for(lambda: qq.typing, what="the input notice")
    send(ch, home, "\n\n".join(f"Part {i}: " + "w" * 1900 for i in range(6)), msg_id)
    wait_for(lambda: list((home / "outbox" / "sent").glob("qq.*")), what="sent/")
    texts = [m for m in qq.sent if m["body"].get("msg_type") == 0]
    assert all(m["status"] == 200 for m in texts) and len(texts) == 6
    assert [bool(m["body"].get("msg_id")) for m in texts] == [True] * 4 + [False] * 2


def test_a_message_whose_replies_an_earlier_run_used_up_is_answered_unprompted(channel, qq,
                                                                                home):
    ch = channel()
    qq.use_replies("ROBOT1.0_used", 5)
    send(ch, home, "still an answer", "ROBOT1.0_used")
    wait_for(lambda: list((home / "outbox" / "sent").glob("qq.*")), what="sent/")
    refused, ok = [m for m in qq.sent if m["body"].get("msg_type") == 0]
    assert refused["status"] == 400 and "msg_id" not in ok["body"] and ok["status"] == 200
