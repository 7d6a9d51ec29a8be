"""The Telegram channel against a fake Bot API server: through the real gateway where the whole
path matters, in-process (the channel object alone) for the details."""
import json

import pytest

from lib import maildir
from lib.mail import post_outbox
from lib.channels.telegram import render, to_html
from tests.fakes.telegram_server import TOKEN, FakeTelegram, parse_html
from tests.conftest import inbox, wait_for, write_config

ALICE = (42, "alice")


@pytest.fixture
def tg():
    with FakeTelegram() as server:
        yield server


def configure(home, llm, tg, allow="[alice]", extra=""):
    write_config(home, f"providers:\n  custom: {{api_base: '{llm.url}'}}\n{extra}"
                       "agents:\n  defaults: {model: fake-model}\nheartbeat: {enabled: false}\n"
                       f"channels:\n  telegram:\n    enabled: true\n    token: '{TOKEN}'\n"
                       f"    api_base: '{tg.api_base}'\n    allow_from: {allow}\n")


@pytest.fixture
def channel(home, llm, tg, run_channel):
    """A TelegramChannel run in-process (no worker): messages stop in inbox/new."""
    from lib.channels.telegram import TelegramChannel

    def make(allow="[alice]", extra="", groups=False):
        configure(home, llm, tg, allow, extra)
        if groups:
            (home / "config.yaml").write_text((home / "config.yaml").read_text() +
                                              "    groups: true\n")
        return run_channel(TelegramChannel, backoff=None)
    return make


def consumed(home, update_id):
    """True once the channel has saved its offset past `update_id`."""
    try:
        saved = json.loads((home / "state" / "telegram_offset.json").read_text())
        return saved["offset"] > update_id
    except (OSError, ValueError):
        return False


def reply(home, ch, text, to=None, chat="42", media=()):
    from lib.mail import post_outbox
    post_outbox(home, "telegram", chat, text, reply_to="m1" if to else None, media=media,
                metadata={"message_id": to} if to else {})
    ch.wake()


def files(folder, **named):
    """Files in `folder` named after the keywords ("_" for "."), with the given bytes."""
    paths = []
    for name, data in named.items():
        paths.append(str(folder / name.replace("_", ".")))
        open(paths[-1], "wb").write(data)
    return paths


# --- through the gateway ---

def test_a_message_reaches_the_model_and_the_reply_comes_back_as_html(home, llm, tg, gateway):
    configure(home, llm, tg)
    gateway.start()
    llm.script("**Hello** <friend> & `x < y`")
    m = tg.message("hi there", user=ALICE)
    sent = wait_for(lambda: tg.sent, what="the reply")[0]
    assert llm.chat_requests[0]["messages"][-1]["content"] == "hi there"
    assert sent["chat_id"] == 42 and sent["parse_mode"] == "HTML"
    assert sent["text"] == "<b>Hello</b> &lt;friend&gt; &amp; <code>x &lt; y</code>"
    assert sent["reply_parameters"]["message_id"] == m["message_id"]
    typing = tg.calls_of("sendChatAction")
    assert typing and typing[0]["params"] == {"chat_id": 42, "action": "typing"}
    assert typing[0]["time"] < sent["time"]


def test_a_stranger_is_refused_before_the_model_and_told_their_id_once(home, llm, tg, gateway):
    configure(home, llm, tg, allow="['7']")
    gateway.start()
    tg.message("let me in", user=(999, "mallory"))
    refusal = wait_for(lambda: tg.sent, what="the refusal")[0]
    assert refusal["text"] == "This assistant is private. Your telegram id is 999."
    tg.message("please?", user=(999, "mallory"))
    tg.message("it's me", user=(7, None))           # the owner, by numeric id
    wait_for(lambda: len(tg.sent) == 2, what="the owner's reply")
    assert tg.sent[1]["chat_id"] == 7 and tg.sent[1]["shown"] == "echo: it's me"
    assert [r["messages"][-1]["content"] for r in llm.chat_requests] == ["it's me"]


