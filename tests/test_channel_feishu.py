"""The Feishu channel against a fake Feishu (endpoint, binary websocket, token and IM routes) on
127.0.0.1: through the real gateway subprocess where the whole path matters, in-process for the
long connection's corners, and the frame codec against bytes written out by hand."""
import json
import logging

import pytest

from lib.channels import pbframe
from lib.config import load_config
from lib.mail import post_outbox
from tests.fakes.feishu_server import APP_ID, APP_SECRET, SERVICE_ID, FakeFeishu
from tests.conftest import inbox, model_yaml, replies, wait_for, write_config


@pytest.fixture
def feishu():
    with FakeFeishu() as fake:
        yield fake


def configure(home, llm, feishu, extra="", secret=APP_SECRET, domain=None):
    write_config(home, model_yaml(llm) + f"""channels:
  feishu:
    enabled: true
    app_id: {APP_ID}
    app_secret: {secret}
    domain: {domain or feishu.domain}
    allow_from: [ou_alice, ou_bob]
{extra}""")


@pytest.fixture
def gateway_config(home, llm, feishu):
    configure(home, llm, feishu)


def answered(feishu, n, chat="oc_p2p_alice"):
    return feishu.wait_for(lambda: len(feishu.texts(chat)) >= n and feishu.texts(chat),
                           what=f"{n} replies in {chat}")


def test_a_p2p_message_reaches_the_model_and_the_reply_answers_it(gateway, llm, feishu):
    gateway.start()
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    mid = feishu.say("hello there")
    assert answered(feishu, 1) == ["echo: hello there"]
    assert llm.chat_requests[-1]["messages"][-1]["content"] == "hello there"
    reply = feishu.sent[0]
    assert reply["reply_to"] == mid and reply["body"]["msg_type"] == "post"
    assert reply["content"] == {"zh_cn": {"title": "", "content": [
        [{"tag": "md", "text": "echo: hello there"}]]}}
    assert len(reply["body"]["uuid"]) <= 50                  # Feishu's limit for the dedup key
    endpoint = next(b for m, p, b in feishu.requests if p == "/callback/ws/endpoint")
    assert endpoint == {"AppID": APP_ID, "AppSecret": APP_SECRET}
    assert feishu.token_requests == 1                        # one cached tenant token for all
    # the "working" reaction went on before the reply and came off after it
    reaction = feishu.wait_for(lambda: [r for r in feishu.reactions if r["removed_at"]],
                               what="the reaction removed")[0]
    assert reaction["message_id"] == mid and reaction["emoji_type"] == "OnIt"
    assert reaction["at"] < reply["at"] <= reaction["removed_at"]
    ack = feishu.wait_for(lambda: feishu.acks, what="the ack")[0]
    assert ack["ok"] and ack["after"] < 3.0                  # Feishu waits 3 s, then resends


def test_strangers_and_group_chats(gateway, llm, feishu):
    gateway.start()
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    strangers = [feishu.say(t, open_id="ou_mallory", chat_id="oc_p2p_mallory")
                 for t in ("let me in", "please")]
    feishu.say("talking among ourselves", chat_id="oc_group", chat_type="group")
    feishu.say("ask @_user_2 about it", chat_id="oc_group", chat_type="group", mention_bot=True,
               mentions=[{"key": "@_user_2", "open_id": "ou_carol", "name": "Carol"}],
               content={"text": "@_user_1 ask @_user_2 about it"})
    assert answered(feishu, 1, "oc_group") == ["echo: ask @Carol about it"]
    assert answered(feishu, 1, "oc_p2p_mallory") == [
        "This assistant is private. Your feishu id is ou_mallory."]
    assert len(llm.chat_requests) == 1
    assert "ou_mallory" in gateway.logs() and "channels.feishu.allow_from" in gateway.logs()
    feishu.say("hello?", open_id="ou_mallory", chat_id="oc_p2p_mallory")   # told once a day
    feishu.say("still here?")
    answered(feishu, 1)
    feishu.wait_for(lambda: len(feishu.acks) == 6, what="every event acked")
    assert len(feishu.texts("oc_p2p_mallory")) == 1
    assert not {r["message_id"] for r in feishu.reactions} & set(strangers)   # no "working…"
    done = [json.loads(p.read_text()) for p in (gateway.home / "inbox" / "done").glob("*.json")]
    assert {m["chat_id"]: m["metadata"]["is_group"] for m in done if m["sender_id"] == "ou_alice"} \
        == {"oc_group": True, "oc_p2p_alice": False}                            # SPEC §13


