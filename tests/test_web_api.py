"""The OpenAI-compatible API and the token rules (SPEC §11), through the real gateway in a
subprocess, with the official openai client and raw HTTP where the client hides the wire."""
import http.client
import os
import json
import socket
import threading

import openai
import pytest

from tests.conftest import Gateway, model_yaml, run_cli, wait_for, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Web:
    """The gateway with its HTTP side on a free port; the token it wrote into config.yaml."""

    def __init__(self, home, llm, extra=""):
        self.home, self.port = home, free_port()
        write_config(home, model_yaml(llm, groq=None) + f"gateway:\n  port: {self.port}\n{extra}")
        self.gateway = Gateway(home)

    def start(self):
        from lib.config import load_config
        self.gateway.start()
        self.token = load_config().gateway.token
        return self

    def client(self, key=None, **kw) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or self.token, base_url=f"http://127.0.0.1:{self.port}/v1",
                             max_retries=0, timeout=30, **kw)

    def raw(self, method, path, body=None, headers=None):
        """(status, headers, body bytes) of one plain HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        out = r.status, dict(r.getheaders()), r.read()
        conn.close()
        return out


@pytest.fixture
def web(home, llm, gateway):
    w = Web(home, llm)
    w.gateway = gateway
    return w.start()


def test_a_chat_completion_is_an_inbox_message_of_channel_api(web, llm, home):
    reply = web.client().chat.completions.create(
        model="nanoclaw", messages=[{"role": "system", "content": "ignored"},
                                    {"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    done = wait_for(lambda: [json.loads(p.read_text()) for p in (home / "inbox" / "done").glob("*.json")],
                    what="the message done")
    assert [(m["channel"], m["chat_id"], m["text"]) for m in done] == [("api", "default", "hello there")]
    assert (home / "sessions" / "api_default.jsonl").exists()
    ledger = [json.loads(x) for p in (home / "usage").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [(x["source"], x["session"]) for x in ledger] == [("api", "api:default")]    # SPEC §10
    # the model saw the session's history, not the request's: the system message was ignored
    assert "ignored" not in json.dumps(llm.chat_requests[-1]["messages"])


def test_streamed_answers_come_as_server_sent_events_ending_with_done(web, llm):
    stream = web.client().chat.completions.create(
        model="nanoclaw", messages=[{"role": "user", "content": "stream this"}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: stream this"
    assert chunks[-1].choices[0].finish_reason == "stop"
    status, headers, body = web.raw("POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "raw"}], "stream": True},
                                    {"Authorization": f"Bearer {web.token}"})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_models_lists_nanoclaw(web):
    assert [m.id for m in web.client().models.list()] == ["nanoclaw"]


def test_the_user_field_picks_the_session(web, llm, home):
    client = web.client()
    for user, text in (("alice", "I am Alice"), ("bob", "I am Bob"), ("alice", "who am I?")):
        client.chat.completions.create(model="nanoclaw", user=user,
                                       messages=[{"role": "user", "content": text}])
    seen = [json.dumps(r["messages"]) for r in llm.chat_requests]
    assert "I am Alice" in seen[2] and "I am Bob" not in seen[2]
    assert "I am Alice" not in seen[1]
    assert {p.name for p in (home / "sessions").glob("api_*.jsonl")} == \
        {"api_alice.jsonl", "api_bob.jsonl"}


def test_errors_have_the_openai_shape(web, llm):
    with pytest.raises(openai.AuthenticationError) as e:
        web.client(key="wrong").models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as e:
        web.client().chat.completions.create(model="nanoclaw",
                                             messages=[{"role": "system", "content": "no user"}])
    assert "role 'user'" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        web.client().embeddings.create(model="nanoclaw", input="x")
    status, _, body = web.raw("POST", "/v1/chat/completions", b"{not json",
                              {"Authorization": f"Bearer {web.token}"})
    assert status == 400 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_a_model_that_cannot_be_reached_gives_502(web, llm):
    llm.script({"status": 401})         # the provider refuses our key: the turn cannot be answered
    with pytest.raises(openai.InternalServerError) as e:
        web.client().chat.completions.create(model="nanoclaw",
                                             messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502 and "refused the API key" in e.value.body["message"]


def test_no_reply_within_api_timeout_s_gives_504_and_the_message_is_kept(home, llm, gateway):
    w = Web(home, llm, "  api_timeout_s: 1\n")
    w.gateway = gateway
    w.start()
    llm.script({"delay": 3, "content": "late"})
    with pytest.raises(openai.APIStatusError) as e:
        w.client().chat.completions.create(model="nanoclaw",
                                           messages=[{"role": "user", "content": "slow"}])
    assert e.value.status_code == 504
    wait_for(lambda: list((home / "outbox" / "sent").glob("api.*.json")), what="the late reply")


def test_a_gateway_killed_mid_request_answers_it_after_the_restart(home, llm, gateway):
    """The request is an inbox message: the restarted gateway answers it, and the client's retry
    with the same Idempotency-Key gets that answer without asking the model again."""
    w = Web(home, llm)
    w.gateway = gateway
    w.start()
    llm.script({"delay": 30, "content": "never seen"}, "the answer")
    client = w.client(default_headers={"Idempotency-Key": "req-1"})
    failed = []

    def ask():
        try:
            client.chat.completions.create(model="nanoclaw",
                                           messages=[{"role": "user", "content": "important"}])
        except openai.APIConnectionError as e:
            failed.append(e)
    t = threading.Thread(target=ask)
    t.start()
    wait_for(lambda: llm.chat_requests, what="the model being asked")
    gateway.kill()
    t.join(30)
    assert failed, "the client should have lost its connection"
    gateway.start()
    reply = client.chat.completions.create(model="nanoclaw",
                                           messages=[{"role": "user", "content": "important"}])
    assert reply.choices[0].message.content == "the answer"
    assert len(llm.chat_requests) == 2          # the cut-off call, and the one after the restart
    wait_for(lambda: len(list((home / "inbox" / "done").glob("*.json"))) == 1, what="one done")


# --- the token rules ---

def test_a_host_others_can_reach_without_a_token_does_not_start(home, llm):
    write_config(home, model_yaml(llm, groq=None) + f"gateway: {{host: 0.0.0.0, port: {free_port()}}}\n")
    r = run_cli("gateway", timeout=30)
    assert r.returncode == 2 and "gateway.token is empty" in r.stderr and "onboard" in r.stderr
    assert "token" not in (home / "config.yaml").read_text()


def test_a_host_others_can_reach_starts_with_a_token(home, llm, gateway):
    port = free_port()
    write_config(home, model_yaml(llm, groq=None) +
                 f"gateway: {{host: 0.0.0.0, port: {port}, token: s3cret-token}}\n")
    gateway.start()
    w = Web.__new__(Web)
    w.port, w.token = port, "s3cret-token"
    assert [m.id for m in w.client().models.list()] == ["nanoclaw"]


def test_the_first_start_writes_a_token_keeping_the_file_mode_and_comments(home, llm, gateway):
    w = Web(home, llm)
    cfg = home / "config.yaml"
    cfg.write_text("# my notes\n" + cfg.read_text())
    cfg.chmod(0o640)
    w.gateway = gateway
    w.start()
    assert len(w.token) >= 40 and cfg.read_text().startswith("# my notes\n")
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"
    assert [m.id for m in w.client().models.list()] == ["nanoclaw"]


def test_on_loopback_a_token_that_cannot_be_written_means_401_and_status_says_onboard(
        home, llm, gateway, monkeypatch):
    monkeypatch.delenv("NANOCLAW_TOKEN", raising=False)
    w = Web(home, llm, "  token: ${NANOCLAW_TOKEN}\n")     # the owner's own indirection is kept
    w.gateway = gateway
    w.start()
    assert "${NANOCLAW_TOKEN}" in (home / "config.yaml").read_text()
    status, _, body = w.raw("GET", "/v1/models", headers={"Authorization": "Bearer "})
    assert status == 401 and "onboard" in json.loads(body)["error"]["message"]
    assert "needs a token" in run_cli("status").stdout


def test_other_origins_may_not_change_anything(web):
    ask = {"messages": [{"role": "user", "content": "from a page"}]}
    auth = {"Authorization": f"Bearer {web.token}"}
    status, _, body = web.raw("POST", "/v1/chat/completions", ask,
                              {**auth, "Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_origin"
    status, _, _ = web.raw("POST", "/login", {"token": web.token}, {"Origin": "http://evil.example"})
    assert status == 403
    own = f"http://127.0.0.1:{web.port}"
    assert web.raw("POST", "/v1/chat/completions", ask, {**auth, "Origin": own})[0] == 200
    assert web.raw("GET", "/v1/models", headers={**auth, "Origin": "http://evil.example"})[0] == 200



def test_other_methods_get_an_openai_shaped_error_after_the_token(web):
    auth = {"Authorization": f"Bearer {web.token}"}
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        status, headers, body = web.raw(method, "/v1/chat/completions")
        assert status == 401 and headers["Content-Type"] == "application/json", method
        status, headers, body = web.raw(method, "/v1/chat/completions", headers=auth)
        assert status == 405 and headers["Content-Type"] == "application/json", method
        if method != "HEAD":
            assert json.loads(body)["error"]["code"] == "method_not_allowed", method


def test_unknown_paths_need_the_token_before_they_are_not_found(web):
    auth = {"Authorization": f"Bearer {web.token}"}
    for method, path in (("GET", "/nope"), ("GET", "/v1/nope"), ("POST", "/ui/nope"),
                         ("GET", "/static/other.js"), ("DELETE", "/")):
        status, _, body = web.raw(method, path)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", path
        status, _, body = web.raw(method, path, headers=auth)
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found", path


def test_head_answers_like_get_without_a_body(web):
    """Uptime monitors ask HEAD /health; the answer has GET's headers and no body at all. Behind
    the token too."""
    auth = f"Authorization: Bearer {web.token}\r\n"
    for path, ctype, extra in (("/health", "application/json", ""),
                               ("/", "text/html; charset=utf-8", ""),
                               ("/v1/models", "application/json", auth)):
        get = web.raw("GET", path, headers={"Authorization": f"Bearer {web.token}"})
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
            s.sendall(f"HEAD {path} HTTP/1.0\r\n{extra}\r\n".encode())
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 ") and body == b"", answer[:300]
        assert f"Content-Type: {ctype}".encode() in head
        assert f"Content-Length: {len(get[2])}".encode() in head and get[0] == 200

def test_wrong_tokens_are_rate_limited(web):
    for _ in range(5):
        assert web.raw("POST", "/login", {"token": "guess"})[0] == 401
    status, headers, _ = web.raw("POST", "/login", {"token": web.token})
    assert status == 429 and int(headers["Retry-After"]) > 0
    status, _, _ = web.raw("GET", "/v1/models", headers={"Authorization": f"Bearer {web.token}"})
    assert status == 429            # the right token too, from that address, until it passes


def test_login_sets_a_cookie_that_opens_the_page_data(web):
    assert web.raw("GET", "/ui/overview")[0] == 401
    status, headers, _ = web.raw("POST", "/login", {"token": web.token})
    cookie = headers["Set-Cookie"]
    assert status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert web.token not in cookie
    status, _, body = web.raw("GET", "/ui/overview", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and "worker" in json.loads(body)["parts"][0]["name"]


def test_health_and_the_page_need_no_token_and_show_nothing_private(web, home):
    (home / "workspace" / "memory").mkdir(parents=True, exist_ok=True)
    (home / "workspace" / "memory" / "MEMORY.md").write_text("secret fact 4711")
    status, _, body = web.raw("GET", "/")
    assert status == 200 and b"<form id=\"login-form\"" in body and b"4711" not in body
    for path in ("/static/app.js", "/static/app.css"):
        assert web.raw("GET", path)[0] == 200
    for path in ("/ui/memory", "/ui/sessions", "/ui/failed", "/ui/cron", "/ui/usage",
                 "/ui/approvals", "/ui/chat", "/v1/models"):
        status, _, body = web.raw("GET", path)
        assert status == 401 and b"4711" not in body, path


def test_a_flood_of_connections_is_capped_and_the_server_recovers(web):
    from lib.web.server import MAX_CONNECTIONS
    idle = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(lambda: _refused(web.port), what="the connection past the cap refused")
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: web.raw("GET", "/health")[0] == 200, what="the server serving again")


def _refused(port) -> bool:
    """True when the server answered 503, in the OpenAI error shape like its other errors."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    if not answer.startswith(b"HTTP/1.0 503"):
        return False
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and b"Retry-After: 5" in head
    assert json.loads(body)["error"]["type"] == "server_error", answer
    return True


