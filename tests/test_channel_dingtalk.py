"""DingTalk: the real gateway (or the channel in-process) against a fake DingTalk on 127.0.0.1."""
import json
import sys

import pytest

from lib import maildir
from lib.channels import enabled
from lib.channels.dingtalk import LIMIT
from lib.config import load_config
from lib.errors import ConfigError
from lib.mail import post_outbox
from tests.fakes.dingtalk_server import FakeDingTalk
from tests.conftest import Gateway, inbox, model_yaml, wait_for, write_config

OWNER = "manager4711"


@pytest.fixture
def ding():
    with FakeDingTalk() as server:
        yield server


def configure(home, llm, ding, extra=""):
    write_config(home, model_yaml(llm, groq="gsk-fake", provider=None) + f"""channels:
  dingtalk:
    enabled: true
    client_id: {ding.client_id}
    client_secret: {ding.client_secret}
    api_base: '{ding.api_base}'
    allow_from: [{OWNER}]
{extra}""")


@pytest.fixture
def gateway_config(home, llm, ding):
    configure(home, llm, ding)


def asked(llm):
    return [b["messages"][-1]["content"] for b in llm.chat_requests]


def all_acked(ding):
    ids = {f["headers"]["messageId"] for f in ding.frames}
    return ids and ids <= {a["headers"]["messageId"] for a in ding.acks} and not ding.unacked()


def test_a_private_message_is_answered_through_its_session_webhook(gateway, llm, ding):
    llm.script("## Done\n**all** good")
    gateway.start()
    wait_for(ding.connected, what="stream connection")
    opened = ding.opens[0]
    assert opened["subscriptions"] == [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}]
    assert opened["ua"].startswith("nanoclaw/")
    ding.message(OWNER, "hello there")
    sent = wait_for(lambda: ding.sent, what="reply")[0]
    assert asked(llm) == ["hello there"]
    assert sent == {"via": "webhook", "to": f"cidPRIVATE{OWNER}", "title": "Done",
                    "text": "## Done\n**all** good", "time": sent["time"]}
    assert ding.tokens_issued == 0                      # the webhook needs no access token
    inbox = json.loads(next((gateway.home / "inbox" / "done").glob("*.json")).read_text())
    assert inbox["chat_id"] == OWNER and inbox["sender_id"] == OWNER
    meta = inbox["metadata"]
    assert meta["session_webhook"].startswith(ding.api_base) and meta["staff_id"] == OWNER
    assert meta["conversation_type"] == "1" and meta["session_webhook_expires"] > 0
    assert meta["is_group"] is False
    wait_for(lambda: all_acked(ding), what="every frame acked")
    assert all(a["code"] == 200 and a["message"] == "OK" and isinstance(a["data"], str) and
               a["headers"]["contentType"] == "application/json" for a in ding.acks)
    assert gateway.term() == 0 and "Traceback" not in gateway.logs()


def test_a_stranger_is_told_their_id_once_and_never_reaches_the_model(gateway, llm, ding):
    gateway.start()
    wait_for(ding.connected, what="stream connection")
    ding.message("stranger9", "let me in")
    ding.message("stranger9", "please", group=True)
    ding.message(OWNER, "me again")
    wait_for(lambda: any(s["to"] == f"cidPRIVATE{OWNER}" for s in ding.sent), what="owner reply")
    assert asked(llm) == ["me again"]
    told = [s for s in ding.sent if s["to"] != f"cidPRIVATE{OWNER}"]
    assert [(s["to"], s["text"]) for s in told] == [
        ("cidPRIVATEstranger9", "This assistant is private. Your dingtalk id is stranger9.")]
    wait_for(lambda: all_acked(ding), what="every frame acked, the strangers' too")


def test_ping_is_echoed_and_disconnect_opens_a_new_connection(gateway, llm, ding):
    gateway.start()
    wait_for(ding.connected, what="stream connection")
    data = ding.ping()
    ack = wait_for(lambda: [a for a in ding.acks if a["data"] == data], what="ping ack")[0]
    assert ack["code"] == 200 and ack["headers"]["messageId"] == ding.frames[-1]["headers"][
        "messageId"]
    ding.disconnect()
    wait_for(lambda: ding.connections == 2 and ding.connected(), what="a new connection")
    assert len(ding.opens) == 2                         # with a new ticket from connections/open
    ding.message(OWNER, "still there?")
    wait_for(lambda: ding.sent, what="reply on the new connection")
    wait_for(lambda: all_acked(ding), what="every frame acked")