def test_a_long_reply_is_split_at_the_limit(gateway, llm, feishu):
    from lib.channels.feishu import LIMIT
    code = "```python\n" + "\n".join(f"print({i})" for i in range(40)) + "\n```"
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 150 for i in range(12)) + "\n\n" + code \
        + "\n\nAfter the code."
    llm.script(text)
    gateway.start()
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    mid = feishu.say("tell me a long story")
    wait_for(lambda: replies(gateway.home), what="the reply filed as sent")
    parts = [m for m in feishu.sent if m["status"] == 200]
    assert len(parts) >= 3
    assert all(len("\n\n".join(r[0]["text"] for r in p["content"]["zh_cn"]["content"])) <= LIMIT
               for p in parts)
    assert " ".join(" ".join(p["text"] for p in parts).split()) == " ".join(text.split())
    assert [p["reply_to"] for p in parts] == [mid] + [None] * (len(parts) - 1)
    assert all(p["chat_id"] == "oc_p2p_alice" for p in parts)
    rows = [r[0]["text"] for r in parts[-1]["content"]["zh_cn"]["content"]]
    assert code in rows and rows[-1] == "After the code."    # the code block has its own row


def test_a_dropped_connection_loses_nothing(gateway, llm, feishu):
    gateway.start()
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    feishu.say("m1")
    answered(feishu, 1)
    feishu.drop()                                   # no close frame: a lost network
    feishu.say("m2")                                # while the bot is away
    feishu.say("m3")
    feishu.wait_for(lambda: feishu.connected, what="the reconnect")
    feishu.say("m4")
    answered(feishu, 4)
    feishu.close(1001, "going away")                # the server closes it properly
    feishu.say("m5 " + "long " * 300, fragments=3, order=[2, 0, 1])
    feishu.wait_for(lambda: feishu.connected, what="the second reconnect")
    feishu.say("m6")
    answered(feishu, 6)
    wait_for(lambda: len(list((gateway.home / "inbox" / "done").glob("*.json"))) == 6, what="done/")
    assert sorted(t.split()[1] for t in feishu.texts()) == [f"m{i}" for i in range(1, 7)]
    assert len(feishu.texts()) == 6                 # each exactly once
    assert feishu.connections >= 3 and not feishu.bad_frames


def test_an_event_acked_before_a_crash_is_taken_up_at_the_next_start(gateway, llm, feishu):
    gateway.start()
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    mid = feishu.new_id()
    feishu.file(mid, "img_v3_big", b"\x89PNG a large picture", "image/png")
    feishu.downloads_open.clear()
    feishu.say(message_id=mid, message_type="post", content={"title": "Look", "content": [
        [{"tag": "img", "image_key": "img_v3_big"}]]})
    feishu.wait_for(lambda: feishu.acks and feishu.downloads, what="the ack, then the download")
    gateway.kill()                                  # acked, not yet in the inbox: Feishu forgot it
    assert not list((gateway.home / "inbox").glob("*/*.json"))
    feishu.downloads_open.set()
    gateway.start()
    assert answered(feishu, 1)[0].startswith("echo: Look\n[attached: ")
    done = wait_for(lambda: list((gateway.home / "inbox" / "done").glob("*.json")),   # the reply
                    what="the message done")        # is sent a moment before the file is moved
    msg = json.loads(done[0].read_text())
    assert open(msg["media"][0], "rb").read() == b"\x89PNG a large picture"
    assert not list((gateway.home / "state" / "feishu" / "pending").glob("*.json"))
    assert len(feishu.acks) == 1 and len(llm.chat_requests) == 1


