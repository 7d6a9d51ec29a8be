"""message: say something to a chat now, before the turn ends (progress, reminders, relays)."""
from lib.errors import ToolError


def message(ctx, content: str, channel: str = "", chat_id: str = "") -> str:
    """Send a message to a chat right away. Without channel and chat_id it goes to the current chat.
    Your final answer is sent anyway: use this only for extra messages.

    Args:
        content: the text to send
        channel: channel name such as telegram or slack (default: the current one)
        chat_id: chat on that channel (default: the current one)
    """
    if ctx.send is None:
        raise ToolError("sending messages is not available here")
    if not content.strip():
        raise ToolError("content is empty")
    channel, chat_id = channel or ctx.channel, chat_id or ctx.chat_id
    try:
        ctx.send(channel, chat_id, content)
    except ValueError as e:             # an unknown channel
        raise ToolError(str(e)) from None
    return f"Sent to {channel}:{chat_id}"


TOOLS = [message]