def test_a_long_reply_is_split_at_the_limit(home, llm, tg, gateway):
    configure(home, llm, tg)
    gateway.start()
    paragraphs = [f"Paragraph {i}: " + " ".join(["lorem *ipsum* dolor"] * 30) for i in range(25)]
    llm.script("\n\n".join(paragraphs))
    tg.message("tell me everything", user=ALICE)
    wait_for(lambda: list((home / "outbox" / "sent").glob("telegram.*.json")),
             what="the whole reply to be sent")
    shown = [s["shown"] for s in tg.sent]
    assert len(shown) >= 3 and all(len(s) <= 4096 for s in shown)
    assert "\n\n".join(shown) == "\n\n".join(p.replace("*", "") for p in paragraphs)
    assert "reply_parameters" in tg.sent[0]
    assert all("reply_parameters" not in s for s in tg.sent[1:])


def test_a_dropped_connection_loses_nothing_and_repeats_nothing(home, llm, tg, gateway):
    configure(home, llm, tg)
    gateway.start()
    tg.message("one", user=ALICE)
    wait_for(lambda: len(tg.sent) == 1, what="the first reply")
    llm.script({"delay": 0.5})                      # the reply to "two" is due while down
    tg.message("two", user=ALICE)
    wait_for(lambda: len(llm.chat_requests) == 2, what="the model to be asked")
    tg.go_down()
    tg.message("three", user=ALICE)
    wait_for(lambda: tg.dropped >= 3, what="reconnects and sends to fail")
    tg.go_up()
    wait_for(lambda: len(tg.sent) == 3, timeout=30, what="every reply after the outage")
    wait_for(lambda: len(list((home / "outbox" / "sent").glob("telegram.*.json"))) == 3,
             what="the replies to be filed as sent")
    gateway.kill()                                  # and a crash for good measure
    gateway.start()
    tg.message("four", user=ALICE)
    wait_for(lambda: len(tg.sent) == 4, what="the reply after the restart")
    assert sorted(s["shown"] for s in tg.sent) == [f"echo: {n}" for n in
                                                    ("four", "one", "three", "two")]
    assert [r["messages"][-1]["content"] for r in llm.chat_requests] == \
        ["one", "two", "three", "four"]


class KillingTelegram(FakeTelegram):
    """Kills `victim` (a Popen) with SIGKILL the moment sendMessage number `at` arrives, before
    it is answered: that part is the one in flight."""
    victim, at = None, 3

    def _record(self, method, params):
        super()._record(method, params)
        if method == "sendMessage" and self.victim and len(self.calls_of(method)) == self.at:
            self.victim.kill()
            self.victim = None


def test_a_kill_9_during_a_long_reply_resends_at_most_the_part_in_flight(home, llm, gateway):
    with KillingTelegram() as tg:
        configure(home, llm, tg)
        gateway.start()
        llm.script("\n\n".join(f"Part {i}: " + "word " * 700 for i in range(5)))
        tg.victim = gateway.proc
        tg.message("tell me everything", user=ALICE)
        wait_for(lambda: gateway.proc.poll() is not None, what="the kill at the third part")
        gateway.kill()
        gateway.start()
        wait_for(lambda: list((home / "outbox" / "sent").glob("telegram.*.json")),
                 what="the rest of the reply")
        texts = [c["params"]["text"] for c in tg.calls_of("sendMessage")]
    again = [t for i, t in enumerate(texts) if t in texts[:i]]
    assert len(set(texts)) == 5 and again in ([], [texts[2]]), [t[:8] for t in texts]
    assert len(llm.chat_requests) == 1


def test_a_rate_limit_answer_is_honoured(home, llm, tg, gateway):
    configure(home, llm, tg)
    gateway.start()
    tg.fail_next("sendMessage", 429, retry_after=2)
    tg.message("quick", user=ALICE)
    wait_for(lambda: tg.sent, what="the reply")
    tries = tg.calls_of("sendMessage")
    assert len(tries) == 2 and tries[1]["time"] - tries[0]["time"] >= 1.95
    assert len(tg.sent) == 1