# --- in-process: the channel object and the long connection's corners ---

@pytest.fixture
def channel(home, llm, run_channel):
    from lib.channels.feishu import FeishuChannel

    def make(feishu, **kw):
        configure(home, llm, feishu, **kw)
        return run_channel(FeishuChannel)
    return make


def test_a_rate_limit_is_honoured(channel, feishu, home):
    ch = channel(feishu)
    feishu.rate_limit(1)
    post_outbox(home, "feishu", "ou_alice", "hi after a pause", media=["/tmp/plan.pdf"])
    ch.wake()                                                       # proactive, to a user
    assert answered(feishu, 1, "ou_alice") == [
        "hi after a pause\n[attachment plan.pdf could not be sent: nanoclaw sends no files over "
        "Feishu]"]
    limited, ok = feishu.sent
    assert limited["status"] == 429 and ok["status"] == 200 and ok["reply_to"] is None
    assert ok["receive_id_type"] == "open_id"
    assert ok["at"] - limited["at"] >= 1.0          # x-ogw-ratelimit-reset, not the 0.05 s backoff
    wait_for(lambda: list((home / "outbox" / "sent").glob("feishu.*")), what="sent/")


def test_a_revoked_token_is_renewed_and_a_withdrawn_message_answered_in_the_chat(
        channel, feishu, home):
    ch = channel(feishu)
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    mid = feishu.say("hello")
    msg = wait_for(lambda: inbox(home), what="inbox")[0]
    assert msg["metadata"]["message_id"] == mid and msg["sender_id"] == "ou_alice"
    feishu.expire_tokens()
    feishu.withdrawn.add(mid)
    post_outbox(home, "feishu", msg["chat_id"], "still answered", reply_to="x",
                metadata=msg["metadata"])
    ch.wake()
    assert answered(feishu, 1) == ["still answered"]
    assert feishu.sent[-1]["reply_to"] is None and feishu.token_requests == 2


def test_images_files_voice_notes_and_rich_text(channel, feishu, home):
    channel(feishu, domain=feishu.domain + "/")     # a trailing slash is fine too
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    ids = [feishu.new_id() for _ in range(4)]
    feishu.file(ids[0], "img_v3_photo", b"\x89PNG fake", "image/png")
    feishu.file(ids[1], "file_v3_notes", b"buy milk", "text/plain")
    feishu.file(ids[2], "file_v3_voice", b"OggS fake audio", "audio/opus")
    feishu.file(ids[3], "img_v3_chart", b"\xff\xd8 fake jpeg", "image/jpeg")
    feishu.say(message_id=ids[0], message_type="image", content={"image_key": "img_v3_photo"})
    feishu.say(message_id=ids[1], message_type="file",
               content={"file_key": "file_v3_notes", "file_name": "notes.txt"})
    feishu.say(message_id=ids[2], message_type="audio",
               content={"file_key": "file_v3_voice", "duration": 2000})
    link = {"tag": "a", "href": "https://x.example", "text": "this"}
    feishu.say(message_id=ids[3], message_type="post", content={"title": "Plan", "content": [
        [{"tag": "text", "text": "see "}, link], [{"tag": "img", "image_key": "img_v3_chart"}]]})
    got = wait_for(lambda: len(inbox(home)) == 4 and inbox(home), what="four messages")
    saved = [[open(p, "rb").read() for p in m["media"]] for m in got]
    assert saved == [[b"\x89PNG fake"], [b"buy milk"], [b"OggS fake audio"],
                     [b"\xff\xd8 fake jpeg"]]
    assert got[0]["media"][0].endswith(".png") and got[1]["media"][0].endswith("notes.txt")
    assert got[2]["text"] == "[voice note, transcribed] hello from a voice note"
    assert got[3]["text"] == "Plan\nsee this (https://x.example)"
    assert [t for _, _, t in feishu.downloads] == ["image", "file", "file", "image"]


