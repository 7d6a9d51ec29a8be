"""Telegram: long polling with python-telegram-bot's `Bot` on an event loop owned by the listen
thread (the send thread hands its work to that loop); replies are the model's markdown as
Telegram HTML. The getUpdates offset is saved once an update's inbox file exists."""
import asyncio
import concurrent.futures
import contextlib
import html
import importlib.util
import json
import logging
import re
import threading
from pathlib import Path

from lib import maildir
from lib.channels.attachments import Attachment, Note, note, with_files
from lib.channels.base import Channel, SendError, split_message
from lib.channels.typing_sign import Typing
from lib.errors import ConfigError

log = logging.getLogger(__name__)
LIMIT = 4096                    # characters (UTF-16 units) per message, after parsing
POLL_S = 25                     # long-poll timeout asked of Telegram; HTTP read waits 10 s more
TYPING_EVERY = 4.0              # "typing…" lasts 5 s on the user's screen
MAX_DOWNLOAD = 20 * 1024 * 1024     # the Bot API serves files up to 20 MB
MAX_PHOTO = 10 * 1024 * 1024        # larger photos go as documents
KINDS = {".jpg": "photo", ".jpeg": "photo", ".png": "photo", ".webp": "photo",
         ".gif": "animation", ".ogg": "voice", ".oga": "voice", ".opus": "voice",
         ".mp3": "audio", ".m4a": "audio", ".mp4": "video"}     # how each is sent
COMMANDS = [("new", "Start a new conversation"), ("help", "What I can do")]


