"""Terminal output: color only on a real terminal, LLM markdown made readable, a spinner."""
import itertools
import os
import re
import sys
import threading

# name -> (code that turns it on, code that turns only it off), so styles can nest.
CODES = {"bold": (1, 22), "dim": (2, 22), "italic": (3, 23), "red": (31, 39), "green": (32, 39),
         "yellow": (33, 39), "blue": (34, 39), "magenta": (35, 39), "cyan": (36, 39)}


def use_color(stream) -> bool:
    """True on a terminal, unless NO_COLOR is non-empty (no-color.org) or TERM is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or the stream is closed
        return False


def _paint(text, codes, on=True):
    if not on or not codes:
        return text
    start = ";".join(str(CODES[c][0]) for c in codes)
    end = ";".join(str(CODES[c][1]) for c in reversed(codes))
    return f"\033[{start}m{text}\033[{end}m"


def style(text, *codes, stream=None) -> str:
    """Wrap text in the named styles when stream (default sys.stdout) shows color."""
    return _paint(text, codes, use_color(sys.stdout if stream is None else stream))


# Pieces of a line emphasis must not touch: inline code (maybe **bolded**), links, bare URLs.
_PROTECTED = re.compile(
    r"\*\*`(?P<boldcode>[^`]+)`\*\*|`(?P<code>[^`]+)`"
    r"|!?\[(?P<label>[^\]]*)\]\((?P<url>[^)\s]+)\)|(?P<bare>https?://\S+)")
_EMPHASIS = [  # (pattern, styles); markers must hug text and sit at word boundaries
    (re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*"), ["bold", "italic"]),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), ["bold"]),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), ["bold"]),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), ["italic"]),
    (re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])"), ["italic"]),
]
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_QUOTE = re.compile(r"^\s*>\s?(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")


def _emphasis(text, color):
    for pattern, names in _EMPHASIS:
        text = pattern.sub(lambda m: _paint(m.group(1), names, color), text)
    return text


def _inline(line, color):
    out, pos = [], 0
    for m in _PROTECTED.finditer(line):
        out.append(_emphasis(line[pos:m.start()], color))
        boldcode, code, label, url, bare = m.groups()
        if boldcode is not None:
            out.append(_paint(boldcode, ["bold", "cyan"], color))
        elif code is not None:
            out.append(_paint(code, ["cyan"], color))
        elif bare is not None:
            out.append(bare)
        elif label in ("", url):
            out.append(_paint(url, ["blue"], color))
        else:
            out.append(f"{_emphasis(label, color)} ({_paint(url, ['blue'], color)})")
        pos = m.end()
    out.append(_emphasis(line[pos:], color))
    return "".join(out)


def render_markdown(text, color=True) -> str:
    """Turn the markdown a model writes into terminal text; color=False gives plain text."""
    out, in_code = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
            if color:  # show the fence (and its language) dimmed; plain text drops it
                out.append(_paint(line, ["dim"]))
        elif in_code:
            out.append(line if color else "    " + line)
        elif m := _HEADING.match(line):
            out.append(_paint(_inline(m.group(1), color), ["bold"], color))
        elif _RULE.match(line):
            out.append(_paint("─" * 40, ["dim"], color))
        elif m := _QUOTE.match(line):
            out.append(_paint("│ ", ["dim"], color) + _inline(m.group(1), color))
        elif m := _BULLET.match(line):
            out.append(f"{m.group(1)}• {_inline(m.group(2), color)}")
        else:  # paragraphs and numbered lists
            out.append(_inline(line, color))
    return "\n".join(out)


class Spinner:
    """`with Spinner("thinking"):` animates on a terminal, does nothing elsewhere."""

    def __init__(self, label="thinking", stream=None, interval=0.1):
        self.label, self.interval = label, interval
        self.stream = sys.stderr if stream is None else stream
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if use_color(self.stream):
            utf8 = "utf" in (getattr(self.stream, "encoding", None) or "").lower()
            self._frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if utf8 else "|/-\\"
            self._stop.clear()
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self):
        for frame in itertools.cycle(self._frames):
            self.stream.write(f"\r{frame} {self.label}")
            self.stream.flush()
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")  # back to column 0 and clear the line
            self.stream.flush()


def print_error(msg):
    """One line on stderr: 'error: <msg>', the prefix red on a terminal."""
    one_line = " ".join(str(msg).strip().splitlines())
    print(f"{style('error:', 'red', 'bold', stream=sys.stderr)} {one_line}", file=sys.stderr)
