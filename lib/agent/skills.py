"""Skills: folders with a SKILL.md whose YAML front matter (name, description, requires: {bins,
env}, always: the format is in README.md, Skills) says what the skill is and needs. Workspace
skills (workspace/skills/) override the bundled ones (workspace_template/skills/); the original
project's `metadata: {"nanobot": {"requires": …, "always": …}}` form is read too."""
import functools
import json
import logging
import os
import re
import shutil
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from lib import maildir
from lib.tools.files import BUNDLED, read_inside  # BUNDLED: the skills in the repo

log = logging.getLogger(__name__)
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


@dataclass
class Skill:
    name: str
    description: str
    path: Path
    body: str
    always: bool = False
    bins: list = field(default_factory=list)
    env: list = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [f"command {b}" for b in self.bins if not shutil.which(b)] + \
               [f"environment variable {e}" for e in self.env if not os.environ.get(e)]


def parse(path: Path) -> Skill | None:
    """The skill in a SKILL.md; parsed once per version of the file (every turn asks)."""
    version = maildir.stamp(path)
    return _parse(path, version) if version else None


@functools.cache
def _parse(path: Path, version: tuple) -> Skill | None:     # the version is in the cache key
    try:
        text = read_inside(path, path.parent.parent).decode("utf-8")    # skills/NAME/SKILL.md
    except (OSError, UnicodeDecodeError) as e:
        log.warning("skill %s cannot be read: %s", path, e)
        return None
    meta, body = {}, text
    if m := _FRONT.match(text):
        import yaml
        try:
            meta = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as e:
            log.warning("skill %s: front matter is not valid YAML (%s); using defaults", path, e)
        meta = meta if isinstance(meta, dict) else {}
        body = text[m.end():]
    legacy = meta.get("metadata")
    if isinstance(legacy, str):
        with suppress(ValueError):      # not JSON: no legacy metadata
            legacy = json.loads(legacy)
    if isinstance(legacy, dict):
        legacy = next((v for v in legacy.values() if isinstance(v, dict)), {})
        meta = {**legacy, **meta}
    requires = meta.get("requires") if isinstance(meta.get("requires"), dict) else {}
    first_line = next((ln.strip("# ").strip() for ln in body.splitlines() if ln.strip()), "")
    return Skill(name=str(meta.get("name") or path.parent.name),
                 description=str(meta.get("description") or first_line),
                 path=path, body=body.strip(), always=bool(meta.get("always")),
                 bins=_names(requires.get("bins")), env=_names(requires.get("env")))


def _names(value) -> list[str]:
    """`[curl, git]`, or a single `curl`; anything else in hand-written front matter: none."""
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def discover(workspace: Path) -> list[Skill]:
    roots = (BUNDLED, Path(workspace) / "skills")     # later roots override earlier ones
    found = {s.name: s for root in roots if root.is_dir()
             for s in map(parse, sorted(root.glob("*/SKILL.md"))) if s}
    return sorted(found.values(), key=lambda s: s.name)


def prompt_section(skills: list[Skill]) -> str:
    """Always-on skills in full; the others as a list the model reads from with read_file."""
    parts = [f"### Skill: {s.name}\n{s.body}" for s in skills if s.always and not s.missing]
    lines = [f"- {s.name}: {s.description} [{s.path}]"
             + (f" (unavailable: needs {', '.join(s.missing)})" if s.missing else "")
             for s in skills if s.missing or not s.always]
    if lines:
        parts.append("Skills you can use: read the SKILL.md at the path shown before using one.\n"
                     + "\n".join(lines))
    return "\n\n".join(parts)