class TelegramChannel(Channel):
    name = "telegram"

    def __init__(self, config, home):
        super().__init__(config, home)
        import telegram  # noqa: F401  (now: enabled() names a missing package at start-up)
        if self.settings.proxy.startswith("socks") and not importlib.util.find_spec("socksio"):
            raise ConfigError("channel telegram needs httpx[socks] for a SOCKS proxy: "
                              ".venv/bin/pip install 'httpx[socks]'")
        self.loop = self.bot = self._main = None
        self._ready = threading.Event()         # connected: deliver() waits for it
        self.typing = Typing(self.name, self._typing_sign, TYPING_EVERY)
        self._webhook_deleted = False
        self.offset_path = self.home / "state" / "telegram_offset.json"
        self._bot_key = self.settings.token.split(":")[0]   # an offset is only good for its bot

    # --- the listen thread's event loop ---

    def listen(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)       # this thread's own
        try:
            self._main = self.loop.create_task(self._run())
            self.loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        finally:
            self._ready.clear()
            rest = asyncio.all_tasks(self.loop)     # sends in flight: they stay in outbox/cur/
            for task in rest:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self.loop.close()

    def stop(self, timeout: float = 2.0):
        self.stopping.set()
        self.typing.stop()
        if self.loop and self._main:
            try:
                self.loop.call_soon_threadsafe(self._main.cancel)
            except RuntimeError:
                pass                                # the loop has already closed
        super().stop(timeout)

    async def _run(self):
        from telegram import Bot
        from telegram.request import HTTPXRequest
        s = self.settings
        base, proxy = s.api_base.rstrip("/"), s.proxy or None
        self.bot = Bot(s.token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot",
                       request=HTTPXRequest(8, read_timeout=30, proxy=proxy),
                       get_updates_request=HTTPXRequest(1, read_timeout=10, proxy=proxy))
        try:
            await self._poll()
        finally:
            await self.bot.shutdown()

    async def _poll(self):
        from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError
        offset, attempt, connected = self._load_offset(), 0, False
        quick = False       # after an error replies wait for a poll to get through: a short one
        while not self.stopping.is_set():
            try:
                if not connected:
                    await self.bot.initialize()         # getMe
                    log.info("telegram: connected as @%s", self.bot.username)
                    with contextlib.suppress(TelegramError):
                        await self.bot.set_my_commands(COMMANDS)
                    connected = True
                    self._ready.set()
                updates = await self.bot.get_updates(offset=offset, timeout=0 if quick else POLL_S,
                                                     allowed_updates=["message"])
                self._ready.set()
                quick = False
                for update in updates:
                    try:
                        if update.message:
                            await self._handle(update.message)
                    except (TelegramError, OSError):
                        raise                       # fetched again after the reconnect
                    except Exception:
                        log.exception("telegram: update %s skipped", update.update_id)
                    offset = update.update_id + 1
                    self._save_offset(offset)       # only now: its inbox file exists
                attempt = 0
                continue
            except RetryAfter as e:
                await asyncio.sleep(_seconds(e.retry_after))
                continue
            except Conflict as e:
                if not self._webhook_deleted:
                    log.warning("telegram: %s; deleting the webhook", e)
                    self._webhook_deleted = True
                    with contextlib.suppress(TelegramError):
                        await self.bot.delete_webhook()
                    continue
                log.warning("telegram: %s (is another program polling with this token?)", e)
            except InvalidToken:
                log.error("telegram: the token was refused; check channels.telegram.token")
            except (TelegramError, OSError) as e:   # network, 5xx, a download cut off, disk
                log.warning("telegram: polling failed (%s); reconnecting", e)
                self._ready.clear()                 # replies wait rather than use up retries
                quick = True
            if not await asyncio.to_thread(self.reconnect_wait, attempt):
                return
            attempt += 1

    def _load_offset(self):
        try:
            data = json.loads(self.offset_path.read_text())
        except (OSError, ValueError):
            return None
        return data.get("offset") if data.get("bot") == self._bot_key else None

    def _save_offset(self, offset: int):
        maildir.atomic_write(self.offset_path, json.dumps({"bot": self._bot_key, "offset": offset}))

    # --- receiving ---

    async def _handle(self, m):
        user, chat = m.from_user, m.chat
        if user is None or user.is_bot:
            return
        text, me = m.text or m.caption or "", self.bot.username
        if chat.type != "private":
            replied = m.reply_to_message and m.reply_to_message.from_user and \
                m.reply_to_message.from_user.id == self.bot.id
            mention = re.search(rf"@{re.escape(me)}\b", text, re.I)   # /new@bot too; not @bot_fan
            if not self.settings.groups or not (replied or mention):
                return
            text = re.sub(rf"(?<![\w/])@{re.escape(me)}\b", "", text, flags=re.I).strip()
        text = re.sub(rf"^(/\w+)@{re.escape(me)}\b", r"\1", text, flags=re.I)     # /new@bot -> /new
        who = {"sender_aliases": [user.username]} if user.username else {}     # @name too
        if not self.admits(user.id, who):
            self.receive(chat.id, user.id, text, metadata=who)     # refused, before any download
            return
        media = []
        for item, name, voice in _attachments(m):
            path = await self._download(item, name)
            if path is None:
                text += f"\n[{name} was not downloaded: over 20 MB or unavailable]"
                continue
            media.append(str(path))
            heard = voice and await asyncio.to_thread(self.transcribe, path)
            if heard:
                text = f"{text}\n{heard}".strip()
        if not text.strip() and not media:
            return                                  # a sticker, a poll, a location…
        meta = {"message_id": m.message_id, "user_id": user.id, "username": user.username,
                "first_name": user.first_name, "chat_type": chat.type,
                "is_group": chat.type != "private", **who}
        if m.is_topic_message and m.message_thread_id:
            meta["thread_id"] = m.message_thread_id
        if self.receive(chat.id, user.id, text.strip(), media, meta,       # the same update
                        key=f"{chat.id}-{m.message_id}", at=m.date.timestamp()):  # once
            self.typing.start(str(chat.id))

    async def _download(self, item, name: str):
        from telegram.error import BadRequest
        if (item.file_size or 0) > MAX_DOWNLOAD:
            return None
        from lib.channels.net import DOWNLOAD_S
        path = None
        try:
            f = await self.bot.get_file(item.file_id)
            path = self.media_path(name)
            await asyncio.wait_for(f.download_to_drive(path), DOWNLOAD_S)   # a dripping server
            return path
        except (BadRequest, TimeoutError) as e:     # too big, expired, too slow: not asked again
            log.warning("telegram: cannot download %s: %s", name,
                        str(e) or f"it took longer than {DOWNLOAD_S:.0f} s")
            if path:
                path.unlink(missing_ok=True)
            return None

    def _typing_sign(self, chat: str):
        """Called by the typing thread; the request runs on the listen thread's loop."""
        call = self.bot.send_chat_action(chat, "typing")
        try:
            asyncio.run_coroutine_threadsafe(call, self.loop).result(timeout=30)
        except RuntimeError:            # the loop has closed (stopping): never awaited, closed
            call.close()
            raise

    # --- sending (called in the send thread; the work runs on the listen thread's loop) ---

    def deliver(self, msg: dict):
        from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError
        while not self._ready.wait(1):
            if self.stopping.is_set():
                raise SendError("stopping before Telegram could be reached")
        try:
            asyncio.run_coroutine_threadsafe(self._send(msg), self.loop).result(timeout=600)
            return
        except RetryAfter as e:
            raise SendError(str(e), retry_after=_seconds(e.retry_after)) from None
        except (Forbidden, BadRequest) as e:        # blocked by the user, chat not found…
            raise SendError(f"Telegram refused the message: {e}", permanent=True) from None
        except (TelegramError, RuntimeError, concurrent.futures.CancelledError,
                concurrent.futures.TimeoutError) as e:
            raise SendError(f"{type(e).__name__}: {e}") from None

    async def _send(self, msg: dict):
        from telegram import ReplyParameters
        chat, meta = str(msg["chat_id"]), msg.get("metadata") or {}
        if msg.get("reply_to") and "_done" not in msg:     # the first try: the sign goes
            self.typing.done(chat)
        extra = {"message_thread_id": meta["thread_id"]} if meta.get("thread_id") else {}
        quote = meta.get("message_id") if msg.get("reply_to") else None
        for i, item in with_files(msg, render(msg.get("text") or "")):
            kw = dict(extra, reply_parameters=ReplyParameters(
                quote, allow_sending_without_reply=True) if quote and i == 0 else None)
            if isinstance(item, Attachment):
                await self._send_file(chat, item, kw)
            elif isinstance(item, Note):
                await self.bot.send_message(chat, item, **kw)
            else:
                await self._send_text(chat, *item, kw)

    async def _send_text(self, chat: str, md: str, text: str, kw: dict):
        from telegram.error import BadRequest
        try:
            await self.bot.send_message(chat, text, parse_mode="HTML", **kw)
        except BadRequest as e:
            if "parse entities" not in str(e).lower():
                raise
            log.info("telegram: HTML refused (%s); sending plain text", e)
            await self.bot.send_message(chat, md, **kw)

    async def _send_file(self, chat: str, file: Attachment, kw: dict):
        """As what its name says it is (a photo, an animation, a voice note, music, a video), else
        as a document; one Telegram refuses as the former goes as a document after all."""
        from telegram.error import BadRequest
        kind = KINDS.get(Path(file.name).suffix.lower(), "document")
        if kind == "photo" and len(file.data) > MAX_PHOTO:
            kind = "document"
        if kind != "document":
            try:
                return await getattr(self.bot, f"send_{kind}")(chat, file.data, filename=file.name,
                                                              **kw)
            except BadRequest as e:
                log.info("telegram: %s refused as a %s (%s); sending a document", file.name, kind,
                         e)
        try:
            await self.bot.send_document(chat, file.data, filename=file.name, **kw)
        except BadRequest as e:
            await self.bot.send_message(chat, note(file.name, f"Telegram refused it ({e})"), **kw)


