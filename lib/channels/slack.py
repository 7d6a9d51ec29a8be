"""Slack over Socket Mode: the app opens the connection, so no public URL is needed.

Receiving: `apps.connections.open` (app token, xapp-…) hands out a single-use websocket URL.
Slack sends `hello`, then envelopes, and from time to time `disconnect` (routine recycling: we
ask for a new URL at once). Slack wants each envelope acked within 3 s and forgets it then, so a
message for us is first kept on disk (state/slack/pending/), then acked; the reaction, downloads
and transcription come after, on another thread, and a kept message a crash cut off is taken up
at the next start. Events are deduplicated on `event_id` and on channel and ts.

Sending: the Web API (bot token, xoxb-…) through slack-sdk's WebClient; files after the text,
each through Slack's external upload (files_upload_v2), in the same thread.

slack-sdk's own SocketModeClient runs its own threads and reconnects on its own schedule
(re-running a used single-use URL every half second, then a fresh one without backoff); this
loop is one thread that blocks on the socket and reconnects through `reconnect_wait`.
"""
import json
import logging
import re
from collections import OrderedDict
from urllib.parse import urlparse

from lib.channels.attachments import Attachment, Note, with_files
from lib.channels.base import Channel, SendError, split_message
from lib.channels import allowed

log = logging.getLogger(__name__)
# Slack recommends keeping a message's text under 4,000 characters (it truncates past 40,000).
LIMIT = 4000
MAX_FILE = 20 * 1024 * 1024
RETRYABLE = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
             "request_timeout"}


