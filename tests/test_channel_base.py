"""The outbox side every channel shares: ordered delivery, retries, failed/ after the last try,
and the allow list on the way in."""
import json
import sys
from functools import partial

import pytest

from lib import maildir
from lib.channels.base import Channel, SendError, unsent
from lib.errors import ConfigError
from lib.mail import post_outbox
from tests import conftest


class Recorder(Channel):
    name = "telegram"

    def __init__(self, config, home, failures=()):
        super().__init__(config, home)
        self.backoff = 0.01
        self.sent, self.failures = [], list(failures)

    def deliver(self, msg):
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(msg["text"])


wait_for = partial(conftest.wait_for, timeout=10.0)


@pytest.fixture
def outbox(home):
    maildir.ensure(home / "outbox", ("sent", "failed"))
    return home / "outbox"


def run(channel):
    channel.start()
    return channel


@pytest.fixture
def sending(config, home, outbox):
    """sending(text, failures) starts a Recorder that raises `failures` first and posts `text`
    to it (woken); every one started is stopped after the test."""
    started = []

    def start(text, failures=()):
        started.append(ch := run(Recorder(config, home, failures)))
        post_outbox(home, "telegram", "1", text)
        ch.wake()
        return ch
    yield start
    for ch in started:
        ch.stop()


def test_messages_are_sent_in_order_and_filed_in_sent(config, home, outbox):
    for i in range(3):
        post_outbox(home, "telegram", "1", f"m{i}")
    post_outbox(home, "slack", "C", "not mine")
    ch = run(Recorder(config, home))
    try:
        wait_for(lambda: len(ch.sent) == 3)
        assert ch.sent == ["m0", "m1", "m2"]
        wait_for(lambda: len(list((outbox / "sent").glob("telegram.*"))) == 3)
        assert len(list((outbox / "new").glob("slack.*"))) == 1      # left for its own channel
    finally:
        ch.stop()


def test_failures_are_retried_then_sent(sending):
    ch = sending("persistent", [SendError("timeout"), ConnectionError("reset"),
                                SendError("slow down", retry_after=0.01)])
    wait_for(lambda: ch.sent == ["persistent"])


def test_after_the_last_try_the_message_goes_to_failed_with_the_error(sending, outbox):
    ch = sending("doomed", [SendError(f"down {i}") for i in range(10)])
    wait_for(lambda: list((outbox / "failed").glob("telegram.*.json")))
    msg = json.loads(next((outbox / "failed").glob("telegram.*.json")).read_text())
    assert msg["text"] == "doomed" and msg["error"] == "down 4"
    assert len(ch.failures) == 5        # five tries


def test_a_permanent_error_is_not_retried(sending, outbox):
    ch = sending("to nobody", [SendError("chat not found", permanent=True)])
    wait_for(lambda: list((outbox / "failed").glob("telegram.*.json")))
    assert ch.sent == []


def test_stopping_during_a_retry_leaves_the_message_in_cur_for_the_next_start(config, home, outbox):
    ch = Recorder(config, home, [SendError("down", retry_after=60)])
    run(ch)
    post_outbox(home, "telegram", "1", "later")
    ch.wake()
    wait_for(lambda: list((outbox / "cur").glob("telegram.*")))
    ch.stop()
    assert not ch.alive()
    assert maildir.recover(outbox) and list((outbox / "new").glob("telegram.*"))


def test_receive_drops_allowed_messages_in_the_inbox_and_refuses_strangers(home, caplog):
    from lib.config import load_config
    (home / "config.yaml").write_text("channels:\n  telegram: {allow_from: ['42', 'alice']}\n")
    ch = Recorder(load_config(), home)
    assert ch.receive("100", "42", "hello", metadata={"message_id": 7})
    assert ch.receive("100", "7", "by name", metadata={"sender_aliases": ["alice"]})
    assert not ch.receive("100", "13", "let me in")
    assert not ch.receive("100", "7|alice", "split me")        # an id is compared whole
    files = sorted((home / "inbox" / "new").glob("*.json"))
    msgs = [json.loads(f.read_text()) for f in files]
    assert [m["text"] for m in msgs] == ["hello", "by name"]
    assert msgs[1]["sender_id"] == "7" and msgs[1]["metadata"] == {"sender_aliases": ["alice"]}
    assert msgs[0]["channel"] == "telegram" and msgs[0]["metadata"] == {"message_id": 7}
    assert "refused sender 13" in caplog.text and "channels.telegram.allow_from" in caplog.text