def _attachments(m):
    """(file, name, is_voice) per attachment; a photo's largest size; .ogg (not .oga) for Groq."""
    return [(f, name, f is m.voice) for f, name in (
        (m.photo[-1] if m.photo else None, "photo.jpg"), (m.voice, "voice.ogg"),
        (m.document, m.document and m.document.file_name or "file"),
        (m.audio, m.audio and m.audio.file_name or "audio.mp3")) if f]


def _seconds(value) -> float:
    return float(value.total_seconds() if hasattr(value, "total_seconds") else value)


# --- markdown to Telegram HTML ---

def render(text: str, limit: int = LIMIT) -> list[tuple[str, str]]:
    """(markdown, html) parts: the markdown split at the limit, each part rendered and checked
    again (Telegram counts UTF-16 units of the parsed text); a part too long is split finer."""
    out = []
    for part in split_message(text, limit):
        rendered = to_html(part)
        visible = html.unescape(re.sub(r"<[^>]*>", "", rendered))
        if max(_units(part), _units(visible)) <= LIMIT or limit < 256:
            out.append((part, rendered))
        else:
            out.extend(render(part, limit * 3 // 4))
    return out


def _units(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


_INLINE = [(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", "b"), (r"__(?=\S)(.+?)(?<=\S)__", "b"),
           (r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", "i"),
           (r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)", "i"),
           (r"~~(?=\S)(.+?)(?<=\S)~~", "s"), (r"\|\|(?=\S)(.+?)(?<=\S)\|\|", "tg-spoiler")]


def to_html(md: str) -> str:
    """The subset Telegram understands: b, i, s, a, code, pre, blockquote, tg-spoiler.
    Headings become bold lines and list items bullets; everything else is escaped text."""
    kept = []

    def keep(s):
        kept.append(s)
        return f"\x00{len(kept) - 1}\x00"

    def fence(m):
        lang = f' class="language-{m.group(1)}"' if m.group(1) else ""
        body = m.group(2)[:-1] if m.group(2).endswith("\n") else m.group(2)
        return keep(f"<pre><code{lang}>{_esc(body)}</code></pre>")

    text = md.replace("\x00", "")
    text = re.sub(r"^[ \t]*```[ \t]*([\w#+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", fence,
                  text, flags=re.S | re.M)
    text = re.sub(r"```([^`\n]+)```|`([^`\n]+)`",
                  lambda m: keep(f"<code>{_esc(m.group(1) or m.group(2))}</code>"), text)
    text = _esc(text)
    text = re.sub(r"\[([^\]\n]+)\]\(((?:https?|tg|mailto):[^\s)]+)\)", lambda m: keep(
        f'<a href="{m.group(2).replace(chr(34), "&quot;")}">') + m.group(1) + keep("</a>"), text)
    text = re.sub(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", r"<b>\1</b>", text, flags=re.M)
    text = re.sub(r"^&gt; ?.*(?:\n&gt; ?.*)*", lambda m: "<blockquote>" + re.sub(
        r"^&gt; ?", "", m.group(0), flags=re.M) + "</blockquote>", text, flags=re.M)
    text = re.sub(r"^([ \t]*)[-*+][ \t]+", "\\1• ", text, flags=re.M)
    for pattern, tag in _INLINE:
        text = re.sub(pattern, rf"<{tag}>\1</{tag}>", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