class SlackChannel(Channel):
    name = "slack"

    def __init__(self, config, home):
        super().__init__(config, home)
        import slack_sdk  # noqa: F401  (now: enabled() names a missing package at start-up)
        import websocket  # noqa: F401
        self.web = self.bot_user = None
        self._seen = OrderedDict()      # event ids and (channel, ts) pairs already handled

    def start(self):
        from slack_sdk import WebClient
        base = self.settings.api_base.rstrip("/") + "/"
        self.web = WebClient(token=self.settings.bot_token, base_url=base, timeout=30)
        super().start()

    # --- receiving ---

    def listen(self):
        self.keep_connected(self._session)

    def _session(self) -> bool:
        """One connection, read until it ends. True when Slack sent `disconnect` (or a rate limit
        has been waited out): connect again at once."""
        from slack_sdk.errors import SlackApiError
        try:
            if not self.bot_user:
                self.bot_user = self.web.auth_test()["user_id"]
            url = self.web.apps_connections_open(app_token=self.settings.app_token)["url"]
        except SlackApiError as e:
            wait, error = _retry_after(e.response), e.response.get("error")
            hint = "; check channels.slack.bot_token and app_token" if error in (
                "not_authed", "invalid_auth", "not_allowed_token_type", "token_revoked",
                "account_inactive") else ""
            if wait is None:
                raise ConnectionError(_describe(e.response) + hint) from None
            log.warning("slack: %s", _describe(e.response))
            self.stopping.wait(wait)
            return True
        ws = self.connect(url)
        for frame in self.read_json(ws):
            kind = frame.get("type")
            if kind == "events_api" and not self._keep_event(frame.get("payload") or {}):
                continue                # not acked: Slack sends it again
            if frame.get("envelope_id"):
                ws.send(json.dumps({"envelope_id": frame["envelope_id"]}))
            if kind == "hello":
                self.connected = True
                log.info("slack: connected as %s", self.bot_user)
            elif kind == "disconnect":
                if frame.get("reason") == "link_disabled":     # Socket Mode switched off
                    self.connected = False                      # so: back off, and say so
                    raise ConnectionError("Socket Mode is off in the Slack app's settings")
                log.info("slack: asked to reconnect (%s)", frame.get("reason"))
                return True
        return False

    def _keep_event(self, payload: dict) -> bool:
        """Keep a message for us on disk before its ack; False (no ack) when it cannot be kept."""
        job = None
        try:
            if job := self._event(payload):
                self.keep(f"{job['chat']}-{job['ts']}", job)
        except OSError as e:            # forgotten, so that Slack's resend is taken
            for key in (payload.get("event_id"), job and (job["chat"], job["ts"])):
                self._seen.pop(key, None)
            log.error("slack: cannot keep an event (%s); Slack will send it again", e)
            return False
        except Exception:               # a bug: acked all the same, the connection kept
            log.exception("slack: cannot handle an event")
        return True

    def _first(self, key) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = True
        if len(self._seen) > 2000:
            self._seen.popitem(last=False)
        return True

    def _event(self, payload: dict) -> dict | None:
        """A message addressed to us, as handle_kept() takes it; None for any other event."""
        event = payload.get("event") or {}
        if payload.get("event_id") and not self._first(payload["event_id"]):
            return                              # delivered again after a reconnect
        kind, sub = event.get("type"), event.get("subtype")
        user, chat, ts = event.get("user") or "", event.get("channel") or "", event.get("ts") or ""
        if kind not in ("message", "app_mention") or sub and sub != "file_share":
            return                              # edits, joins, deletions…
        if not user or user == self.bot_user or event.get("bot_id"):
            return                              # ourselves, or another bot (no loops)
        s, im = self.settings, event.get("channel_type") == "im"
        raw = event.get("text") or ""
        mentioned = kind == "app_mention" or bool(re.search(rf"<@{self.bot_user}(\|[^>]*)?>", raw))
        if im and (not s.dm.enabled or s.dm.policy == "allowlist" and user not in s.dm.allow_from):
            log.info("slack: direct message from %s ignored (channels.slack.dm)", user)
            return
        if not im and (s.group_policy == "mention" and not mentioned or s.group_policy ==
                       "allowlist" and chat not in s.group_allow_from):
            return
        if not (im or mentioned) and not allowed(s.allow_from, user):
            return                              # not addressed to us, and not our owner
        if not self._first((chat, ts)):
            return                              # a mention comes as message and app_mention
        text = _plain(re.sub(rf"<@{self.bot_user}(\|[^>]*)?>", "", raw)).strip()
        files = event.get("files") or []
        if not text and not files:
            return
        meta = {"ts": ts, "thread_ts": event.get("thread_ts") or
                (ts if s.reply_in_thread and not im else None), "channel_type": event.get(
                    "channel_type") or "channel", "is_group": not im}
        return {"chat": chat, "user": user, "ts": ts, "text": text, "files": files, "meta": meta}

    def handle_kept(self, job: dict):
        s, chat, user, ts, meta = self.settings, job["chat"], job["user"], job["ts"], job["meta"]
        if not allowed(s.allow_from, user):
            self.receive(chat, user, job["text"], (), meta)     # refused (told their id once a day)
            return
        if s.react_emoji and self._react("reactions_add", chat, ts, s.react_emoji):
            meta["reaction"] = s.react_emoji            # "working on it", removed on reply
        media, notes = self._download(job["files"])
        self.receive(chat, user, "\n".join(filter(None, [job["text"], *notes])), media, meta,
                     key=f"{chat}-{ts}", at=_seconds(ts))   # sent again after a crash: dropped

    def _download(self, files) -> tuple[list, list]:
        """Shared files into media/, with the bot token; voice clips transcribed."""
        import requests
        paths, notes = [], []
        hosts = {urlparse(self.settings.api_base).hostname, "slack.com"}
        for f in files:
            name = f.get("name") or f.get("id") or "file"
            url = f.get("url_private_download") or f.get("url_private") or ""
            host = urlparse(url).hostname or ""
            try:
                if not (host in hosts or host.endswith(".slack.com")):
                    raise ValueError(f"not a Slack file address: {url!r}")
                if (f.get("size") or 0) > MAX_FILE:
                    raise ValueError(f"{f['size']} bytes is over the {MAX_FILE} byte limit")
                with requests.get(url, headers={"Authorization": f"Bearer {self.settings.bot_token}"},
                                  timeout=60, stream=True) as r:
                    r.raise_for_status()
                    if "text/html" in r.headers.get("Content-Type", "") and \
                            "html" not in (f.get("mimetype") or ""):
                        raise ValueError("Slack sent a sign-in page (does the app have files:read?)")
                    path = self.save_media(r, name, MAX_FILE)
            except (requests.RequestException, OSError, ValueError) as e:
                log.warning("slack: cannot download %s: %s", name, e)
                notes.append(f"[file {name} could not be downloaded]")
                continue
            paths.append(str(path))
            if (f.get("mimetype") or "").startswith("audio/"):
                notes.append(self.transcribe(path) or "")
        return paths, notes

    def _react(self, method, chat, ts, emoji) -> bool:
        """Best effort: a missing reactions:write scope must not stop the replies."""
        from slack_sdk.errors import SlackApiError
        try:
            getattr(self.web, method)(channel=chat, timestamp=ts, name=emoji)
            return True
        except SlackApiError as e:
            if e.response.get("error") == "already_reacted":    # before a crash, as now
                return True
            log.info("slack: %s", _describe(e.response))
        except OSError as e:
            log.info("slack: %s %s failed: %s", method, emoji, e)
        return False

    # --- sending ---

    def deliver(self, msg: dict):
        from slack_sdk.errors import SlackApiError
        meta, chat = msg.get("metadata") or {}, msg["chat_id"]
        parts = []
        for part in split_message(msg.get("text") or "", LIMIT):
            rendered = to_mrkdwn(part)      # escapes and links can make it longer: check again
            parts += [rendered] if len(rendered) <= LIMIT else split_message(rendered, LIMIT)
        args = {"thread_ts": meta["thread_ts"]} if meta.get("thread_ts") else {}
        try:
            for _, item in with_files(msg, parts):
                if isinstance(item, Attachment):    # getUploadURLExternal, POST, complete…
                    self.web.files_upload_v2(channel=chat, file=item.data, filename=item.name,
                                             title=item.name, **args)
                else:
                    text = _esc(item) if isinstance(item, Note) else item
                    self.web.chat_postMessage(channel=chat, text=text, **args)
        except SlackApiError as e:
            wait, error = _retry_after(e.response), e.response.get("error")
            if wait is None and (e.response.status_code < 500 and error not in RETRYABLE):
                raise SendError(_describe(e.response), permanent=True) from None
            raise SendError(_describe(e.response), retry_after=wait) from None
        if meta.get("reaction") and meta.get("ts"):
            self._react("reactions_remove", chat, meta["ts"], meta["reaction"])