def test_a_long_reply_is_split_at_the_limit(gateway, llm, ding):
    paragraphs = [f"段落 {i}: " + "字 " * 700 for i in range(6)]           # ~8,500 characters
    llm.script("\n\n".join(paragraphs))
    gateway.start()
    ding.message(OWNER, "tell me a lot")
    wait_for(lambda: len(ding.sent) >= 3 and
             " ".join(ding.texts()).split() == " ".join(paragraphs).split(), what="all parts")
    assert all(len(t) <= LIMIT for t in ding.texts()) and len(ding.sent) == 3


def test_nothing_is_lost_or_doubled_across_drops_lost_acks_and_redelivery(gateway, llm, ding):
    gateway.start()
    wait_for(ding.connected, what="first connection")
    ding.message(OWNER, "message 0")
    wait_for(lambda: ding.sent, what="the first reply")
    ding.drop()                                         # gone mid-conversation, no close frame
    ding.message(OWNER, "message 1")                    # while nobody is connected
    ding.message(OWNER, "message 2")
    wait_for(lambda: len(ding.sent) == 3 and not ding.unacked(), what="replies after reconnect")
    assert ding.connections == 2
    ding.lose_acks(1)                                   # message 3 is handled, its ack is lost…
    ding.message(OWNER, "message 3")
    wait_for(lambda: len(ding.sent) == 4, what="four replies")
    assert len(ding.unacked()) == 1
    ding.drop()                                         # …so DingTalk sends it again afterwards
    wait_for(lambda: ding.connections == 3 and not ding.unacked(), what="the redelivery acked")
    ding.message(OWNER, "last")
    wait_for(lambda: len(ding.sent) == 5, what="the last reply")
    sent = [f["headers"]["messageId"] for f in ding.frames if f["type"] == "CALLBACK"]
    assert len(sent) == 6 and len(set(sent)) == 6       # message 3 twice, under two messageIds
    assert asked(llm) == [f"message {i}" for i in range(4)] + ["last"]
    assert sorted(ding.texts()) == sorted(f"echo: {t}" for t in asked(llm))



def test_a_message_redelivered_after_a_crash_is_not_answered_twice(gateway, llm, ding):
    """The ack is lost and the gateway killed: DingTalk sends the message again to the next
    process, whose memory of what it has seen is empty. The inbox name (msgId) remembers it."""
    gateway.start()
    wait_for(ding.connected, what="first connection")
    ding.lose_acks(1)
    ding.message(OWNER, "only once")
    wait_for(lambda: list((gateway.home / "outbox" / "sent").glob("dingtalk.*")),
             what="the reply, filed as sent")     # (killed before that, it is sent again)
    gateway.kill()
    gateway.start()
    wait_for(lambda: ding.connections == 2 and not ding.unacked(), what="the redelivery acked")
    ding.message(OWNER, "next")
    wait_for(lambda: len(ding.sent) == 2, what="the next reply")
    assert asked(llm) == ["only once", "next"]

def test_an_expired_webhook_falls_back_to_batch_send_and_a_rate_limit_is_honoured(home, llm):
    with FakeDingTalk(webhook_ttl=-1) as ding:
        configure(home, llm, ding)
        ding.rate_limit("/v1.0/robot/oToMessages/batchSend", retry_after=2)
        g = Gateway(home).start()
        try:
            ding.message(OWNER, "hurry")
            sent = wait_for(lambda: ding.sent, what="reply after the limit")[0]
            ding.message(OWNER, "again", group=True)
            group = wait_for(lambda: len(ding.sent) == 2 and ding.sent[1], what="group reply")
        finally:
            g.kill()
    assert sent["via"] == "batchSend" and sent["to"] == OWNER and sent["text"] == "echo: hurry"
    refused = next(c for c in ding.calls if c["path"].endswith("batchSend"))
    assert sent["time"] - refused["time"] >= 2
    assert "retry 1 in 2.0s" in g.logs()
    assert group["via"] == "group" and group["to"].startswith("cidGROUP")
    done = [json.loads(p.read_text()) for p in (home / "inbox" / "done").glob("*.json")]
    assert sorted(m["metadata"]["is_group"] for m in done) == [False, True]      # SPEC §13
    assert not any(c["path"] == "/robot/sendBySession" for c in ding.calls)
    assert ding.tokens_issued == 1                      # the access token is cached