def test_the_ack_does_not_wait_for_a_slow_download_or_its_transcription(channel, feishu, home):
    channel(feishu)
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    mid = feishu.new_id()
    feishu.file(mid, "file_v3_voice", b"OggS a long voice note", "audio/opus")
    feishu.downloads_open.clear()                   # the file takes as long as the test likes
    feishu.say(message_id=mid, message_type="audio", content={"file_key": "file_v3_voice"})
    ack = feishu.wait_for(lambda: feishu.acks, what="the ack")[0]
    assert ack["ok"] and ack["after"] < 3.0         # Feishu's window, while the file still comes
    feishu.wait_for(lambda: feishu.downloads, what="the download begun")
    kept = list((home / "state" / "feishu" / "pending").glob("*.json"))
    assert not inbox(home) and len(kept) == 1       # acked with the event kept on disk
    feishu.downloads_open.set()
    msg = wait_for(lambda: inbox(home), what="the message")[0]
    assert msg["text"] == "[voice note, transcribed] hello from a voice note"
    assert open(msg["media"][0], "rb").read() == b"OggS a long voice note"
    wait_for(lambda: not kept[0].exists(), what="the record removed")


def test_fragments_are_joined_and_a_redelivery_is_handled_once(channel, feishu, home):
    channel(feishu)
    feishu.wait_for(lambda: feishu.connected, what="the long connection")
    text = "fragmented " * 400
    feishu.say(text, fragments=4, order=[3, 1, 0, 2])
    assert wait_for(lambda: inbox(home), what="inbox")[0]["text"] == text.strip()
    ack = feishu.wait_for(lambda: feishu.acks, what="the ack")[0]
    assert ack["ok"] and ack["headers"]["sum"] == "4" and int(ack["headers"]["biz_rt"]) >= 0
    feishu.lose_acks = True                         # Feishu never heard the ack: it sends again
    feishu.say("once")
    wait_for(lambda: len(inbox(home)) == 2, what="the next message")
    feishu.wait_for(lambda: len(feishu.acks) == 2, what="its ack")
    feishu.drop()
    feishu.wait_for(lambda: len(feishu.acks) == 3, what="the redelivery acked")
    assert len(inbox(home)) == 2 and all(a["ok"] for a in feishu.acks)   # but handled once


def test_pings_pongs_and_a_silent_server(channel, home):
    with FakeFeishu(ping_interval=1) as feishu:
        feishu.pong_config = {"PingInterval": 2, "ReconnectCount": -1}
        ch = channel(feishu)
        feishu.wait_for(lambda: len(feishu.pings) >= 1, what="a ping")
        assert feishu.pings[0]["service"] == SERVICE_ID
        wait_for(lambda: ch.ping_s == 2.0, what="the pong's settings applied")
        feishu.pong = False                         # the link is dead but says nothing
        feishu.wait_for(lambda: feishu.connections == 2, timeout=10, what="a new connection")
        feishu.pong = True
        feishu.say("after the reconnect")
        assert wait_for(lambda: inbox(home), what="inbox")[0]["text"] == "after the reconnect"


def test_refused_credentials_are_logged_clearly(channel, feishu, caplog):
    with caplog.at_level(logging.ERROR):
        ch = channel(feishu, secret="wrong")
        wait_for(lambda: any("app_secret" in r.getMessage() for r in caplog.records),
                 what="the error")
    assert feishu.connections == 0 and ch.alive()


def test_the_lark_domain_is_used_for_every_call(home, llm, feishu):
    from lib.channels.feishu import FeishuChannel
    configure(home, llm, feishu, domain="https://open.larksuite.com/")
    ch = FeishuChannel(load_config(), home)
    assert ch.url("/callback/ws/endpoint") == "https://open.larksuite.com/callback/ws/endpoint"
    configure(home, llm, feishu)
    write_config(home, (home / "config.yaml").read_text().replace(
        f"    domain: {feishu.domain}\n", ""))
    assert load_config().channels.feishu.domain == "https://open.feishu.cn"


# --- the frame codec ---

