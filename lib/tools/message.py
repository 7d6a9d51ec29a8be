"""message: say something to a chat now, before the turn ends (progress, reminders, relays),
with workspace files attached if asked."""
from lib.errors import ToolError
from lib.tools.files import resolve

MAX_FILES = 10
MAX_MB = 50                     # per file; what Telegram takes from a bot (and the channels send)


def message(ctx, content: str, channel: str = "", chat_id: str = "",
            media: list[str] = ()) -> str:
    """Send a message to a chat right away. Without channel and chat_id it goes to the current chat.
    Your final answer is sent anyway: use this only for extra messages, or to send files.

    Args:
        content: the text to send
        channel: channel name such as telegram or slack (default: the current one)
        chat_id: chat on that channel (default: the current one)
        media: paths of workspace files to send as attachments (at most 10, each up to 50 MB)
    """
    if ctx.send is None:
        raise ToolError("sending messages is not available here")
    if len(media) > MAX_FILES:
        raise ToolError(f"at most {MAX_FILES} files per message; send the rest in another one")
    files = [_attachment(ctx, p) for p in media]
    if not content.strip() and not files:
        raise ToolError("content is empty")
    channel, chat_id = channel or ctx.channel, chat_id or ctx.chat_id
    try:
        ctx.send(channel, chat_id, content, **({"media": files} if files else {}))
    except ValueError as e:             # an unknown channel
        raise ToolError(str(e)) from None
    return f"Sent to {channel}:{chat_id}" + (f" with {len(files)} file(s)" if files else "")


def _attachment(ctx, path) -> str:
    """The real path of a regular file to attach: checked like any tool path, and for size."""
    if not isinstance(path, str):
        raise ToolError(f"media must list file paths, got {path!r}")
    p = resolve(ctx, path, reading=True)
    if not p.is_file():
        raise ToolError(f"{path} is a folder; attach the files in it" if p.is_dir() else
                        f"{path} is not a regular file" if p.exists() else f"no such file: {path}")
    size = p.stat().st_size
    if size > MAX_MB * 2**20:
        raise ToolError(f"{path} is {size / 2**20:.1f} MB; files over {MAX_MB} MB cannot be sent")
    return str(p)


TOOLS = [message]
