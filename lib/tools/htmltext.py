"""HTML to readable text for web_fetch (imported only when a page is fetched)."""
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit


class TextExtractor(HTMLParser):
    """HTML to text: '# ' headings, '- ' list items, 'text (href)' links, <pre> kept as it is."""

    SKIP = {"script", "style", "noscript", "svg", "head", "template"}
    LINE, PARA = "\n", "\x01"  # a line break; a blank line (both collapse with their neighbours in text())
    BREAKS = dict.fromkeys("div section article header footer nav main aside ul ol li tr dl dt dd br hr form "
                           "figure figcaption details summary address".split(), LINE) | \
        dict.fromkeys("p pre blockquote table h1 h2 h3 h4 h5 h6".split(), PARA)
    PREFIX = {"li": "- ", "td": " ", "th": " ", **{f"h{n}": "#" * n + " " for n in range(1, 7)}}

    def __init__(self, base: str):
        super().__init__()
        self.base, self.title, self.parts, self.pres, self.skip, self.links = base, "", [], [], [], []
        self.in_title = self.in_pre = False

    def handle_starttag(self, tag, attrs):
        if tag == "body" and "head" in self.skip:
            self.skip.remove("head")  # </head> is optional
        if tag in self.SKIP:
            self.skip.append(tag)
        self.in_title = self.in_title or (tag == "title" and set(self.skip) <= {"head"} and not self.title)
        if self.skip:
            return
        self.parts += [self.BREAKS.get(tag, ""), self.PREFIX.get(tag, "")]
        if tag == "pre":
            self.in_pre = True
            self.pres.append("")
            self.parts.append(f"\0{len(self.pres) - 1}\0")  # put back after whitespace is collapsed
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_endtag(self, tag):
        if tag in self.skip:
            del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag):]
        self.in_title = self.in_title and tag != "title"
        if self.skip:
            return
        self.in_pre = self.in_pre and tag != "pre"
        if tag == "a" and self.links:
            href, start = self.links.pop()
            full = urljoin(self.base, href.strip())
            label = "".join(self.parts[start:]).strip()
            if urlsplit(full).scheme in ("http", "https", "mailto") and label != full and href[:1] != "#":
                self.parts.append(f" ({full})")
        self.parts.append(self.BREAKS.get(tag, ""))

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif self.in_pre and not self.skip:
            self.pres[-1] += data
        elif not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))

    def convert(self, html: str) -> tuple[str, str]:       # (title, text)
        self.feed(html)
        self.close()
        text = re.sub(r" ?\n[\n ]*", "\n", re.sub(r" +", " ", "".join(self.parts)))
        text = re.sub(r"[\s\x01]*\x01[\s\x01]*", "\n\n", text).strip()
        text = re.sub(r"\0(\d+)\0", lambda m: self.pres[int(m.group(1))].strip("\n"), text)
        return " ".join(self.title.split()), text