# --- the channel alone ---

def test_typing_repeats_while_busy_and_stops_with_the_reply(home, tg, channel, monkeypatch):
    monkeypatch.setattr("lib.channels.telegram.TYPING_EVERY", 0.1)
    ch = channel(allow="[alice, bob]")
    m = tg.message("think hard", user=ALICE)
    wait_for(lambda: len(tg.calls_of("sendChatAction")) >= 3, what="repeated typing")
    reply(home, ch, "done", to=m["message_id"])
    at = wait_for(lambda: tg.sent, what="the reply")[0]["time"]
    tg.message("and me?", user=(43, "bob"))        # a clock: bob's typing ticks on
    wait_for(lambda: len([c for c in tg.calls_of("sendChatAction")
                          if c["params"]["chat_id"] == 43]) >= 4, what="bob's typing")
    late = [c for c in tg.calls_of("sendChatAction")
            if c["params"]["chat_id"] == 42 and c["time"] > at]
    assert len(late) <= 1                           # at most one already on its way


def test_photos_documents_and_voice_notes_are_downloaded(home, llm, tg, channel):
    ch = channel(extra=f"  groq: {{api_key: gsk-test, api_base: '{llm.url}'}}\n")
    small = tg.add_file(b"s", "photos/file_1.jpg")
    large = tg.add_file(b"LARGE", "photos/file_2.jpg")
    tg.message(None, user=ALICE, caption="look",
               photo=[dict(small, width=90, height=90), dict(large, width=800, height=800)])
    doc = tg.add_file(b"%PDF", "documents/file_3.pdf")
    tg.message(None, user=ALICE, document=dict(doc, file_name="report.pdf"))
    voice = tg.add_file(b"OggS", "voice/file_4.oga")
    tg.message(None, user=ALICE, voice=dict(voice, duration=3, mime_type="audio/ogg"))
    huge = tg.add_file(b"x", "documents/file_5.bin", size=25 * 1024 * 1024)
    last = tg.message("too big?", user=ALICE, document=dict(huge, file_name="huge.bin"))
    wait_for(lambda: len(inbox(home)) == 4, what="four messages")
    photo, pdf, note, big = inbox(home)
    assert photo["text"] == "look" and open(photo["media"][0], "rb").read() == b"LARGE"
    assert pdf["media"][0].endswith("report.pdf") and open(pdf["media"][0], "rb").read() == b"%PDF"
    assert note["text"] == "[voice note, transcribed] hello from a voice note"
    assert note["media"][0].endswith(".ogg")
    assert big["media"] == [] and "huge.bin was not downloaded" in big["text"]
    assert photo["sender_id"] == "42" and photo["metadata"]["sender_aliases"] == ["alice"]
    assert big["metadata"]["message_id"] == last["message_id"]
    assert [c["params"]["file_id"] for c in tg.calls_of("getFile")] == \
        [large["file_id"], doc["file_id"], voice["file_id"]]
    del ch


PNG = b"\x89PNG\r\n\x1a\n-picture"



def test_a_file_that_drips_is_given_up_and_the_message_still_arrives(home, tg, channel,
                                                                     monkeypatch):
    from lib.channels import net
    monkeypatch.setattr(net, "DOWNLOAD_S", 1.0)
    ch = channel()
    slow = tg.add_file(b"x" * 40, "documents/file_9.bin", drip_s=0.1)
    tg.message("here", user=ALICE, document=dict(slow, file_name="slow.bin"))
    wait_for(lambda: len(inbox(home)) == 1, what="the message")
    msg, = inbox(home)
    assert msg["media"] == [] and "slow.bin was not downloaded" in msg["text"]
    assert not any((home / "media").rglob("*slow.bin"))
    del ch

