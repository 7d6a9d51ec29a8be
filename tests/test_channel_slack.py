"""Slack: the real gateway (or the channel in-process) against a fake Slack on 127.0.0.1."""
import json

import pytest

from lib.channels.slack import LIMIT, SlackChannel, to_mrkdwn
from lib.config import load_config
from tests.fakes.slack_server import BOT_USER, FakeSlack
from tests.conftest import block, inbox, kill_mid_download, model_yaml, wait_for, write_config

OWNER = "U0OWNER"


@pytest.fixture
def slack():
    with FakeSlack() as server:
        yield server


def configure(home, llm, slack, extra=""):
    """`extra`: more slack settings; an allow_from in it replaces the owner-only default."""
    allow = "" if "\n    allow_from:" in "\n" + extra else f"    allow_from: [{OWNER}]\n"
    write_config(home, model_yaml(llm, groq="gsk-fake", provider=None) + f"""channels:
  slack:
    enabled: true
    bot_token: {slack.bot_token}
    app_token: {slack.app_token}
    api_base: '{slack.api_base}'
{allow}{extra}""")


@pytest.fixture
def gateway_config(home, llm, slack):
    configure(home, llm, slack)


def asked(llm):
    return [b["messages"][-1]["content"] for b in llm.chat_requests]


def test_a_direct_message_is_answered_in_mrkdwn_with_the_eyes_reaction_meanwhile(gateway, llm,
                                                                                 slack):
    gateway.start()
    wait_for(slack.connected, what="socket mode connection")
    llm.script("**Done**: see [the docs](https://example.com/?a=1&b=2) ~~now~~")
    ts = slack.dm(OWNER, "hello &lt;there&gt;")
    post = wait_for(lambda: slack.posts, what="reply")[0]
    assert asked(llm) == ["hello <there>"]
    assert post["channel"] == "D0DM" and "thread_ts" not in post        # a DM is not threaded
    assert post["text"] == "*Done*: see <https://example.com/?a=1&amp;b=2|the docs> ~now~"
    wait_for(lambda: len(slack.reactions) == 2, what="reaction removed")
    assert slack.reactions == [("add", "eyes", "D0DM", ts), ("remove", "eyes", "D0DM", ts)]
    added = next(c for c in slack.calls if c["method"] == "reactions.add")
    removed = next(c for c in slack.calls if c["method"] == "reactions.remove")
    assert added["time"] < post["time"] < removed["time"]
    assert len(slack.acks) == 1
    assert gateway.term() == 0 and "Traceback" not in gateway.logs()


def test_a_stranger_is_told_their_id_once_and_never_reaches_the_model(gateway, llm, slack):
    gateway.start()
    wait_for(slack.connected, what="socket mode connection")
    slack.dm("U0STRANGER", "let me in", channel="D0STR")
    slack.mention("U0STRANGER", "C0GEN", "and here?")
    slack.dm(OWNER, "me again")
    wait_for(lambda: slack.texts("D0DM"), what="the owner's reply")
    assert asked(llm) == ["me again"]
    assert slack.texts("D0STR") == ["This assistant is private. Your slack id is U0STRANGER."]
    assert slack.texts("C0GEN") == []                   # told once a day, not once per chat
    assert not any(r[2] in ("D0STR", "C0GEN") for r in slack.reactions)


def test_a_mention_in_a_channel_is_answered_once_in_its_thread(gateway, llm, slack):
    gateway.start()
    wait_for(slack.connected, what="socket mode connection")
    slack.message(OWNER, "C0GEN", "just chatting")                      # no mention: not for us
    slack.message(OWNER, "C0GEN", "edited", subtype="message_changed")
    slack.message(BOT_USER, "C0GEN", f"<@{BOT_USER}> my own words", bot_id="B0BOT")
    ts = slack.mention(OWNER, "C0GEN", "what time is it?")
    wait_for(lambda: slack.posts, what="reply")
    slack.dm(OWNER, "sentinel")
    wait_for(lambda: len(slack.posts) == 2, what="the sentinel's reply")
    assert asked(llm) == ["what time is it?", "sentinel"]
    assert slack.posts[0]["channel"] == "C0GEN" and slack.posts[0]["thread_ts"] == ts