# --- the page's actions, hostile input included ---

def test_failed_messages_are_retried_or_dropped_by_name_only(web, home):
    auth = {"Authorization": f"Bearer {web.token}"}
    failed = home / "outbox" / "failed"
    failed.mkdir(parents=True, exist_ok=True)
    (failed / "telegram.1.1.1.json").write_text(json.dumps(
        {"id": "telegram.1.1.1", "channel": "telegram", "chat_id": "42", "text": "hi",
         "error": "HTTP 502 from Telegram"}))
    os.mkfifo(failed / "telegram.2.2.2.json")
    listed = json.loads(web.raw("GET", "/ui/failed", headers=auth)[2])["outbox"]
    assert [(f["name"], f["reason"]) for f in listed] == [
        ("telegram.2.2.2.json", ""), ("telegram.1.1.1.json", "HTTP 502 from Telegram")]
    for name in ("../../config.yaml", "telegram.1.1.1.json.error", "nope.json"):
        assert web.raw("POST", "/ui/failed", {"box": "outbox", "name": name, "action": "drop"},
                       auth)[0] == 404
    assert (home / "config.yaml").exists()
    # the FIFO is never opened: it cannot be retried, only dropped
    assert web.raw("POST", "/ui/failed", {"box": "outbox", "name": "telegram.2.2.2.json",
                                          "action": "retry"}, auth)[0] == 400
    assert web.raw("POST", "/ui/failed", {"box": "outbox", "name": "telegram.2.2.2.json",
                                          "action": "drop"}, auth)[0] == 200
    # retried: back into outbox/new without its old error; telegram is not running here, so
    # the gateway files it in failed/ again, with today's reason in its error field and beside it
    assert web.raw("POST", "/ui/failed", {"box": "outbox", "name": "telegram.1.1.1.json",
                                          "action": "retry"}, auth)[0] == 200
    error = wait_for(lambda: (failed / "telegram.1.1.1.json.error").exists() and
                     (failed / "telegram.1.1.1.json.error").read_text(), what="filed again")
    assert "not running" in error
    assert "not running" in json.loads((failed / "telegram.1.1.1.json").read_text())["error"]