def test_files_go_out_by_type_after_the_text_and_a_gone_file_becomes_a_note(home, tg, channel,
                                                                           tmp_path):
    ch = channel()
    paths = files(tmp_path, chart_png=PNG, clip_gif=b"GIF89a", hello_ogg=b"OggS", song_mp3=b"ID3",
                  film_mp4=b"ftyp", notes_pdf=b"%PDF-1.4", fake_jpg=b"not an image", gone_txt=b"")
    (tmp_path / "gone.txt").unlink()
    m = tg.message("send me everything", user=ALICE)
    reply(home, ch, "Here you go", to=m["message_id"], media=paths)
    wait_for(lambda: list((home / "outbox" / "sent").glob("telegram.*")), what="all of it")
    sent = [(u["method"], u["filename"], u["data"]) for u in tg.uploads]
    assert sent == [("sendPhoto", "chart.png", PNG), ("sendAnimation", "clip.gif", b"GIF89a"),
                    ("sendVoice", "hello.ogg", b"OggS"), ("sendAudio", "song.mp3", b"ID3"),
                    ("sendVideo", "film.mp4", b"ftyp"), ("sendDocument", "notes.pdf", b"%PDF-1.4"),
                    ("sendDocument", "fake.jpg", b"not an image")]     # refused as a photo
    assert [c["method"] for c in tg.calls if c["method"].startswith("send") and
            c["method"] != "sendChatAction"][-3:] == ["sendPhoto", "sendDocument", "sendMessage"]
    assert [s["text"] for s in tg.sent] == [
        "Here you go", "[attachment gone.txt could not be sent: it no longer exists]"]
    assert tg.sent[0]["reply_parameters"]["message_id"] == m["message_id"]
    assert all("reply_parameters" not in u for u in tg.uploads)
    assert all(u["chat_id"] == 42 for u in tg.uploads)


def test_a_file_alone_answers_the_message_and_a_failed_upload_is_not_sent_twice(home, tg,
                                                                                channel, tmp_path):
    ch = channel()
    ch.backoff = 0.05
    tg.fail_next("sendDocument", 502)
    m = tg.message("the report?", user=ALICE)
    reply(home, ch, "", to=m["message_id"], media=files(tmp_path, a_png=PNG, b_pdf=b"%PDF"))
    wait_for(lambda: list((home / "outbox" / "sent").glob("telegram.*")), what="sent")
    assert [(u["method"], u["data"]) for u in tg.uploads] == [("sendPhoto", PNG),
                                                              ("sendDocument", b"%PDF")]
    assert len(tg.calls_of("sendPhoto")) == 1 and len(tg.calls_of("sendDocument")) == 2
    assert tg.uploads[0]["reply_parameters"]["message_id"] == m["message_id"] and not tg.sent


def test_after_a_crash_the_files_already_sent_are_not_sent_again(home, tg, channel, tmp_path):
    from lib.mail import post_outbox
    paths = files(tmp_path, a_pdf=b"first", b_pdf=b"second")
    path = post_outbox(home, "telegram", "42", "text", media=paths)
    msg = json.loads(path.read_text())
    path.write_text(json.dumps(dict(msg, _done=2)))     # as a kill -9 after a.pdf left it
    channel()
    wait_for(lambda: list((home / "outbox" / "sent").glob("telegram.*")), what="the rest")
    assert [u["data"] for u in tg.uploads] == [b"second"] and not tg.sent


def test_a_file_the_model_attaches_reaches_telegram(home, llm, tg, gateway):
    configure(home, llm, tg)
    (home / "workspace").mkdir(exist_ok=True)
    (home / "workspace" / "report.pdf").write_bytes(b"%PDF-1.4 the report")
    llm.script({"tool_calls": [{"name": "message", "arguments": {
        "content": "Here it is", "media": ["report.pdf"]}}]}, "Sent you the report.")
    gateway.start()
    tg.message("send me the report", user=ALICE)
    wait_for(lambda: len(tg.sent) == 2 and tg.uploads, what="the file and both texts")
    assert [(u["method"], u["filename"], u["data"]) for u in tg.uploads] == [
        ("sendDocument", "report.pdf", b"%PDF-1.4 the report")]
    assert sorted(s["text"] for s in tg.sent) == ["Here it is", "Sent you the report."]