def test_a_long_reply_is_split_at_4000_characters_in_the_same_thread(gateway, llm, slack):
    paragraphs = [f"Paragraph {i}: " + "word " * 300 for i in range(8)]       # ~12,000 chars
    llm.script("\n\n".join(paragraphs))
    gateway.start()
    ts = slack.mention(OWNER, "C0GEN", "tell me a lot")
    wait_for(lambda: len(slack.posts) >= 4 and slack.reactions[-1][0] == "remove", what="parts")
    assert all(len(p["text"]) <= LIMIT for p in slack.posts)
    assert all(p["thread_ts"] == ts for p in slack.posts)
    assert " ".join(p["text"] for p in slack.posts).split() == " ".join(paragraphs).split()


def test_nothing_is_lost_or_doubled_across_drops_and_reconnect_requests(gateway, llm, slack):
    gateway.start()
    wait_for(slack.connected, what="first connection")
    first = None
    for i in range(6):
        if i == 1:
            slack.drop()                        # gone mid-conversation, no close frame
        if i == 3:
            wait_for(slack.connected, what="reconnect after the drop")
            slack.disconnect()                  # Slack's routine recycling
        ts = slack.dm(OWNER, f"message {i}")
        first = first or ts
        if i == 0:
            wait_for(lambda: slack.posts, what="the first reply")
    wait_for(lambda: len(slack.posts) == 6, timeout=30, what="six replies")
    slack.redeliver(next(iter(slack._payloads)))        # Slack retrying an event: same event_id
    slack.dm(OWNER, "last")
    wait_for(lambda: len(slack.posts) == 7, what="the last reply")
    assert sorted(asked(llm)) == sorted([f"message {i}" for i in range(6)] + ["last"])
    assert sorted(slack.texts()) == sorted(f"echo: {t}" for t in asked(llm))
    assert slack.connections >= 3



def test_an_event_sent_again_to_a_restarted_gateway_is_not_answered_twice(gateway, llm, slack):
    """Slack retries an event whose ack it did not see; the next process remembers nothing, but
    the inbox name (channel and ts) does."""
    gateway.start()
    wait_for(slack.connected, what="first connection")
    slack.dm(OWNER, "pay rent")
    wait_for(lambda: list((gateway.home / "outbox" / "sent").glob("slack.*")),
             what="the reply, filed as sent")     # (killed before that, it is sent again)
    gateway.kill()
    gateway.start()
    wait_for(slack.connected, what="the new connection")
    slack.redeliver(next(iter(slack._payloads)))
    slack.dm(OWNER, "next")
    wait_for(lambda: "echo: next" in slack.texts(), what="the next reply")
    assert asked(llm) == ["pay rent", "next"]

def test_an_event_acked_before_a_crash_is_taken_up_at_the_next_start(gateway, llm, slack):
    """Slack forgets an event once it is acked: the ack must not wait for the download (3 s),
    and a message acked but not yet in the inbox must survive a kill -9."""
    gateway.start()
    wait_for(slack.connected, what="first connection")
    big = slack.add_file("big.bin", b"a large file", "application/octet-stream")
    kill_mid_download(gateway, slack, lambda: slack.dm(OWNER, "keep this", subtype="file_share",
                                                       files=[big]), also=lambda: slack.acks)
    post = wait_for(lambda: slack.posts, what="the reply after the restart")[0]
    assert post["text"].startswith("echo: keep this\n[attached: ")
    assert len(slack.acks) == 1 and len(llm.chat_requests) == 1
    wait_for(lambda: not list((gateway.home / "state" / "slack" / "pending").glob("*")),
             what="the kept event removed")
    wait_for(lambda: [r for r in slack.reactions if r[0] == "remove"],   # added before the kill:
             what="the reaction removed with the reply")                # already_reacted after