def test_a_transcript_is_read_only_from_the_sessions_folder(web, home):
    auth = {"Authorization": f"Bearer {web.token}"}
    for name in ("../config.yaml", "..%2Fconfig.yaml", "%00.jsonl", ".hidden.jsonl"):
        status, _, body = web.raw("GET", f"/ui/session?name={name}", headers=auth)
        assert status in (400, 200) and b"token" not in body, name
        assert status == 400 or json.loads(body) == [], name


def test_the_parts_say_whether_each_chat_app_is_connected(home, llm, gateway):
    from tests.fakes.telegram_server import TOKEN, FakeTelegram
    with FakeTelegram() as tg:
        w = Web(home, llm, f"channels:\n  telegram: {{enabled: true, token: '{TOKEN}', "
                           f"api_base: '{tg.api_base}', allow_from: [alice]}}\n")
        w.gateway = gateway
        w.start()
        auth = {"Authorization": f"Bearer {w.token}"}

        def telegram():
            parts = json.loads(w.raw("GET", "/ui/overview", headers=auth)[2])["parts"]
            return next(p for p in parts if p["name"] == "telegram")
        assert wait_for(lambda: telegram()["connected"], what="telegram connected")
        overview = json.loads(w.raw("GET", "/ui/overview", headers=auth)[2])
        assert telegram()["alive"] and "telegram" not in overview["channels_off"]
        assert "slack" in overview["channels_off"] and overview["healthy"]