def test_the_username_travels_apart_from_the_id_and_is_compared_whole(home, tg, channel):
    """allow_from: [alice] lets @alice in by her username; the id stays the bare number."""
    channel(allow="['@alice', '43|mallory']")
    tg.message("by name", user=ALICE)
    tg.message("split me", user=(43, "mallory"))        # "43|mallory" is not 43 nor mallory
    tg.message("no name", user=(44, None))
    refused = wait_for(lambda: len(tg.sent) == 2 and tg.sent, what="two refusals")
    assert [r["text"] for r in refused] == [f"This assistant is private. Your telegram id is {i}."
                                            for i in (43, 44)]
    [msg] = inbox(home)
    assert msg["text"] == "by name" and msg["sender_id"] == "42"
    assert msg["metadata"]["sender_aliases"] == ["alice"] and msg["metadata"]["is_group"] is False


def test_html_telegram_refuses_is_sent_again_as_plain_text(home, tg, channel):
    ch = channel()
    reply(home, ch, "**bold _both** end_")          # renders to crossing tags
    wait_for(lambda: tg.sent, what="the plain reply")
    assert len(tg.calls_of("sendMessage")) == 2
    assert tg.sent[0]["text"] == "**bold _both** end_" and "parse_mode" not in tg.sent[0]


def test_groups_only_when_enabled_and_addressed(home, tg, channel):
    ch = channel(groups=False)
    first = tg.inject({"message_id": 1, "date": 0, "from": {"id": 42, "is_bot": False,
                       "first_name": "A", "username": "alice"}, "chat": {"id": -100,
                       "type": "supergroup"}, "text": "@nano_test_bot hello"})
    wait_for(lambda: consumed(home, first), what="the group message to be skipped")
    assert inbox(home) == []
    ch.stop()
    ch = channel(groups=True)
    tg.message("just chatting", user=ALICE, chat=-100, chat_type="supergroup")
    tg.message("ask @nano_test_bot_fan instead", user=ALICE, chat=-100, chat_type="supergroup")
    tg.message("@nano_test_bot what time is it?", user=ALICE, chat=-100, chat_type="supergroup")
    bot_msg = {"message_id": 5, "date": 0, "chat": {"id": -100, "type": "supergroup"},
               "from": tg.me, "text": "earlier answer"}
    tg.message("and tomorrow?", user=ALICE, chat=-100, chat_type="supergroup",
               reply_to_message=bot_msg)
    tg.message("/new@nano_test_bot", user=ALICE, chat=-100, chat_type="supergroup")
    wait_for(lambda: len(inbox(home)) == 3, what="the addressed messages")
    assert [m["text"] for m in inbox(home)] == ["what time is it?", "and tomorrow?", "/new"]
    assert {m["chat_id"] for m in inbox(home)} == {"-100"}
    assert all(m["metadata"]["is_group"] is True for m in inbox(home))     # SPEC §13


def test_a_saved_offset_means_a_restart_repeats_nothing(home, tg, channel):
    old = [tg.message(f"old {i}", user=ALICE) for i in range(2)]
    maildir.atomic_write(home / "state" / "telegram_offset.json",
                         json.dumps({"bot": TOKEN.split(":")[0], "offset": 3}))
    channel()
    tg.message("new", user=ALICE)
    wait_for(lambda: inbox(home), what="the new message")
    assert [m["text"] for m in inbox(home)] == ["new"] and old