def test_pictures_are_downloaded_and_voice_uses_dingtalks_transcript(gateway, llm, ding):
    gateway.start()
    picture = ding.add_file("photo.jpg", b"\xff\xd8fake jpeg")
    voice = ding.add_file("voice.amr", b"#!AMR fake")
    ding.message(OWNER, msgtype="picture", content={"downloadCode": picture})
    ding.message(OWNER, msgtype="audio", content={"downloadCode": voice, "duration": 3000,
                                                  "recognition": "turn on the lights"})
    ding.message(OWNER, msgtype="richText", content={"richText": [
        {"text": "look at this"}, {"type": "picture", "downloadCode": "dcMISSING"}]})
    wait_for(lambda: len(ding.sent) == 3, what="three replies")
    pic, audio, rich = asked(llm)
    saved = sorted((gateway.home / "media" / "dingtalk").iterdir())
    assert [p.read_bytes() for p in saved] == [b"\xff\xd8fake jpeg", b"#!AMR fake"]
    assert str(saved[0]) in pic[0]["text"]                  # the picture goes to the model too
    assert pic[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "[voice note, transcribed] turn on the lights" in audio
    assert rich == "look at this\n[file picture1.jpg could not be downloaded]"
    first = json.loads(sorted((gateway.home / "inbox" / "done").glob("*.json"))[0].read_text())
    assert first["media"] == [str(saved[0])]


def test_a_slow_download_holds_up_neither_the_ack_nor_a_ping(home, llm, ding, run_channel):
    """The socket thread only keeps the message on disk and acks it; the file comes after, on
    another thread, so DingTalk's pings are answered meanwhile and no resend is provoked."""
    from lib.channels.dingtalk import DingTalkChannel
    configure(home, llm, ding)
    run_channel(DingTalkChannel)
    wait_for(ding.connected, what="stream connection")
    picture = ding.add_file("photo.jpg", b"\xff\xd8a large picture")
    ding.downloads_open.clear()
    msg_id = ding.message(OWNER, msgtype="picture", content={"downloadCode": picture})
    wait_for(lambda: ding.downloads, what="the download begun")
    data = ding.ping()
    wait_for(lambda: [a for a in ding.acks if a["data"] == data], what="the ping answered")
    assert not list((home / "inbox" / "new").glob("*.json"))   # the file still comes
    assert len(ding.acks) == 2 and not ding.unacked()
    ding.downloads_open.set()
    msg = wait_for(lambda: inbox(home), what="the message")[0]
    assert msg["metadata"]["msg_id"] == msg_id and len(msg["media"]) == 1


def test_a_proactive_message_goes_to_a_staff_id_or_a_group(home, llm, ding):
    """What cron or the message tool sends has no webhook: batchSend or groupMessages/send."""
    configure(home, llm, ding)
    maildir.ensure(home / "outbox", ("sent", "failed"))
    post_outbox(home, "dingtalk", OWNER, "reminder")
    post_outbox(home, "dingtalk", "cidGROUP77", "to the team", media=["/tmp/plan.pdf"])
    channel = enabled(load_config(), home)[0]
    channel.start()
    try:
        wait_for(lambda: len(ding.sent) == 2, what="two messages")
    finally:
        channel.stop()
    assert sorted((s["via"], s["to"], s["text"]) for s in ding.sent) == [
        ("batchSend", OWNER, "reminder"), ("group", "cidGROUP77", "to the team\n[attachment "
                                           "plan.pdf could not be sent: nanoclaw sends no files "
                                           "over DingTalk]")]


def test_a_missing_package_is_named_in_one_line(home, llm, ding, monkeypatch):
    configure(home, llm, ding)
    monkeypatch.setitem(sys.modules, "websocket", None)          # as if it were not installed
    with pytest.raises(ConfigError) as e:
        enabled(load_config(), home)
    assert "websocket-client" in str(e.value) and "\n" not in str(e.value)


def test_refused_credentials_are_logged_with_the_keys_to_check(home, llm, ding, caplog):
    configure(home, llm, ding)
    write_config(home, (home / "config.yaml").read_text().replace(ding.client_secret, "wrong"))
    channel = enabled(load_config(), home)[0]
    channel.start()
    try:
        wait_for(lambda: "client_secret" in caplog.text, what="the warning")
    finally:
        channel.stop()
    assert "InvalidAuthentication" in caplog.text and not ding.connected()
    assert channel.alive() is False                     # stopped cleanly, between two tries