def _retry_after(response) -> float | None:
    if response.status_code != 429:
        return None
    value = response.headers.get("Retry-After") or response.headers.get("retry-after") or "1"
    try:
        return float(value)
    except ValueError:
        return 1.0


def _describe(response) -> str:
    method = response.api_url.rsplit("/", 1)[-1]
    return f"{method} answered {response.status_code} {response.get('error') or ''}".strip()


# --- text both ways ---

def _plain(text: str) -> str:
    """Slack's markup in a received message back to plain text."""
    text = re.sub(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>", r"\2 (\1)", text)
    text = re.sub(r"<((?:https?|mailto):[^|>]+)>", r"\1", text)
    text = re.sub(r"<#C\w+\|([^>]+)>", r"#\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(md: str) -> str:
    """Markdown to Slack's mrkdwn: **b** → *b*, *i* and _i_ → _i_, ~~s~~ → ~s~, [t](u) → <u|t>,
    headings → bold lines, lists → bullets; code kept as code; & < > escaped everywhere."""
    pieces = re.split(r"(^[ \t]*```[^\n]*\n.*?^[ \t]*```[ \t]*$)", md, flags=re.S | re.M)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:                       # a fenced block: Slack shows no language tag
            out.append("```\n" + _esc(piece.split("\n", 1)[1].rsplit("```", 1)[0]) + "```")
        else:
            out.append(_prose(piece))
    return "".join(out)


def _prose(text: str) -> str:
    held = []

    def hold(s: str) -> str:
        held.append(s)
        return f"\x00{len(held) - 1}\x00"

    text = re.sub(r"`[^`\n]+`", lambda m: hold(_esc(m[0])), text)
    text = re.sub(r"\[([^\]\n]+)\]\(([^)\s]+)\)", lambda m: hold(f"<{_esc(m[2])}|{_esc(m[1])}>"),
                  text)
    text = _esc(text)
    text = re.sub(r"^([ \t]*)[-*+][ \t]+", r"\1• ", text, flags=re.M)
    text = re.sub(r"(?<![*\w])\*(?![\s*])([^*\n]+?)(?<![\s*])\*(?![*\w])", r"_\1_", text)
    text = re.sub(r"\*\*(?!\s)(.+?)(?<!\s)\*\*|__(?!\s)(.+?)(?<!\s)__",
                  lambda m: f"*{m[1] or m[2]}*", text)
    text = re.sub(r"~~(?!\s)(.+?)(?<!\s)~~", r"~\1~", text)
    text = re.sub(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", lambda m: f"*{m[1].strip('*')}*", text,
                  flags=re.M)
    return re.sub("\x00(\\d+)\x00", lambda m: held[int(m[1])], text)


def _seconds(ts: str) -> float | None:
    """A Slack ts ("1712345678.123456") as epoch seconds; None when it is not one."""
    try:
        return float(ts)
    except ValueError:
        return None