def test_a_webhook_conflict_deletes_the_webhook_once(home, tg, channel):
    tg.webhook = True
    channel()
    tg.message("after the webhook", user=ALICE)
    wait_for(lambda: inbox(home), what="the message")
    assert len(tg.calls_of("deleteWebhook")) == 1


def test_a_bad_gateway_answer_while_polling_means_reconnect(home, tg, channel):
    tg.fail_next("getUpdates", 502)
    channel()
    tg.message("still there?", user=ALICE)
    wait_for(lambda: inbox(home), what="the message after the 502")
    assert len(tg.calls_of("getUpdates")) >= 2



def test_replies_go_out_soon_after_a_polling_error_not_after_the_next_long_poll(home, tg, channel):
    """Replies wait while polling fails; once a quick poll gets through they go, without
    waiting for a long poll that finds nothing (25 s)."""
    tg.fail_next("getUpdates", 502)
    ch = channel()
    wait_for(lambda: len(tg.calls_of("getUpdates")) >= 2, what="the poll after the 502")
    post_outbox(home, "telegram", "42", "the reply")
    ch.wake()
    wait_for(lambda: tg.calls_of("sendMessage"), what="the reply, before the long poll ends",
             timeout=10)
    assert tg.calls_of("getUpdates")[1]["params"].get("timeout") in ("0", 0)


# --- markdown to Telegram HTML ---

@pytest.mark.parametrize("md,html", [
    ("# Title\nText", "<b>Title</b>\nText"),
    ("- one\n* two", "• one\n• two"),
    ("a & b < c > d", "a &amp; b &lt; c &gt; d"),
    ("**b** *i* _i_ ~~s~~ ||x||", "<b>b</b> <i>i</i> <i>i</i> <s>s</s> <tg-spoiler>x</tg-spoiler>"),
    ("[site](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">site</a>'),
    ("```python\nif a < b:\n    **x**\n```", '<pre><code class="language-python">if a &lt; b:\n'
                                             '    **x**</code></pre>'),
    ("> quoted\n> more\nafter", "<blockquote>quoted\nmore</blockquote>\nafter"),
    ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
])
def test_markdown_becomes_telegram_html(md, html):
    assert to_html(md) == html
    parse_html(html)                                # and Telegram (the fake) accepts it


def test_rendered_parts_are_checked_again_after_rendering():
    text = "😀" * 3000                               # 3000 characters, 6000 UTF-16 units
    parts = render(text)
    assert len(parts) >= 2 and all(len(h.encode("utf-16-le")) // 2 <= 4096 for _, h in parts)
    assert "".join(md for md, _ in parts) == text


def test_a_risky_command_asks_in_the_chat_and_a_typed_yes_runs_it(home, llm, tg, gateway):
    """SPEC §9 through Telegram: the question arrives in the chat, a stranger's yes is refused
    before the worker, the allowed user's typed yes carries the turn on."""
    import re
    configure(home, llm, tg, extra="tools: {exec: {sandbox: 'off'}, restrict_to_workspace: false}\n")
    (home / "workspace").mkdir(parents=True, exist_ok=True)
    llm.script({"tool_calls": [{"name": "exec", "arguments": {"command": "rm -rf old; echo ran"}}]},
               lambda body: "Done: " + body["messages"][-1]["content"])
    gateway.start()
    tg.message("clean up", user=ALICE)
    question = wait_for(lambda: [s for s in tg.sent if "yes" in s["text"]], what="the question")[0]
    code = re.search(r"yes (\d{4})", parse_html(question["text"]))[1]
    assert "rm -rf old; echo ran" in parse_html(question["text"]) and question["chat_id"] == 42
    tg.message(f"yes {code}", user=(666, "mallory"), chat=42, chat_type="group")   # not allowed
    tg.message(f"yes {code}", user=ALICE)
    done = wait_for(lambda: [s for s in tg.sent if "Done:" in s["text"]], what="the answer")[0]
    assert "ran" in parse_html(done["text"]) and "exit code 0" in parse_html(done["text"])
    assert len(llm.chat_requests) == 2
