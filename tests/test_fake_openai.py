"""Tests for the scripted fake OpenAI server, driven through the real `openai` SDK."""

import http.client
import json
import time

import openai
import pytest

try:
    from tests.fakes.openai_server import FakeOpenAI
except ImportError:  # pytest "prepend" import mode puts tests/ itself on sys.path
    from fakes.openai_server import FakeOpenAI


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture()
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture()
def client(fake):
    with openai.OpenAI(api_key="x", base_url=fake.url, max_retries=0, timeout=5) as c:
        yield c


def ask(client, text="hi", **kw):
    return client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}], **kw)


def test_plain_text(fake, client):
    fake.script("Hello there!")
    resp = ask(client)
    assert resp.object == "chat.completion"
    assert resp.model == "test-model"
    assert resp.id
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there!"
    assert not choice.message.tool_calls
    assert choice.finish_reason == "stop"
    u = resp.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens > 0
    assert fake.pending == 0


def test_tool_calls(fake, client):
    fake.script({"content": None, "tool_calls": [
        {"name": "read_file", "arguments": {"path": "notes.md"}},
        {"name": "write_file", "arguments": '{"path": "x", "text": "y"}', "id": "call_custom"},
    ]})
    resp = ask(client, "read my notes")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    first, second = choice.message.tool_calls
    assert first.type == "function"
    assert first.id.startswith("call_")
    assert first.function.name == "read_file"
    assert json.loads(first.function.arguments) == {"path": "notes.md"}
    assert second.id == "call_custom"
    assert second.function.arguments == '{"path": "x", "text": "y"}'


def test_reasoning_content_and_finish_reason(fake, client):
    fake.script({"content": "42", "reasoning_content": "thinking hard", "finish_reason": "length"})
    resp = ask(client)
    msg = resp.choices[0].message
    assert msg.content == "42"
    assert (msg.model_extra or {}).get("reasoning_content") == "thinking hard"
    assert getattr(msg, "reasoning_content") == "thinking hard"
    assert resp.choices[0].finish_reason == "length"


def test_streaming_text(fake, client):
    fake.script("The quick brown fox jumps")
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    pieces = [d.content for d in deltas if d.content]
    assert len(pieces) > 1
    assert "".join(pieces) == "The quick brown fox jumps"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_streaming_tool_calls_reassembled(fake, client):
    fake.script({"content": "Let me look.", "reasoning_content": "need file", "tool_calls": [
        {"name": "read_file", "arguments": {"path": "a/very/long/path/to/notes.md"}},
        {"name": "list_dir", "arguments": {"path": "."}},
    ]})
    content, reasoning, calls, finish = "", "", {}, None
    for chunk in ask(client, stream=True):
        assert chunk.usage is None  # no include_usage -> no usage chunk
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for tc in delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert content == "Let me look."
    assert reasoning == "need file"
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["read_file", "list_dir"]
    assert json.loads(calls[0]["arguments"]) == {"path": "a/very/long/path/to/notes.md"}
    assert json.loads(calls[1]["arguments"]) == {"path": "."}
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_rate_limit_429(fake, client):
    fake.script({"status": 429, "headers": {"Retry-After": "0"}})
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "0"
    assert err.code == "rate_limit_exceeded"
    assert isinstance(err.body, dict) and err.body["message"]


def test_server_error_500_and_custom_body(fake, client):
    fake.script({"status": 500},
                {"status": 400, "body": {"error": {"message": "bad tools", "type": "invalid_request_error",
                                                   "code": "bad"}}},
                {"status": 401})
    with pytest.raises(openai.InternalServerError) as info:
        ask(client)
    assert info.value.status_code == 500
    with pytest.raises(openai.BadRequestError) as info:
        ask(client)
    assert info.value.code == "bad" and "bad tools" in str(info.value)
    with pytest.raises(openai.AuthenticationError):
        ask(client)