# SeqID 300, LogID 2, service 33554678, method 1, headers type=event and sum=1,
# payload {"a":1}, LogIDNew "x": each field written out by hand.
HAND_BUILT = bytes([
    0x08, 0xAC, 0x02,                   # 1 SeqID: 300 as a two-byte varint
    0x10, 0x02,                         # 2 LogID
    0x18, 0xF6, 0x81, 0x80, 0x10,       # 3 service 33554678 (0x20000F6)
    0x20, 0x01,                         # 4 method: data
    0x2A, 0x0D, 0x0A, 0x04, *b"type", 0x12, 0x05, *b"event",       # 5 header type=event
    0x2A, 0x08, 0x0A, 0x03, *b"sum", 0x12, 0x01, *b"1",            # 5 header sum=1
    0x42, 0x07, *b'{"a":1}',            # 8 payload
    0x4A, 0x01, *b"x",                  # 9 LogIDNew
])


def test_the_codec_reads_and_writes_hand_built_bytes():
    frame = pbframe.decode(HAND_BUILT)
    assert frame == pbframe.Frame(seq_id=300, log_id=2, service=33554678, method=1,
                                  headers=[("type", "event"), ("sum", "1")],
                                  payload=b'{"a":1}', log_id_new="x")
    assert pbframe.encode(frame) == HAND_BUILT
    assert frame.header("sum") == "1" and frame.header("seq", "0") == "0"
    big = pbframe.Frame(seq_id=2**63 + 5, service=-1, payload=bytes(range(256)) * 3,
                        headers=[("k", "")])
    assert pbframe.decode(pbframe.encode(big)) == big           # long lengths, negative int32
    ping = pbframe.encode(pbframe.Frame(service=SERVICE_ID, headers=[("type", "ping")]))
    assert ping[:2] == b"\x08\x00" and b"\x20\x00" in ping      # required fields written as 0
    # unknown fields (a fixed64 and a later string) are skipped
    assert pbframe.decode(HAND_BUILT + b"\x51" + bytes(8) + b"\x62\x01z") == frame
    with pytest.raises(ValueError):
        pbframe.decode(b"\x42\x09short")


def test_the_fake_speaks_the_same_frames():
    """The fake's codec is its own; it reads what ours writes and the other way round."""
    from tests.fakes.feishu_server import make_frame, read_frame
    raw = make_frame(1, [("type", "event"), ("seq", "0")], b"{}", seq_id=7, log_id=9)
    frame = pbframe.decode(raw)
    assert (frame.seq_id, frame.log_id, frame.service, frame.method, frame.payload) == \
        (7, 9, SERVICE_ID, 1, b"{}")
    back = read_frame(pbframe.encode(frame))
    assert back["headers"] == [("type", "event"), ("seq", "0")] and back["SeqID"] == 7


def test_an_event_kept_before_a_crash_knows_who_the_bot_is(channel, feishu, home):
    """Kept events are taken up as the channel starts, maybe before the connection has read the
    bot's own id: a group message that @mentions someone else must not count as ours then."""
    from tests.fakes.feishu_server import APP_ID, TENANT
    message = {"message_id": "om_kept", "chat_id": "oc_group", "chat_type": "group",
               "message_type": "text", "create_time": "1767225600000",
               "content": json.dumps({"text": "@_user_1 can you check?"}),
               "mentions": [{"key": "@_user_1", "name": "Carol", "tenant_key": TENANT,
                             "id": {"open_id": "ou_carol"}}]}
    kept = home / "state" / "feishu" / "pending"
    kept.mkdir(parents=True)
    (kept / "evt-kept.json").write_text(json.dumps({"schema": "2.0", "header": {
        "event_id": "evt", "event_type": "im.message.receive_v1", "app_id": APP_ID}, "event": {
        "sender": {"sender_id": {"open_id": "ou_alice"}, "sender_type": "user"},
        "message": message}}))
    channel(feishu)
    feishu.say("and you?", chat_id="oc_group", chat_type="group", mention_bot=True)
    msgs = wait_for(lambda: inbox(home), what="the message that mentions the bot")
    assert [m["text"] for m in msgs] == ["and you?"]
    wait_for(lambda: not list(kept.glob("*.json")), what="the kept files gone (each goes just "
             "after its message is in the inbox)")