def test_a_rate_limit_is_honoured_and_the_reply_still_arrives(gateway, llm, slack):
    slack.rate_limit("chat.postMessage", retry_after=2)
    gateway.start()
    slack.dm(OWNER, "hurry")
    post = wait_for(lambda: slack.posts, what="reply after the limit")[0]
    refused = next(c for c in slack.calls if c["method"] == "chat.postMessage")
    assert post["time"] - refused["time"] >= 2
    assert post["text"] == "echo: hurry"
    assert "retry 1 in 2.0s" in gateway.logs()


def test_files_are_downloaded_with_the_bot_token_and_voice_is_transcribed(gateway, llm, slack):
    llm.transcripts.append("turn on the lights")
    gateway.start()
    doc = slack.add_file("notes.txt", b"remember the milk", "text/plain")
    clip = slack.add_file("audio_message.webm", b"\x1aE\xdf\xa3 fake webm", "audio/webm")
    elsewhere = {"id": "F0EVIL", "name": "evil.txt", "mimetype": "text/plain",
                 "url_private": "http://example.invalid/evil.txt"}   # never gets the token
    slack.dm(OWNER, "", subtype="file_share", files=[doc, clip, elsewhere])
    wait_for(lambda: slack.posts, what="reply")
    text = asked(llm)[0]
    assert "[file evil.txt could not be downloaded]" in text
    assert "[voice note, transcribed] turn on the lights" in text
    saved = list((gateway.home / "media" / "slack").iterdir())
    assert {p.read_bytes() for p in saved} == {b"remember the milk", b"\x1aE\xdf\xa3 fake webm"}
    assert all(d["authorized"] for d in slack.downloads) and len(slack.downloads) == 2
    assert all(str(p) in text for p in saved)


# --- policies, with the channel in-process (no model needed) ---

@pytest.mark.parametrize("settings,events,admitted", [
    ("dm: {enabled: false}", [("dm", OWNER, "D1"), ("mention", OWNER, "C9")], ["C9"]),
    ("allow_from: ['*']\n    dm: {policy: allowlist, allow_from: [U0FRIEND]}",
     [("dm", "U0OTHER", "D1"), ("dm", "U0FRIEND", "D2")], ["D2"]),
    ("group_policy: open", [("msg", "U0OTHER", "C1"), ("msg", OWNER, "C1")], ["C1"]),
    ("group_policy: allowlist\n    group_allow_from: [C2]",
     [("mention", OWNER, "C1"), ("msg", OWNER, "C2")], ["C2"]),
])
def test_dm_and_group_policies_narrow_who_is_heard(home, llm, slack, settings, events, admitted):
    """Each case ends with an admitted message; events are handled in order, so once it is in
    the inbox, the ones before it were dropped, silently (no refusal notice)."""
    configure(home, llm, slack, "    " + settings)
    channel = SlackChannel(load_config(), home)
    channel.start()
    try:
        for kind, user, chat in events:
            if kind == "dm":
                slack.dm(user, "hi", channel=chat)
            else:
                (slack.mention if kind == "mention" else slack.message)(user, chat, "hi")

        def chats():
            inbox = home / "inbox" / "new"
            return [json.loads(p.read_text())["chat_id"] for p in sorted(inbox.glob("*.json"))]
        wait_for(lambda: admitted[-1] in chats(), what="the last admitted message")
        assert chats() == admitted
        for msg in (json.loads(p.read_text()) for p in (home / "inbox" / "new").glob("*.json")):
            assert msg["metadata"]["is_group"] is not msg["chat_id"].startswith("D")   # SPEC §13
        assert list((home / "outbox").rglob("*.json")) == [] and slack.posts == []
    finally:
        channel.stop()