def test_sdk_retry_then_success(fake):
    # retry-after-ms keeps the SDK's wait tiny (it ignores Retry-After: 0).
    fake.script({"status": 503, "headers": {"retry-after-ms": "1"}}, "recovered")
    with openai.OpenAI(api_key="x", base_url=fake.url, max_retries=2) as c:
        assert ask(c).choices[0].message.content == "recovered"
    assert len(fake.requests) == 2


def test_echo_default(fake, client):
    assert ask(client, "first").choices[0].message.content == "echo: first"
    parts = [{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]
    resp = client.chat.completions.create(model="m", messages=[
        {"role": "system", "content": "sys"}, {"role": "user", "content": parts}])
    assert resp.choices[0].message.content == "echo: multipart"
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, "s", stream=True))
    assert streamed == "echo: s"


def test_request_log(fake, client):
    fake.script("ok")
    ask(client, "log me", tools=[{"type": "function", "function": {
        "name": "read_file", "parameters": {"type": "object", "properties": {}}}}])
    client.models.list()
    first, second = fake.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer x"
    assert first["headers"]["content-type"].startswith("application/json")
    assert first["body"]["model"] == "test-model"
    assert first["body"]["messages"] == [{"role": "user", "content": "log me"}]
    assert first["body"]["tools"][0]["function"]["name"] == "read_file"
    assert second["path"] == "/v1/models" and second["body"] is None
    assert fake.chat_requests == [first["body"]]


def test_callable_reply(fake, client):
    fake.script(lambda body: f"{len(body['messages'])} messages",
                lambda body: {"tool_calls": [{"name": "echo", "arguments": {"m": body["model"]}}]})
    assert ask(client).choices[0].message.content == "1 messages"
    call = ask(client).choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"m": "test-model"}


def test_callable_that_raises_is_reported(fake, client):
    fake.script(lambda body: 1 / 0)
    with pytest.raises(openai.InternalServerError):
        ask(client)
    assert "ZeroDivisionError" in fake.errors[0]


def test_delay_timeout_and_drop(fake):
    fake.script({"delay": 3.0, "content": "too late"}, {"drop": True}, "after")
    with openai.OpenAI(api_key="x", base_url=fake.url, max_retries=0, timeout=0.1) as c:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(c)
        assert time.monotonic() - t0 < 2.5          # the 0.1 s timeout, not the 3 s delay
    with openai.OpenAI(api_key="x", base_url=fake.url, max_retries=0, timeout=5) as c:
        with pytest.raises(openai.APIConnectionError):
            ask(c)
        assert ask(c).choices[0].message.content == "after"


def test_models_and_404(fake, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="e", input="x")
    assert info.value.body["type"] == "invalid_request_error"


def test_transcription(fake, client):
    fake.transcripts.append("buy milk")
    result = client.audio.transcriptions.create(model="whisper-large-v3",
                                                file=("a.ogg", b"OggS" + b"\0" * 96))
    assert result.text == "buy milk"
    entry = fake.requests[-1]
    assert entry["path"] == "/v1/audio/transcriptions"
    assert entry["body"] == {"model": "whisper-large-v3", "filename": "a.ogg", "size": 100}
    assert entry["headers"]["content-type"].startswith("multipart/form-data")
    again = client.audio.transcriptions.create(model="whisper-1", file=("b.ogg", b"x"))
    assert again.text == "hello from a voice note"


def test_keep_alive_raw_http(fake):
    """Several requests on one HTTP/1.1 connection, including a stream, all framed correctly."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a"}]})
        for _ in range(2):
            conn.request("POST", "/v1/chat/completions", payload,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Length")
            assert json.loads(resp.read())["choices"][0]["message"]["content"] == "echo: a"
        conn.request("POST", "/v1/chat/completions",
                     json.dumps({"model": "m", "stream": True,
                                 "messages": [{"role": "user", "content": "b"}]}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Type").startswith("text/event-stream")
        lines = [ln for ln in resp.read().decode().split("\n") if ln]
        assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
        conn.request("GET", "/nope")
        resp = conn.getresponse()
        assert resp.status == 404 and "error" in json.loads(resp.read())
    finally:
        conn.close()
