"""Provider choice (registry.resolve) and the chat client, against the fake OpenAI server over HTTP."""
import time

import pytest

from lib.config import load_config
from lib.errors import ConfigError, ProviderDown, ProviderError
from lib.channels.voice import transcribe
from lib.providers.client import OpenAIProvider
from lib.providers.registry import resolve
from tests.conftest import write_config
from tests.fakes.openai_server import DEFAULT_TRANSCRIPT

HI = [{"role": "user", "content": "hi"}]


def cfg_with(home, model, providers="", defaults=""):
    """Write a config with `model` and the given provider lines (YAML under `providers:`)."""
    write_config(home, f"providers:\n{providers or '  {}'}\n"
                       f"agents:\n  defaults: {{model: '{model}'{defaults}}}\n")
    return load_config()


def fake_provider(home, llm, model="fake-model", name="custom", key="", extra="", **kw):
    """A Provider for the `name` provider pointed at the fake server."""
    cfg = cfg_with(home, model, f"  {name}: {{api_key: '{key}', api_base: '{llm.url}'{extra}}}",
                   f", provider: {name}")
    return OpenAIProvider(resolve(cfg), **{"backoff": 0.01, **kw})


# --- resolve(): which provider, which endpoint, which model name ---

ALL_KEYS = "\n".join(f"  {n}: {{api_key: k-{n}}}" for n in
                     ("openrouter", "anthropic", "deepseek", "dashscope", "moonshot", "zhipu"))


@pytest.mark.parametrize("model,provider,sent", [
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("anthropic/claude-opus-4-5", "anthropic", "claude-opus-4-5"),
    ("deepseek-chat", "deepseek", "deepseek-chat"),
    ("qwen-max", "dashscope", "qwen-max"),
    ("kimi-k2.5", "moonshot", "kimi-k2.5"),
    ("moonshotai/kimi-k2-turbo", "moonshot", "kimi-k2-turbo"),
    ("glm-4.7", "zhipu", "glm-4.7"),
])
def test_auto_picks_the_direct_provider_by_model_keyword(home, model, provider, sent):
    r = resolve(cfg_with(home, model, ALL_KEYS))
    assert (r.spec.name, r.model, r.api_key) == (provider, sent, f"k-{provider}")
    assert r.api_base == r.spec.api_base.rstrip("/")


def test_auto_honours_an_explicit_openrouter_prefix(home):
    r = resolve(cfg_with(home, "openrouter/anthropic/claude-opus-4-5", ALL_KEYS))
    assert r.spec.name == "openrouter" and r.model == "anthropic/claude-opus-4-5"
    assert r.api_base == "https://openrouter.ai/api/v1"


def test_auto_falls_back_to_a_gateway_keeping_the_vendor_prefix(home):
    r = resolve(cfg_with(home, "anthropic/claude-opus-4-5", "  openrouter: {api_key: sk-or-v1-x}"))
    assert r.spec.name == "openrouter" and r.model == "anthropic/claude-opus-4-5"
    assert r.api_key == "sk-or-v1-x" and r.api_base == "https://openrouter.ai/api/v1"


def test_auto_uses_a_key_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-ds-env")
    r = resolve(cfg_with(home, "deepseek-chat"))
    assert r.spec.name == "deepseek" and r.api_key == "sk-ds-env"


def test_openrouter_key_under_another_provider_goes_to_openrouter(home):
    r = resolve(cfg_with(home, "gpt-4o", "  openai: {api_key: sk-or-v1-abc}"))
    assert r.spec.name == "openrouter" and r.api_base == "https://openrouter.ai/api/v1"
    assert r.api_key == "sk-or-v1-abc" and r.model == "gpt-4o"


def test_gateway_detected_from_the_api_base(home):
    r = resolve(cfg_with(home, "openai/gpt-4o",
                         "  openai: {api_key: k, api_base: 'https://aihubmix.com/v1/'}"))
    assert r.spec.name == "aihubmix" and r.api_base == "https://aihubmix.com/v1"
    assert r.model == "gpt-4o"


def test_aihubmix_strips_any_vendor_prefix(home):
    r = resolve(cfg_with(home, "anthropic/claude-opus-4-5", "  aihubmix: {api_key: k}"))
    assert r.spec.name == "aihubmix" and r.model == "claude-opus-4-5"


def test_local_vllm_with_api_base_and_no_key(home):
    r = resolve(cfg_with(home, "meta-llama/Llama-3.1-8B-Instruct",
                         "  vllm: {api_base: 'http://localhost:8000/v1'}"))
    assert r.spec.name == "vllm" and r.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert r.api_base == "http://localhost:8000/v1" and r.api_key   # the SDK needs some key


def test_explicit_provider_setting_wins_over_keywords(home):
    r = resolve(cfg_with(home, "claude-sonnet-4-5", ALL_KEYS, ", provider: deepseek"))
    assert r.spec.name == "deepseek" and r.model == "claude-sonnet-4-5"