def test_markdown_becomes_slack_mrkdwn():
    md = ("# Plan\nSome **bold**, *italic*, _also_, ~~gone~~, `a<b && *x*`.\n"
          "* first\n- second\n\n```python\nif a < b:\n    **not bold**\n```\n2 * 3 * 4")
    assert to_mrkdwn(md) == ("*Plan*\nSome *bold*, _italic_, _also_, ~gone~, `a&lt;b &amp;&amp; *x*`.\n"
                             "• first\n• second\n\n```\nif a &lt; b:\n    **not bold**\n```\n2 * 3 * 4")


def test_files_follow_the_text_in_the_thread_and_a_gone_one_is_named(home, llm, slack, run_channel,
                                                                      tmp_path):
    from lib.mail import post_outbox
    configure(home, llm, slack)
    ch = run_channel(SlackChannel)
    slack.rate_limit("files.completeUploadExternal", 0)    # the first upload is tried again
    (tmp_path / "plot.png").write_bytes(b"\x89PNG plot")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    media = [str(tmp_path / n) for n in ("plot.png", "data.csv", "gone <1>.txt")]
    post_outbox(home, "slack", "C0GEN", "Here are the *results*", media=media,
                metadata={"thread_ts": "1700000000.000100"})
    ch.wake()
    wait_for(lambda: list((home / "outbox" / "sent").glob("slack.*")), what="the whole message")
    assert [(u["filename"], u["title"], u["data"], u["channel"], u["thread_ts"])
            for u in slack.uploads] == [
        ("plot.png", "plot.png", b"\x89PNG plot", "C0GEN", "1700000000.000100"),
        ("data.csv", "data.csv", b"a,b\n1,2\n", "C0GEN", "1700000000.000100")]
    assert slack.texts() == ["Here are the _results_",
                             "[attachment gone &lt;1&gt;.txt could not be sent: it no longer exists]"]
    assert all(p["thread_ts"] == "1700000000.000100" for p in slack.posts)
    assert [c["method"] for c in slack.calls if c["method"].startswith("files.")] == [
        "files.getUploadURLExternal", "files.completeUploadExternal",       # 429
        "files.getUploadURLExternal", "files.completeUploadExternal",
        "files.getUploadURLExternal", "files.completeUploadExternal"]
    assert slack.texts().count("Here are the _results_") == 1


def test_an_event_that_cannot_be_kept_is_not_acked_and_its_resend_is_taken(home, llm, slack,
                                                                          run_channel, caplog):
    """A full disk (here: a file where the folder goes) must not ack a message it could not
    keep, and the event id must not be remembered, or Slack's resend would be dropped."""
    configure(home, llm, slack)
    unblock = block(home / "state" / "slack" / "pending")
    run_channel(SlackChannel)
    wait_for(slack.connected, what="the connection")
    slack.dm(OWNER, "still there?")
    wait_for(lambda: "cannot keep an event" in caplog.text, what="the failed keep")
    unblock()
    assert slack.acks == []
    slack.drop()                            # Slack sends unacked envelopes on the next connection
    msg = wait_for(lambda: inbox(home), what="the message after the resend")[0]
    assert msg["text"] == "still there?" and len(slack.acks) == 1


def test_a_kept_message_waits_out_a_full_inbox_without_a_restart(home, llm, slack, run_channel,
                                                                 caplog):
    configure(home, llm, slack)
    run_channel(SlackChannel)
    wait_for(slack.connected, what="the connection")
    unblock = block(home / "inbox" / "tmp")                 # a full disk, as receive() sees it
    slack.dm(OWNER, "patience")
    wait_for(lambda: "cannot put a message in the inbox" in caplog.text, what="the failure")
    assert slack.acks                                       # kept, so acked
    unblock()
    msg = wait_for(lambda: inbox(home), what="the message once there is room")[0]
    assert msg["text"] == "patience"