@pytest.mark.parametrize("allow,sender,aliases,ok", [
    ([], "1", (), False), (["*"], "anyone", (), True), (["1"], "1", (), True),
    (["1"], "2", (), False), (["+4915"], "4915", (), True), ([" 5 "], "5", (), True),
    (["@bob"], "123", ["bob"], True), (["bob"], "123", ["@bob"], True), ([], "1", ["1"], False),
    (["@bob"], "123|bob", (), False), (["123"], "123|bob", (), False),       # never split
    (["owner@example.com"], "x|owner@example.com|", (), False),
    (["x|owner@example.com|"], "x|owner@example.com|", (), True),            # but whole, it is
    (["bob"], "123", "bob", False), (["b"], "123", "bob", False),           # aliases: a list
    (["bob"], "123", [None, 7, "bob"], True), ([""], "", [""], False),
])
def test_allow_lists_deny_by_default_and_compare_ids_whole(allow, sender, aliases, ok):
    from lib.channels import allowed
    assert allowed(allow, sender, aliases) is ok


from lib.channels.base import split_message  # noqa: E402


def test_short_text_is_one_part():
    assert split_message("hello\n\nworld", 100) == ["hello\n\nworld"]


def test_split_between_paragraphs_first():
    text = "\n\n".join(f"paragraph {i} " + "x" * 30 for i in range(10))
    parts = split_message(text, 100)
    assert all(len(p) <= 100 for p in parts) and len(parts) > 1
    assert "\n\n".join(parts) == text                   # nothing lost, cuts at paragraph breaks


def test_a_long_paragraph_is_cut_between_lines_then_at_spaces():
    text = "\n".join(f"line {i} " + "word " * 8 for i in range(20)) + "\n" + "y" * 250
    parts = split_message(text, 120)
    assert all(len(p) <= 120 for p in parts)
    assert "".join(parts).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_a_code_block_is_never_cut_open():
    code = "```python\n" + "\n".join(f"print({i})  # some comment here" for i in range(40)) + "\n```"
    text = "Here is the code:\n\n" + code + "\n\nThat is all."
    parts = split_message(text, 300)
    assert all(len(p) <= 300 for p in parts)
    for p in parts:
        assert p.count("```") % 2 == 0, p                 # every part has its fences balanced
    body = [line for p in parts for line in p.split("\n") if line.startswith("print(")]
    assert body == [f"print({i})  # some comment here" for i in range(40)]
    assert any(p.startswith("```python") for p in parts[1:])


def test_a_code_block_that_fits_stays_whole_with_its_blank_lines():
    code = "```\na\n\nb\n```"
    assert split_message("intro\n\n" + code, 14) == ["intro", code]


def test_refused_sender_is_told_its_id_once_a_day(home):
    from lib.config import load_config
    (home / "config.yaml").write_text("channels:\n  telegram: {allow_from: ['42']}\n")
    ch = Recorder(load_config(), home)
    for _ in range(3):
        assert not ch.receive("77", "13", "hi", metadata={"sender_aliases": ["mallory"]})
    notes = [json.loads(p.read_text()) for p in (home / "outbox" / "new").glob("telegram.*.json")]
    assert [(n["chat_id"], n["text"]) for n in notes] == [
        ("77", "This assistant is private. Your telegram id is 13.")]
    assert not (home / "inbox" / "new").exists() or not list((home / "inbox" / "new").iterdir())


def test_media_paths_are_unique_and_safe(home, config):
    ch = Recorder(config, home)
    a, b = ch.media_path("../../etc/passwd"), ch.media_path("voice.oga")
    assert a.parent == b.parent == home / "media" / "telegram" and a != b
    assert a.name.endswith("_.._etc_passwd") and b.name.endswith("-voice.oga")


def test_transcription_through_groq(home, llm, tmp_path):
    from lib.config import load_config
    (home / "config.yaml").write_text(f"providers:\n  groq: {{api_key: g, api_base: '{llm.url}'}}\n")
    llm.transcripts.append("buy milk")
    audio = tmp_path / "v.oga"
    audio.write_bytes(b"OggS fake")
    assert Recorder(load_config(), home).transcribe(audio) == "[voice note, transcribed] buy milk"


def test_no_transcription_without_a_groq_key(config, home, tmp_path):
    audio = tmp_path / "v.ogg"
    audio.write_bytes(b"x")
    assert Recorder(config, home).transcribe(audio) is None