def test_resolve_for_another_model(home):
    cfg = cfg_with(home, "deepseek-chat", ALL_KEYS)
    assert resolve(cfg, "glm-4.7").spec.name == "zhipu"


def test_missing_key_names_the_key_and_env_var(home):
    with pytest.raises(ConfigError) as e:
        resolve(cfg_with(home, "anthropic/claude-opus-4-5"))
    msg = str(e.value)
    assert "providers.anthropic.api_key" in msg and "ANTHROPIC_API_KEY" in msg
    assert str(home / "config.yaml") in msg


def test_missing_key_for_the_explicit_provider(home):
    with pytest.raises(ConfigError, match="providers.moonshot.api_key .*MOONSHOT_API_KEY"):
        resolve(cfg_with(home, "kimi-k2.5", "  openrouter: {api_key: k}", ", provider: moonshot"))


def test_custom_without_api_base_is_a_config_error(home):
    with pytest.raises(ConfigError, match="providers.custom.api_base is not set"):
        resolve(cfg_with(home, "my-model", "  custom: {api_key: k}", ", provider: custom"))


# --- what reaches the server ---

def test_kimi_k25_is_sent_temperature_1(home, llm):
    p = fake_provider(home, llm, model="kimi-k2.5", name="moonshot", key="mk", temperature=0.3)
    p.complete(HI)
    body = llm.chat_requests[0]
    assert body["model"] == "kimi-k2.5" and body["temperature"] == 1.0 and body["max_tokens"] == 8192


def test_gpt5_gets_max_completion_tokens_and_no_temperature(home, llm):
    p = fake_provider(home, llm, model="openai/gpt-5", name="openai", key="sk-x", max_tokens=1234)
    p.complete(HI)
    body = llm.chat_requests[0]
    assert body["model"] == "gpt-5"
    assert body["max_completion_tokens"] == 1234
    assert "temperature" not in body and "max_tokens" not in body


def test_ordinary_models_get_max_tokens_and_temperature(home, llm):
    p = fake_provider(home, llm, max_tokens=100, temperature=0.2)
    p.complete(HI)
    body = llm.chat_requests[0]
    assert body["max_tokens"] == 100 and body["temperature"] == 0.2
    assert "max_completion_tokens" not in body


def test_extra_headers_and_key_reach_the_server(home, llm):
    p = fake_provider(home, llm, key="sekret", extra=", extra_headers: {APP-Code: abc, X-Title: nanoclaw}")
    p.complete(HI)
    headers = llm.requests[0]["headers"]
    assert headers["app-code"] == "abc" and headers["x-title"] == "nanoclaw"
    assert headers["authorization"] == "Bearer sekret"


# --- Provider.complete ---

def test_text_reply(home, llm):
    llm.script("Hello there!")
    reply = fake_provider(home, llm).complete(HI)
    assert reply.content == "Hello there!" and reply.tool_calls == []
    assert reply.finish_reason == "stop" and reply.usage["total_tokens"] > 0
    assert reply.message() == {"role": "assistant", "content": "Hello there!"}
    body = llm.chat_requests[0]
    assert body["messages"] == HI and body["model"] == "fake-model" and "tools" not in body