def test_a_model_that_is_down_gives_502_and_the_kept_message_is_answered_later(web, llm, home):
    llm.script(*[{"status": 503}] * 400)        # down, however often the worker tries
    client = web.client(default_headers={"Idempotency-Key": "k1"})
    ask = {"model": "nanoclaw", "messages": [{"role": "user", "content": "are you there?"}]}
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(**ask)
    assert e.value.status_code == 502 and "same Idempotency-Key" in e.value.body["message"]
    llm.reset()                                 # back
    wait_for(lambda: list((home / "inbox" / "done").glob("*.json")), what="the message answered")
    assert client.chat.completions.create(**ask).choices[0].message.content == "echo: are you there?"



def test_while_the_model_is_down_every_request_gets_502_not_only_the_first(web, llm, home):
    """The first message waits at the head of the inbox and its request gets the worker's
    notice; the ones queued behind it get 502 too, at once, instead of 504 after
    api_timeout_s (300 s)."""
    llm.script(*[{"status": 503}] * 400)
    client = web.client()
    for n in range(4):          # the last one streamed: the status says it too, not a 200
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="nanoclaw", user=f"u{n}", timeout=20,
                                           messages=[{"role": "user", "content": f"hi {n}"}],
                                           stream=n == 3)
        assert e.value.status_code == 502, (n, e.value.status_code)
    llm.reset()
    wait_for(lambda: len(list((home / "inbox" / "done").glob("*.json"))) == 4, timeout=30,
             what="all four answered once the model is back")

