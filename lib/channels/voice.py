"""Voice notes to text, for the channels: Groq's Whisper endpoint through the openai SDK."""
from lib.errors import ProviderError
from lib.providers.client import _error_text


def transcribe(cfg, path: str, model: str = "whisper-large-v3") -> str:
    """Speech to text (the groq provider's key and api_base); ProviderError says why not."""
    pc = cfg.provider("groq")
    if not pc.api_key:
        raise ProviderError("voice notes need a Groq key: set providers.groq.api_key")
    import openai
    client = openai.OpenAI(api_key=pc.api_key, base_url=pc.api_base or
                           "https://api.groq.com/openai/v1", timeout=60, max_retries=2)
    name = str(path).rsplit("/", 1)[-1]
    if name.endswith(".oga"):
        name = name[:-4] + ".ogg"       # Groq refuses the .oga name Telegram gives voice notes
    try:
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model=model, file=(name, f.read())).text
    except OSError as e:
        raise ProviderError(f"cannot read the audio file {path}: {e.strerror}") from None
    except openai.OpenAIError as e:
        raise ProviderError(f"transcription failed: {_error_text(e) or e}") from None
