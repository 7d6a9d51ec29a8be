"""Every supported LLM provider in one table. All of them speak the OpenAI Chat Completions API.

To add a provider: add a ProviderSpec here. Config keys, environment variables, auto-selection,
model-name handling and `status` follow from this table alone.
"""
from dataclasses import dataclass

from lib.errors import ConfigError


@dataclass(frozen=True)
class ProviderSpec:
    name: str                       # key under `providers:` in config.yaml
    display_name: str
    api_base: str                   # default OpenAI-compatible endpoint
    env_key: str = ""               # usual environment variable for the key
    keywords: tuple = ()            # substrings of a model name that point here
    is_gateway: bool = False        # routes any model ("vendor/model" names)
    is_local: bool = False          # runs on the user's machine; the key may be anything
    key_prefix: str = ""            # a key starting with this belongs to this gateway
    base_keyword: str = ""          # an api_base containing this belongs to this gateway
    strip: tuple = ()               # model-name prefixes to drop before sending
    strip_any_prefix: bool = False  # drop any "vendor/" prefix (gateways that want bare names)
    model_overrides: tuple = ()     # (substring of model, {param: value or None to omit})


# Reasoning models take no temperature and call max_tokens max_completion_tokens ("$x": x's value).
_REASONING = {"temperature": None, "max_tokens": None, "max_completion_tokens": "$max_tokens"}

PROVIDERS = (
    ProviderSpec("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY",
                 ("openrouter",), is_gateway=True, key_prefix="sk-or-", base_keyword="openrouter",
                 strip=("openrouter/",)),
    ProviderSpec("aihubmix", "AiHubMix", "https://aihubmix.com/v1", "AIHUBMIX_API_KEY",
                 ("aihubmix",), is_gateway=True, base_keyword="aihubmix", strip_any_prefix=True),
    ProviderSpec("anthropic", "Anthropic", "https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY",
                 ("anthropic", "claude"), strip=("anthropic/",)),
    ProviderSpec("openai", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY",
                 ("openai", "gpt", "o1", "o3", "o4"), strip=("openai/",),
                 model_overrides=(("gpt-5", _REASONING), ("o1", _REASONING), ("o3", _REASONING),
                                  ("o4-", _REASONING))),
    ProviderSpec("deepseek", "DeepSeek", "https://api.deepseek.com", "DEEPSEEK_API_KEY",
                 ("deepseek",), strip=("deepseek/",)),
    ProviderSpec("groq", "Groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY",
                 ("groq",), strip=("groq/",)),
    ProviderSpec("gemini", "Gemini", "https://generativelanguage.googleapis.com/v1beta/openai/",
                 "GEMINI_API_KEY", ("gemini",), strip=("gemini/", "google/")),
    ProviderSpec("minimax", "MiniMax", "https://api.minimax.io/v1", "MINIMAX_API_KEY",
                 ("minimax",), strip=("minimax/",)),
    ProviderSpec("dashscope", "DashScope (Qwen)",
                 "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY",
                 ("qwen", "dashscope"), strip=("dashscope/", "qwen/")),
    ProviderSpec("moonshot", "Moonshot (Kimi)", "https://api.moonshot.cn/v1", "MOONSHOT_API_KEY",
                 ("moonshot", "kimi"), strip=("moonshot/", "moonshotai/"),
                 model_overrides=(("kimi-k2.5", {"temperature": 1.0}),)),
    ProviderSpec("zhipu", "Zhipu (GLM)", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY",
                 ("glm", "zhipu", "zai"), strip=("zhipu/", "zai/", "z-ai/")),
    ProviderSpec("vllm", "vLLM (local)", "http://localhost:8000/v1", "VLLM_API_KEY",
                 ("vllm",), is_local=True, strip=("vllm/", "hosted_vllm/")),
    ProviderSpec("ollama", "Ollama (local)", "http://localhost:11434/v1", "OLLAMA_API_KEY",
                 ("ollama",), is_local=True, strip=("ollama/",)),
    ProviderSpec("custom", "Custom (OpenAI-compatible)", "", "", (), is_local=True),
)
BY_NAME = {p.name: p for p in PROVIDERS}


@dataclass(frozen=True)
class Resolved:
    """The provider a model will be sent to, with everything the client needs."""
    spec: ProviderSpec
    api_key: str
    api_base: str
    model: str                       # as the endpoint expects it
    extra_headers: dict
    overrides: dict


def usable(spec: ProviderSpec, pc) -> bool:
    return bool(pc.api_key) or (spec.is_local and bool(pc.api_base))


def resolve(cfg, model: str | None = None, provider: str | None = None) -> Resolved:
    """Pick the provider for the configured model (or `model`, sent to `provider` if given)."""
    model = model or cfg.agents.defaults.model
    chosen = provider or cfg.agents.defaults.provider
    spec = _auto(cfg, model) if chosen == "auto" else BY_NAME[chosen]
    pc = cfg.provider(spec.name)
    if not pc.api_key and not spec.is_local:     # _auto picks only a provider with a key or local
        raise ConfigError(_missing_key(cfg, spec))
    spec = _detect_gateway(pc) or spec
    if not (api_base := pc.api_base or spec.api_base):
        raise ConfigError(f"{cfg.path}: providers.{spec.name}.api_base is not set; "
                          "it needs the URL of an OpenAI-compatible endpoint")
    return Resolved(spec, pc.api_key or "no-key", api_base.rstrip("/"), _model_name(spec, model),
                    dict(pc.extra_headers), _overrides(spec, model))


def _auto(cfg, model: str) -> ProviderSpec:
    low = model.lower()
    ready = [s for s in PROVIDERS if usable(s, cfg.provider(s.name))]
    prefix = low.split("/", 1)[0] if "/" in low else ""
    rules = (lambda s: s.name == prefix,
             lambda s: not s.is_gateway and not s.is_local and any(k in low for k in s.keywords),
             lambda s: s.is_gateway,
             lambda s: s.is_local,        # a local endpoint was set up on purpose
             lambda s: True)              # any
    if ready:           # the first rule that picks a ready provider decides
        return next(s for rule in rules for s in ready if rule(s))
    wanted = next((s for s in PROVIDERS if not s.is_local and any(k in low for k in s.keywords)),
                  BY_NAME["openrouter"])
    raise ConfigError(_missing_key(cfg, wanted))


def _missing_key(cfg, spec: ProviderSpec) -> str:
    return (f"no API key for {spec.display_name}: set providers.{spec.name}.api_key in {cfg.path} "
            f"or the {spec.env_key} environment variable (any provider works: see `status`)")


def _detect_gateway(pc) -> ProviderSpec | None:     # by its key prefix, or its api_base
    return next((s for s in PROVIDERS
                 if (s.key_prefix and pc.api_key.startswith(s.key_prefix) and not pc.api_base)
                 or (s.base_keyword and s.base_keyword in pc.api_base)), None)


def _model_name(spec: ProviderSpec, model: str) -> str:
    if spec.strip_any_prefix:
        return model.rsplit("/", 1)[-1]
    return next((model[len(p):] for p in spec.strip if model.lower().startswith(p)), model)


def _overrides(spec: ProviderSpec, model: str) -> dict:
    bare = model.lower().rsplit("/", 1)[-1]
    return {k: v for start, params in spec.model_overrides if bare.startswith(start)
            for k, v in params.items()}