def test_tool_calls_are_parsed(home, llm):
    llm.script({"content": None, "tool_calls": [
        {"name": "read_file", "arguments": {"path": "a.txt"}, "id": "call_1"},
        {"name": "list_dir", "arguments": {"path": "."}, "id": "call_2"}]})
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    reply = fake_provider(home, llm).complete(HI, tools)
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [{"id": "call_1", "name": "read_file", "arguments": '{"path": "a.txt"}'},
                                {"id": "call_2", "name": "list_dir", "arguments": '{"path": "."}'}]
    assert reply.message()["tool_calls"][0] == {
        "id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
    assert llm.chat_requests[0]["tools"] == tools


def test_reasoning_content_is_kept(home, llm):
    llm.script({"content": "42", "reasoning_content": "6 times 7"})
    reply = fake_provider(home, llm).complete(HI)
    assert reply.message() == {"role": "assistant", "content": "42", "reasoning_content": "6 times 7"}


def test_429_with_retry_after_is_retried(home, llm):
    llm.script({"status": 429, "headers": {"Retry-After": "0"}}, "ok")
    p = fake_provider(home, llm, backoff=5)        # only Retry-After: 0 keeps this fast
    start = time.monotonic()
    assert p.complete(HI).content == "ok"
    assert time.monotonic() - start < 3.5      # not the 4-6 s of a backoff of 5
    assert len(llm.requests) == 2


def test_server_errors_are_retried(home, llm):
    llm.script({"status": 500}, {"status": 503}, "ok")
    assert fake_provider(home, llm).complete(HI).content == "ok"
    assert len(llm.requests) == 3


def test_timeout_is_retried(home, llm):
    llm.script({"delay": 0.5, "content": "too late"}, "ok")
    assert fake_provider(home, llm, timeout=0.1).complete(HI).content == "ok"
    assert len(llm.requests) == 2


def test_dropped_connection_is_retried(home, llm):
    llm.script({"drop": True}, "ok")
    assert fake_provider(home, llm).complete(HI).content == "ok"
    assert len(llm.requests) == 2


def test_giving_up_is_one_sentence_naming_the_endpoint(home, llm):
    llm.script(*[{"status": 502}] * 3)
    p = fake_provider(home, llm, retries=2)
    with pytest.raises(ProviderDown) as e:
        p.complete(HI)
    assert len(llm.requests) == 3
    assert str(e.value) == f"{p.name} at {p.r.api_base} is not answering (HTTP 502, 3 tries)"


def test_401_fails_at_once_naming_the_key(home, llm):
    llm.script({"status": 401}, "never")
    with pytest.raises(ProviderError) as e:
        fake_provider(home, llm, name="deepseek", key="bad").complete(HI)
    assert "providers.deepseek.api_key" in str(e.value) and "401" in str(e.value)
    assert len(llm.requests) == 1


def test_404_names_the_model(home, llm):
    llm.script({"status": 404, "message": "The model `nope-1` does not exist"})
    with pytest.raises(ProviderError) as e:
        fake_provider(home, llm, model="nope-1").complete(HI)
    assert "'nope-1'" in str(e.value) and "404" in str(e.value)
    assert "agents.defaults.model" in str(e.value)       # issue 15: the key to fix
    assert len(llm.requests) == 1


def test_connection_refused_names_the_url(home, llm):
    """Issue 15: a local server that is not running (ollama, vllm) was only 'ConnectionError'."""
    import socket
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cfg = cfg_with(home, "llama3.2", f"  ollama: {{api_base: '{url}'}}", ", provider: ollama")
    with pytest.raises(ProviderError) as e:
        OpenAIProvider(resolve(cfg), retries=1, backoff=0.01).complete(HI)
    assert url in str(e.value) and "not answering" in str(e.value)


def test_400_is_not_retried(home, llm):
    llm.script({"status": 400, "message": "messages: bad shape"})
    with pytest.raises(ProviderError, match="HTTP 400.*bad shape"):
        fake_provider(home, llm).complete(HI)
    assert len(llm.requests) == 1


# --- transcription ---

def test_transcribe_sends_oga_as_ogg(home, llm, tmp_path):
    cfg = cfg_with(home, "x", f"  groq: {{api_key: gk, api_base: '{llm.url}'}}")
    voice = tmp_path / "file_7.oga"
    voice.write_bytes(b"OggS fake audio")
    assert transcribe(cfg, str(voice)) == DEFAULT_TRANSCRIPT
    req = llm.requests[0]
    assert req["path"] == "/v1/audio/transcriptions"
    assert req["body"]["filename"] == "file_7.ogg" and req["body"]["size"] == len(b"OggS fake audio")
    assert req["body"]["model"] == "whisper-large-v3"
    assert req["headers"]["authorization"] == "Bearer gk"


def test_transcribe_without_groq_key(home, llm, tmp_path):
    cfg = cfg_with(home, "x", f"  groq: {{api_base: '{llm.url}'}}")
    voice = tmp_path / "v.oga"
    voice.write_bytes(b"x")
    with pytest.raises(ProviderError, match="providers.groq.api_key"):
        transcribe(cfg, str(voice))
    assert llm.requests == []


def test_transcribe_error_is_a_provider_error(home, llm, tmp_path):
    llm.transcripts.append({"status": 400, "message": "file is empty"})
    cfg = cfg_with(home, "x", f"  groq: {{api_key: gk, api_base: '{llm.url}'}}")
    voice = tmp_path / "v.ogg"
    voice.write_bytes(b"")
    with pytest.raises(ProviderError, match="transcription failed: file is empty"):
        transcribe(cfg, str(voice))


def test_tool_arguments_sent_as_an_object_become_json_text(config, home):
    """Some OpenAI-compatible servers send `arguments` as an object; the loop logs a slice of it,
    the session stores it and the next request must carry it as text."""
    import json as _json
    from lib.agent.loop import run_turn
    from lib.providers.client import _reply
    from lib.tools import Context, default_registry
    body = {"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "list_dir", "arguments": {"path": "."}}}]}}]}
    reply = _reply(_json.dumps(body))
    assert reply.tool_calls[0]["arguments"] == '{"path": "."}'

    from tests.fakes.scripted import ScriptedProvider
    new = run_turn([], ScriptedProvider(reply, "done"), default_registry(),
                   Context(config, config.workspace), 5)
    assert new[-1]["content"] == "done" and not new[1]["content"].startswith("Error")


def test_a_retry_after_that_is_neither_seconds_nor_a_date_means_the_usual_backoff(home, llm):
    """It raised ValueError out of complete(): a stray header from a proxy ended the turn."""
    llm.script({"status": 429, "headers": {"Retry-After": "soon"}}, "ok")
    p = fake_provider(home, llm, backoff=0.01)
    assert p.complete(HI).content == "ok" and len(llm.requests) == 2