def test_a_message_received_twice_with_its_platform_key_enters_the_inbox_once(home):
    from lib.config import load_config
    (home / "config.yaml").write_text("channels:\n  telegram: {allow_from: ['42']}\n")
    ch = Recorder(load_config(), home)
    for _ in range(2):                                   # e.g. re-fetched after a crash
        ch.receive("100", "42", "hello", key="100-7", at=1764000000.5)
    ch.receive("100", "42", "later", key="100-8", at=1764000001.0)
    names = sorted(p.name for p in (home / "inbox" / "new").iterdir())
    assert names == ["01764000000500000000.telegram.100-7.json", "01764000001000000000.telegram.100-8.json"]
    from lib.maildir import unique_name
    assert unique_name() > names[-1]                    # sorts with the gateway's own names


def test_a_retry_sends_only_the_parts_not_sent_yet():
    msg, sent = {}, []

    def deliver(fail_at=None):
        for _, part in unsent(msg, ["a", "b", "c"]):
            if part == fail_at:
                raise SendError("down")
            sent.append(part)
    with pytest.raises(SendError):
        deliver(fail_at="b")
    deliver()                                           # the retry: the same dict
    assert sent == ["a", "b", "c"] and msg["_done"] == 3


@pytest.mark.parametrize("module,package", [
    ("websocket", "websocket-client"), ("telegram", "python-telegram-bot"),
    ("slack_sdk", "slack-sdk"), ("yaml", "pyyaml"), ("requests", "requests")])
