import io
import re
import time

import pytest

from lib import term
from lib.term import Spinner, print_error, render_markdown, style, use_color

ANSI = re.compile(r"\033\[[0-9;]*[A-Za-z]")
BOLD, ITALIC, DIM, CYAN, BLUE = "\033[1m", "\033[3m", "\033[2m", "\033[36m", "\033[34m"


class FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def color_env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def plain(md):
    out = render_markdown(md, color=False)
    assert not ANSI.search(out), repr(out)
    return out


# --- use_color / style ---

def test_use_color_only_on_tty():
    assert use_color(FakeTTY())
    assert not use_color(io.StringIO())
    assert not use_color(object())


@pytest.mark.parametrize("value", ["1", "true", "0"])
def test_no_color_respected_whatever_its_value(monkeypatch, value):
    monkeypatch.setenv("NO_COLOR", value)
    assert not use_color(FakeTTY())
    assert style("hi", "red", stream=FakeTTY()) == "hi"


def test_an_empty_no_color_keeps_colour(monkeypatch):
    """no-color.org: NO_COLOR counts only when it is set and not empty (issue 15)."""
    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.delenv("TERM", raising=False)
    assert use_color(FakeTTY())


def test_dumb_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color(FakeTTY())


def test_style():
    assert style("hi", "bold", "red", stream=FakeTTY()) == "\033[1;31mhi\033[39;22m"
    assert style("hi", "bold", stream=io.StringIO()) == "hi"


# --- markdown, plain and colored ---

def test_headings():
    assert plain("# Title\n### Sub ##") == "Title\nSub"
    out = render_markdown("## Title")
    assert BOLD in out and "#" not in out and "Title" in out
    assert plain("#hashtag") == "#hashtag"


def test_bold():
    assert plain("a **big** and __wide__ word") == "a big and wide word"
    assert render_markdown("**big**") == BOLD + "big\033[22m"


def test_bold_italic_and_bold_code():
    assert plain("***both*** and **`make`**") == "both and make"
    out = render_markdown("***both*** and **`make`**")
    assert out == "\033[1;3mboth\033[23;22m and \033[1;36mmake\033[39;22m"


def test_italic():
    assert plain("an *odd* and _rare_ word") == "an odd and rare word"
    assert render_markdown("_rare_") == ITALIC + "rare\033[23m"


def test_snake_case_and_math_untouched():
    for text in ["use my_var_name and other_var_here", "2*3*4 = 24", "a * b * c", "x_1 + y_2"]:
        assert plain(text) == text
        assert render_markdown(text) == text


def test_inline_code():
    assert plain("run `pip install **x**` now") == "run pip install **x** now"
    out = render_markdown("run `my_var *x*` now")
    assert CYAN + "my_var *x*" in out and BOLD not in out and ITALIC not in out


def test_code_block_verbatim():
    md = "text\n```python\ndef f(**kw):\n    return __name__ + _x_ # **no**\n```\nafter *it*"
    out = plain(md)
    assert out == "text\n    def f(**kw):\n        return __name__ + _x_ # **no**\nafter it"
    colored = render_markdown(md).split("\n")
    assert colored[1] == DIM + "```python\033[22m"
    assert colored[2:4] == ["def f(**kw):", "    return __name__ + _x_ # **no**"]
    assert ITALIC in colored[5]


def test_unclosed_code_block_stays_code():
    assert plain("```\n# not a heading") == "    # not a heading"


def test_lists():
    md = "- one\n* two\n  + nested **b**\n1. first\n2) second"
    assert plain(md) == "• one\n• two\n  • nested b\n1. first\n2) second"
    assert BOLD in render_markdown(md)


def test_quote():
    assert plain("> wise *words*") == "│ wise words"
    assert render_markdown("> hi") == DIM + "│ \033[22mhi"


def test_links():
    assert plain("see [the docs](https://x.io/a_b_c) now") == "see the docs (https://x.io/a_b_c) now"
    assert plain("[https://x.io](https://x.io)") == "https://x.io"
    assert plain("bare https://x.io/__init__.py stays") == "bare https://x.io/__init__.py stays"
    assert BLUE + "https://x.io" in render_markdown("[x](https://x.io)")


def test_horizontal_rule():
    for rule in ["---", "***", "_ _ _"]:
        assert plain(rule) == "─" * 40
    assert DIM in render_markdown("---")


# --- spinner ---

def test_spinner_noop_off_tty():
    stream = io.StringIO()
    with Spinner("thinking", stream=stream, interval=0.01):
        time.sleep(0.05)
    assert stream.getvalue() == ""


def test_spinner_noop_with_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    stream = FakeTTY()
    with Spinner("thinking", stream=stream, interval=0.01):
        time.sleep(0.05)
    assert stream.getvalue() == ""


def test_spinner_on_tty_animates_and_clears():
    stream = FakeTTY()
    spinner = Spinner("thinking", stream=stream, interval=0.01)
    start = time.monotonic()
    with spinner:
        time.sleep(0.1)
    assert time.monotonic() - start < 5  # stopped, not left spinning
    out = stream.getvalue()
    assert out.count("thinking") >= 2 and "⠋ thinking" in out
    assert out.endswith("\r\033[K")
    assert spinner._thread is None


def test_spinner_ascii_frames_without_utf8():
    class AsciiTTY(FakeTTY):
        encoding = "cp1252"
    stream = AsciiTTY()
    with Spinner("wait", stream=stream, interval=0.01):
        pass
    assert "| wait" in stream.getvalue()


# --- print_error ---

def test_print_error_plain(capsys):
    print_error("bad thing\nhappened")
    assert capsys.readouterr().err == "error: bad thing happened\n"


def test_print_error_red_on_tty(monkeypatch):
    fake = FakeTTY()
    monkeypatch.setattr(term.sys, "stderr", fake)
    print_error("boom")
    assert fake.getvalue() == "\033[31;1merror:\033[22;39m boom\n"