def test_the_page_chat_streams_the_steps_a_wait_notice_and_the_reply(web, llm):
    llm.script(*[{"status": 503}] * 400)
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    conn.request("POST", "/ui/chat", body=json.dumps({"text": "hello page"}),
                 headers={"Authorization": f"Bearer {web.token}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"

    def next_event():
        lines = []
        while (line := r.fp.readline().decode()) != "\n":
            lines.append(line.strip())
        return lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))
    name, data = next_event()
    assert name == "notice" and "not answering" in data["text"]
    llm.reset()
    llm.script({"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, "all fine")
    events = [next_event() for _ in range(4)]
    assert [n for n, _ in events] == ["step", "step", "step", "reply"]
    assert "list_dir" in events[0][1]["calls"][0] and events[1][1]["role"] == "tool"
    assert events[3][1] == {"text": "all fine", "error": None}
    conn.close()


def test_writing_the_token_at_start_is_not_taken_for_a_config_change(web, home):
    """The gateway notes the config's time after the token is written: an event in the home
    folder (where config.yaml is) must not reload the config; only a real edit does."""
    (home / "notes.txt").write_text("an event in the folder the config is in")
    # a message after it: once it is answered, the watcher has passed the event above
    web.client().chat.completions.create(model="nanoclaw", messages=[{"role": "user", "content": "x"}])
    assert "config reloaded" not in web.gateway.logs()