def test_a_missing_package_is_named_as_pip_knows_it(home, tmp_path, monkeypatch, module, package):
    from lib import channels
    from lib.config import load_config
    (home / "config.yaml").write_text("channels:\n  telegram: {enabled: true, token: '1:x'}\n")
    config = load_config()
    (tmp_path / "needs_it.py").write_text(f"import {module}\n\n\nclass Fake:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "needs_it", raising=False)
    monkeypatch.setitem(sys.modules, module, None)              # as if it were not installed
    monkeypatch.setitem(channels.CHANNELS, "telegram", channels.CHANNELS["telegram"]._replace(
        module="needs_it", cls="Fake"))
    with pytest.raises(ConfigError) as e:
        channels.enabled(config, home)
    assert str(e.value) == (f"channel telegram needs the Python package {package}: "
                            ".venv/bin/pip install -r requirements.txt")


def test_parts_sent_before_a_failure_are_not_sent_again_after_a_restart(config, home, outbox):
    from lib.channels.base import unsent

    class TwoParts(Recorder):
        down = True

        def deliver(self, msg):
            for i, part in unsent(msg, ["part one", "part two"]):
                if i == 1 and self.down:
                    raise SendError("down", retry_after=60)
                self.sent.append(part)

    first = run(TwoParts(config, home))
    post_outbox(home, "telegram", "1", "long reply")
    first.wake()
    wait_for(lambda: first.sent == ["part one"])
    first.stop()                                    # the gateway stops while waiting to retry
    maildir.recover(outbox)
    second = TwoParts(config, home)
    second.down = False
    run(second)                                     # the next start sends the rest only
    try:
        wait_for(lambda: list((outbox / "sent").glob("telegram.*")))
        assert second.sent == ["part two"]
    finally:
        second.stop()


def test_only_the_file_queued_is_sent_and_what_cannot_be_sent_becomes_a_note(tmp_path):
    import os
    from lib.channels.attachments import MAX_SEND, Attachment, Note, with_files
    ws, secret = tmp_path / "ws", tmp_path / "secret"
    (ws / "out").mkdir(parents=True)
    secret.mkdir()
    for folder in (ws / "out", secret):
        (folder / "id.txt").write_text(f"from {folder.name}")
    (ws / "ok.txt").write_text("fine")
    os.mkfifo(ws / "pipe")
    with open(ws / "huge.bin", "wb") as f:
        f.truncate(MAX_SEND + 1)
    names = ["ok.txt", "out/id.txt", "pipe", "out", "huge.bin", "gone.txt"]
    msg = {"text": "", "media": [str(ws / n) for n in names]}
    (ws / "out").rename(ws / "was-out")             # the model swaps a folder for a link
    (ws / "out").symlink_to(secret)
    items = [item for _, item in with_files(msg, [])]
    assert items == [Attachment("ok.txt", b"fine")] + [
        Note(f"[attachment {name} could not be sent: {why}]") for name, why in [
            ("id.txt", "its path now leads to another file"), ("pipe", "it is not a regular file"),
            ("out", "it is not a regular file"),
            ("huge.bin", "it is larger than 50 MB"), ("gone.txt", "it no longer exists")]]
    assert msg["_done"] == len(names)


def test_a_download_that_drips_is_cut_off_and_nothing_is_kept(config, home, monkeypatch):
    """A server that sends a byte now and then never trips the per-read timeout: one deadline
    covers the whole download, and the part already written goes."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from lib.channels import net

    finished = []

    class Drip(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):           # a byte every 0.1 s, sized or chunked
            chunked = self.path.endswith("chunked")
            self.send_response(200)
            self.send_header(*("Transfer-Encoding", "chunked") if chunked else ("Content-Length", "60"))
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"1\r\nx\r\n" if chunked else b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
                self.wfile.write(b"0\r\n\r\n" if chunked else b"")
                finished.append(self.path)
            except OSError:
                pass                # the client gave up: as it should

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(net, "DOWNLOAD_S", 1.0)
    ch = Recorder(config, home)
    try:
        for path in ("slow.bin", "slow.bin?chunked"):
            with pytest.raises(ValueError, match="took longer than 1 s"):
                ch.download(f"http://127.0.0.1:{server.server_port}/{path}", "slow.bin", 10**6)
            assert finished == [], "the deadline was only seen once the whole body was in"
    finally:
        server.shutdown()
    assert not any((home / "media").rglob("*slow.bin"))


def test_a_platform_key_of_any_length_or_alphabet_names_one_inbox_file(config, home):
    """receive()'s key comes from the platform (a Message-ID, a msgId): a long or odd one must
    still make a valid file name, the same each time, so a redelivery is dropped."""
    (home / "config.yaml").write_text("channels:\n  telegram: {allow_from: ['1']}\n")
    from lib.config import load_config
    ch = Recorder(load_config(), home)
    for key in ("x" * 1000 + "/../", "x" * 1000 + "/../"):
        assert ch.receive("1", "1", "hi", key=key, at=1712345678.5)
    names = [p.name for p in (home / "inbox" / "new").iterdir()]
    assert len(names) == 1 and len(names[0]) < 120, names


def test_waits_the_platform_asks_for_are_not_failures_but_are_bounded(sending, outbox,
                                                                      monkeypatch):
    """A long reply under a rate limit is sent, however many parts are told to wait; a limit
    that never lifts ends in failed/ once the waits add up to RATE_LIMITED_S."""
    ch = sending("patient", [SendError("slow down", retry_after=0.01)] * 8 + [SendError("down")] * 3)
    wait_for(lambda: ch.sent == ["patient"])
    ch.stop()
    monkeypatch.setattr("lib.channels.base.RATE_LIMITED_S", 0.05)
    ch = sending("never", [SendError("slow down", retry_after=0.01)] * 100)
    wait_for(lambda: list((outbox / "failed").glob("telegram.*.json")))
    assert 90 <= len(ch.failures) <= 95 and ch.sent == []


def test_a_platform_that_says_wait_0_s_is_not_hammered(sending, outbox, monkeypatch):
    """Retry-After: 0 (or less) still waits the back-off, so the waits add up and end (found in
    review: a zero wait looped for ever without pause)."""
    monkeypatch.setattr("lib.channels.base.RATE_LIMITED_S", 0.05)
    ch = sending("never", [SendError("slow down", retry_after=r) for r in (0, -1) * 500])
    wait_for(lambda: list((outbox / "failed").glob("telegram.*.json")))
    assert len(ch.failures) >= 990            # a handful of tries, not thousands


def test_kept_events_with_ids_alike_but_not_equal_get_files_of_their_own(config, home):
    """DingTalk and QQ ids hold characters a file name cannot: a+b= and a/b= must not share one."""
    ch = Recorder(config, home)
    first, second = ch.keep("msg/a+b=", {"n": 1}), ch.keep("msg/a/b=", {"n": 2})
    assert first != second and json.loads(first.read_text()) == {"n": 1}
    assert ch.keep("msg/a+b=", {"n": 3}) == first           # the same id again: the same file


def test_a_sent_message_that_cannot_be_filed_is_not_sent_again(sending, outbox, caplog):
    """Filing into sent/ failing (here: a file where the folder goes) is not a failed send: the
    platform has the message, so it is not delivered again (an email would go out five times)."""
    conftest.block(outbox / "sent")
    ch = sending("once")
    wait_for(lambda: "was sent but cannot be filed" in caplog.text)
    assert ch.sent == ["once"] and ch.alive()


def test_a_failure_that_cannot_be_filed_leaves_the_channel_running(sending, home, outbox,
                                                                   caplog):
    conftest.block(outbox / "failed")
    ch = sending("to nobody", [SendError("chat not found", permanent=True)])
    wait_for(lambda: "waits in outbox/cur/" in caplog.text)
    post_outbox(home, "telegram", "1", "the next one")
    ch.wake()
    wait_for(lambda: ch.sent == ["the next one"])
