"""Command line: `python nanoclaw.py <command>`. A user's mistake is one line and exit 2."""
import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from lib import term
from lib.errors import ConfigError, NanoclawError, ProviderError, UserError

ROOT = Path(__file__).resolve().parent.parent
EXIT_WORDS = {"exit", "quit", "/exit", "/quit", ":q"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"     # one line each, no colour


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.umask(0o077)     # SPEC §8: what we create under the home is the owner's alone
    logging.basicConfig(level=logging.INFO if getattr(args, "logs", False) or args.command ==
                        "gateway" else logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.run(args) or 0
    except (ConfigError, UserError) as e:
        term.print_error(str(e))
        return 2
    except (ProviderError, NanoclawError) as e:
        term.print_error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:    # run with a Python that lacks the requirements
        if (e.name or "lib").split(".")[0] == "lib":
            raise
        term.print_error(f"the Python package {e.name!r} is not installed for {sys.executable}: "
                         f"run `make install`, then use {_command()}")
        return 2
    except BrokenPipeError:             # `status | head`: the reader has gone; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:                # a home folder that cannot be written, a full disk
        term.print_error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        return 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """SPEC §6: a usage error is one line on stderr and exit 2 (argparse adds a usage block)."""
        term.print_error(f"{message} (see `{_command()}{self.prog[len('nanoclaw'):]} --help`)")
        sys.exit(2)


def _parser():
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $NANOCLAW_HOME/config.yaml)")
    p = _Parser(prog="nanoclaw", parents=[common],
                                description="nanoclaw: a small personal AI assistant")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    s = sub.add_parser("onboard", parents=[common], help="create config.yaml and the workspace")
    s.set_defaults(run=cmd_onboard)
    s = sub.add_parser("agent", parents=[common], help="chat in the terminal, or one turn with -m")
    s.add_argument("-m", "--message", help="send one message; the reply is printed on stdout")
    s.add_argument("-s", "--session", default="cli:default", help="session (default cli:default)")
    s.add_argument("--no-markdown", action="store_true", help="plain-text replies")
    s.add_argument("--logs", action="store_true", help="show runtime logs on stderr")
    s.add_argument("--yes", action="store_true", help="allow risky actions without asking "
                   "(with -m or piped input there is no one to ask: they are refused)")
    s.set_defaults(run=cmd_agent)
    s = sub.add_parser("status", parents=[common], help="config, model, providers and channels")
    s.set_defaults(run=cmd_status)
    s = sub.add_parser("approvals", parents=[common], help="risky actions waiting for your yes")
    s.set_defaults(run=cmd_approvals)
    for name, verdict in (("approve", "yes"), ("deny", "no")):
        s = sub.add_parser(name, parents=[common], help=f"answer {verdict} to a waiting approval")
        s.add_argument("code", help="the 4-digit code of `approvals`")
        s.set_defaults(run=cmd_answer, verdict=verdict)
    s = sub.add_parser("usage", parents=[common], help="model calls, tokens and cost by source and model")
    s.add_argument("--days", type=int, default=7, metavar="N", help="how many days back (default 7)")
    s.add_argument("--json", action="store_true", help="the figures as JSON")
    s.set_defaults(run=cmd_usage)
    s = sub.add_parser("memory", parents=[common], help="show MEMORY.md, list its versions, restore one")
    s.add_argument("action", nargs="?", default="show", choices=["show", "versions", "restore"],
                   help="show (default): MEMORY.md; versions: the kept ones, newest first; "
                   "restore N: version N back (the current one is kept as a version first)")
    s.add_argument("number", nargs="?", type=int, help="with restore: a number from `memory versions`")
    s.set_defaults(run=cmd_memory)
    s = sub.add_parser("gateway", parents=[common], help="the 24/7 service: channels, worker, cron")
    s.add_argument("--logs", nargs="?", const="debug", choices=["debug", "info", "warning", "error"],
                   metavar="LEVEL", help="log level for this run (default: gateway.log_level; "
                   "--logs alone: debug)")
    s.set_defaults(run=cmd_gateway)
    s = sub.add_parser("channels", parents=[common], help="channel status (and WhatsApp login)")
    s.add_argument("action", choices=["status", "login"],
                   help="status: the channel table; login: link WhatsApp (QR code)")
    s.set_defaults(run=cmd_channels)
    s = sub.add_parser("cron", parents=[common], help="scheduled jobs: add, list, remove, run")
    s.set_defaults(run=cmd_cron)
    cron = s.add_subparsers(dest="action", required=True, metavar="action")
    c = cron.add_parser("add", parents=[common], help="add a job (one of --every, --cron, --at)")
    c.add_argument("--name", required=True, help="a short label")
    c.add_argument("--message", "-m", required=True, help="what the agent should do when it fires")
    c.add_argument("--every", type=int, metavar="S", help="repeat every S seconds")
    c.add_argument("--cron", metavar="EXPR", help="5-field cron expression, e.g. '0 8 * * 1-5'")
    c.add_argument("--at", metavar="ISO", help="once, e.g. 2025-06-03T09:00:00+02:00")
    c.add_argument("--deliver", action="store_true", help="send the reply to --channel/--to")
    c.add_argument("--channel", help="e.g. telegram")
    c.add_argument("--to", metavar="ID", help="chat id on that channel")
    cron.add_parser("list", parents=[common], help="all jobs and their next run")
    for action, text in (("remove", "delete a job"), ("enable", "enable (or --disable) a job"),
                         ("run", "post a job into the inbox now")):
        c = cron.add_parser(action, parents=[common], help=text)
        c.add_argument("id")
    c = cron.choices["enable"]
    c.add_argument("--disable", action="store_true", help="disable instead")
    return p


def _config(args):
    from lib.config import load_config
    return load_config(getattr(args, "config", None))


# --- onboard ---

def cmd_onboard(args):
    from lib.config import config_path, home_dir
    home, path = home_dir(), config_path(getattr(args, "config", None))
    home.mkdir(parents=True, exist_ok=True)
    from lib.maildir import make_private
    make_private(home)
    made = []
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "config.example.yaml", path)
        os.chmod(path, 0o600)
        made.append(str(path))
    cfg = _config(args)
    made += _copy_missing(ROOT / "workspace_template", cfg.workspace, skip={"skills"})
    from lib.web.auth import ensure_token      # the web page's and the API's key (SPEC §11)
    if not cfg.gateway.token and ensure_token(cfg):
        made.append(f"gateway.token in {path} (the key to the web page and the API)")
    (cfg.workspace / "skills").mkdir(parents=True, exist_ok=True)
    for line in made:
        print(f"created {line}")
    from lib.providers.registry import resolve
    try:
        r = resolve(cfg)
        step = f"The provider is {r.spec.display_name} (model {r.model}). Next:"
    except ConfigError:
        step = (f"Next: put an API key in {path} (providers.openrouter.api_key, or any provider), "
                "or export OPENROUTER_API_KEY. Then:")
    run = _command()
    print(f"{'Nothing to do: everything exists' if not made else 'Done'}.\n{step}\n"
          f"  chat here:         {run} agent\n  send one message:  {run} agent -m 'Hello'\n"
          f"  run the service:   {run} gateway   (chat apps, cron jobs, heartbeat)")


def _command() -> str:
    """How to run nanoclaw from the current folder: with the checkout's .venv when it has one."""
    from shlex import quote
    here, venv = Path.cwd() == ROOT, ROOT / ".venv" / "bin" / "python"
    python = (".venv/bin/python" if here else quote(str(venv))) if venv.exists() else \
        Path(sys.executable).name
    return f"{python} {'nanoclaw.py' if here else quote(str(ROOT / 'nanoclaw.py'))}"


def _copy_missing(src: Path, dest: Path, skip=()) -> list:
    made = []
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if rel.parts[0] in skip or not item.is_file():
            continue
        target = dest / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, target)
            made.append(str(target))
    return made


# --- status ---

def cmd_status(args):
    from lib.providers.registry import PROVIDERS, resolve, usable
    cfg = _config(args)
    yes, no = term.style("✓", "green"), term.style("·", "dim")
    print(f"config     {cfg.path}{_config_state(cfg.path)}")
    print(f"home       {cfg.home}")
    print(f"workspace  {cfg.workspace}{'' if cfg.workspace.exists() else '  (missing: run onboard)'}")
    print(f"model      {_model_state(cfg)}")
    print(f"shell      {_shell_state(cfg)}")
    print(f"gateway    {_gateway_state(cfg.home)}")
    print(f"usage      {_usage_today(cfg)}")
    print(f"web page   {_page_state(cfg)}")
    try:
        r = resolve(cfg)
        print(f"provider   {r.spec.name} → {r.api_base} (model {r.model})")
    except ConfigError as e:
        print(f"provider   {term.style('none', 'red')}: {e}")
    print("\nproviders")
    for spec in PROVIDERS:
        pc = cfg.provider(spec.name)
        state = "key set" if pc.api_key else ("local endpoint set" if usable(spec, pc) else "not set")
        print(f"  {yes if usable(spec, pc) else no} {spec.name:<11}{state:<20}"
              f"{pc.api_base or spec.api_base}")
    print("\nchannels")
    for name in cfg.channels.__dataclass_fields__:
        ch = getattr(cfg.channels, name)
        allowed = f"allow_from: {', '.join(ch.allow_from) or 'nobody (deny by default)'}"
        print(f"  {yes if ch.enabled else no} {name:<11}{'enabled' if ch.enabled else 'disabled':<10}"
              f"{allowed if ch.enabled else ''}")
        if name == "email" and ch.enabled and not ch.authserv_id:
            from lib.channels import EMAIL_FORGEABLE
            print(f"    {term.style('warning', 'yellow')}: {EMAIL_FORGEABLE}")
    if cfg.tools.mcp_servers:
        from lib.mcp import describe
        print("\nmcp servers")
        for up, line in describe(cfg):
            print(f"  {yes if up else term.style('✗', 'red') if up is False else no} {line}")


def _config_state(path: Path) -> str:
    """Missing, or readable by others (it holds the keys): what to do about it."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return "  (missing: run onboard)"
    return "" if not mode & 0o077 else "  " + term.style(
        f"warning: other users can read it (mode {mode:o}; its keys are secrets): chmod 600 {path}",
        "yellow")


def _gateway_state(home: Path) -> str:
    """Whether a gateway holds the home's lock (its pid, since when) and how full the queues are."""
    import fcntl
    from datetime import datetime
    lock = home / "gateway.lock"
    running = False
    try:
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)      # got it: nobody runs
    except BlockingIOError:
        running = True
    except FileNotFoundError:
        pass
    if not running:
        return f"not running ({_command()} gateway, or systemctl start nanoclaw)"
    since = datetime.fromtimestamp(lock.stat().st_mtime).strftime("%Y-%m-%d %H:%M")

    def count(box, folder):
        path = home / box / folder
        return sum(n.endswith(".json") for n in os.listdir(path)) if path.is_dir() else 0
    return (f"running (pid {lock.read_text().strip() or '?'}, since {since}); inbox: "
            f"{count('inbox', 'new')} waiting, {count('inbox', 'cur')} in work, "
            f"{count('inbox', 'failed')} failed; outbox: {count('outbox', 'new')} to send, "
            f"{count('outbox', 'failed')} failed")


def _page_state(cfg) -> str:
    """Where the web page and the API are, and whether they can be used (SPEC §11)."""
    g = cfg.gateway
    if not g.port:
        return "off (gateway.port: 0)"
    host = f"[{g.host}]" if ":" in g.host else g.host
    where = f"http://{'127.0.0.1' if g.host in ('0.0.0.0', '::', '') else host}:{g.port}/"
    if not g.token:
        return f"{where} {term.style('needs a token', 'red')}: run `{_command()} onboard`"
    return f"{where} (log in with gateway.token from {cfg.path}; the API is at {where}v1)"


def _model_state(cfg) -> str:
    """The model, its fallbacks, which of them are skipped, and whether the model answers."""
    import time
    from lib import usage
    d, line = cfg.agents.defaults, cfg.agents.defaults.model
    if d.fallback_models:
        line += f" (then {', '.join(d.fallback_models)})"
    for model, until in usage.skipped_models(cfg.home).items():
        line += f"; {model} skipped for {until - time.time():.0f} s more (it failed 3 times)"
    down = usage.model_down(cfg.home)
    if down.get("since"):
        line += term.style(f"; not answering since {str(down['since'])[:16].replace('T', ' ')} "
                           f"UTC ({down.get('error')}): messages wait in the inbox", "red")
    return line


def _usage_today(cfg) -> str:
    """Today's tokens and cost against limits.daily_tokens and limits.daily_usd."""
    from lib import usage
    lim, (used, usd) = cfg.limits, usage.Ledger(cfg).totals()
    line = f"today {used:,} tokens" + (f", ${usd:,.2f}" if usd else "")
    caps = [f"{used / lim.daily_tokens:.0%} of {lim.daily_tokens:,} tokens" if lim.daily_tokens else "",
            f"{usd / lim.daily_usd:.0%} of ${lim.daily_usd:,.2f}" if lim.daily_usd else ""]
    caps = [c for c in caps if c]
    return line + (f" ({'; '.join(caps)} a day)" if caps else " (no daily limit: limits.*)")


def cmd_usage(args):
    import json
    from lib import usage
    cfg = _config(args)
    report = usage.summary(cfg, max(1, args.days))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    days = report["days"]
    _usage_table(f"today, {days[0]['day']} ({report['timezone']})", days[0]["rows"])
    print(f"  {_usage_today(cfg)}")
    if len(days) > 1:
        merged: dict = {}
        for day in days:
            for row in day["rows"]:
                into = merged.setdefault((row["source"], row["model"]), dict.fromkeys(row, 0))
                for k, v in row.items():
                    into[k] = v if k in ("source", "model") else into[k] + v
        print()
        _usage_table(f"the last {len(days)} days, {days[-1]['day']} to {days[0]['day']}",
                     [merged[k] for k in sorted(merged)])


def _usage_table(title: str, rows: list):
    print(term.style(title, "bold"))
    if not rows:
        print("  no model calls")
        return
    print(f"  {'source':<14}{'model':<34}{'calls':>6}{'failed':>7}{'in':>12}{'out':>10}{'cost':>10}")
    total = {"calls": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
             "unpriced": 0, "source": "total", "model": ""}
    for row in rows + [total]:
        if row is not total:
            for k in ("calls", "failed", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced"):
                total[k] += row[k]
        cost = f"${row['cost_usd']:,.2f}" + ("+?" if row["unpriced"] and row["cost_usd"] else "") \
            if row["cost_usd"] or not row["unpriced"] else "no price"
        print(f"  {row['source']:<14}{row['model'][:33]:<34}{row['calls']:>6}{row['failed']:>7}"
              f"{row['prompt_tokens']:>12,}{row['completion_tokens']:>10,}{cost:>10}")


def _shell_state(cfg) -> str:
    """Whether exec runs, and in what (SPEC §8)."""
    ex = cfg.tools.exec
    if not ex.enable:
        return "off (tools.exec.enable: false)"
    if ex.sandbox == "off":
        return "no sandbox (tools.exec.sandbox: off): commands can do whatever your user can"
    from lib import sandbox
    why = sandbox.problem()
    if not why:
        return "in the bubblewrap sandbox"
    if ex.sandbox == "bwrap" or cfg.tools.restrict_to_workspace:
        return term.style("refused", "red") + f": no sandbox ({why}); {sandbox.FIX}, or set tools.exec.sandbox: off"
    return f"no sandbox ({why}): {sandbox.FIX}"


# --- agent ---

def cmd_agent(args):
    from lib.agent.loop import Agent, agent_tools
    from lib.sessions import Session
    cfg = _config(args)
    channel, _, chat_id = args.session.partition(":")
    if not chat_id:
        channel, chat_id = "cli", channel
    color = term.use_color(sys.stdout) and not args.no_markdown

    def show(text):
        if args.no_markdown:
            text = term.render_markdown(text, color=False)
        elif color:
            text = term.render_markdown(text, color=True)
        print(text, flush=True)

    def send(ch, chat, text, media=None):
        if (ch, chat) == (channel, chat_id):
            show("\n".join([text, *(f"[file: {p}]" for p in media or ())]).strip())
        else:
            from lib.mail import post_outbox
            post_outbox(cfg.home, ch, chat, text, media=media or ())
            print(term.style(f"(queued for {ch}:{chat})", "dim", stream=sys.stderr), file=sys.stderr)

    from lib.usage import Metered
    agent = Agent(cfg, Metered(cfg), agent_tools(cfg), send=send)
    spinner = term.Spinner("thinking")

    def ask(question):          # SPEC §9: at the terminal the owner answers at once
        if args.yes:
            return True
        if args.message is not None or not sys.stdin.isatty():
            from lib.errors import ToolError
            raise ToolError("needs the owner's approval, and no one is here to ask: run it in the "
                            "interactive agent, or with --yes to allow it")
        spinner.__exit__()
        try:
            return input(f"\r{question}\nAllow it? [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:
            return False
        finally:
            spinner.__enter__()
    agent.ask = ask

    def turn(text):
        session = Session(cfg.home, channel, chat_id)
        with spinner:
            reply = agent.respond({"channel": channel, "chat_id": chat_id, "text": text}, session)
            agent.maintain(session)
        return reply

    if args.message is not None:
        show(turn(args.message))
        return 0
    return _interactive(cfg, turn, show)


def _interactive(cfg, turn, show) -> int:
    try:
        import readline
        history = cfg.home / "history" / "cli_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
        readline.set_history_length(1000)
    except (ImportError, OSError):
        readline = history = None
    plain = not (sys.stdin.isatty() and sys.stdout.isatty())    # piped: one plain line each
    prompt = "" if plain else term.style("You: ", "bold", "blue")
    if not plain:
        print(term.style("nanoclaw — type /help for commands, exit or Ctrl+D to leave", "dim"))
    try:
        while True:
            try:
                text = input(prompt)
            except EOFError:
                print("" if plain else "\n", end="")
                return 0
            if text.strip().lower() in EXIT_WORDS:
                return 0
            if not text.strip():
                continue
            try:
                show(turn(text))
            except ProviderError as e:
                term.print_error(str(e))
            except KeyboardInterrupt:
                print(term.style("(interrupted)", "dim"))
    finally:
        if readline and history:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


# --- approvals ---

def cmd_approvals(args):
    import time
    from lib.approvals import Approvals
    cfg = _config(args)
    waiting = Approvals(cfg).pending()
    for r in waiting:
        left = max(0, r.get("expires_at", 0) - time.time())
        print(f"{r['code']}  {r['channel']}:{r['chat_id']}  {r['binding'].get('command') or r['binding'].get('path')}"
              f"  (in {r['binding'].get('cwd', '-')}; expires in {left / 60:.0f} min)")
    if not waiting:
        print("no approvals waiting")
    else:
        print("\npython nanoclaw.py approve CODE, or deny CODE (the gateway carries on the turn)")


def cmd_answer(args):
    """The owner's answer at the Pi's terminal: an inbox message, like any other answer."""
    from lib.approvals import Approvals
    from lib.mail import post_inbox
    cfg = _config(args)
    if not args.code.isdigit() or not (Approvals(cfg).dir / f"{args.code}.json").exists():
        raise UserError(f"no approval {args.code} is waiting (python nanoclaw.py approvals lists them)")
    post_inbox(cfg.home, {"channel": "cli", "chat_id": "owner", "sender_id": "owner",
                          "text": f"{args.verdict} {args.code}"})
    print(f"{'Approved' if args.verdict == 'yes' else 'Denied'} {args.code}: the gateway carries on "
          "that turn, and its answer goes to the chat it came from.")


# --- memory ---

def cmd_memory(args):
    import time
    from lib.agent.memory import Memory
    from lib.tools.files import read_inside
    mem = Memory(_config(args).workspace)
    versions = sorted((mem.dir / "versions").glob("MEMORY.*.md"), reverse=True)    # newest first
    if args.action == "show":
        print(mem.read() or f"{mem.memory_file} is empty or not there yet")
    elif args.action == "versions":
        for n, path in enumerate(versions, 1):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
            print(f"{n:>3}  {when}  {path.stat().st_size:>8,} bytes  {path}")
        print("(each was MEMORY.md until the time shown; `memory restore N` brings one back)"
              if versions else f"no versions yet: each rewrite of MEMORY.md keeps the one before "
              f"in {mem.dir / 'versions'}")
    elif not args.number or not 0 < args.number <= len(versions):
        raise UserError(f"memory restore N: N is one of 1 to {len(versions)} (memory versions "
                        "lists them)" if versions else "there are no versions of MEMORY.md to restore")
    else:
        try:
            text = read_inside(versions[args.number - 1], mem.workspace).decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"version {args.number} is not valid UTF-8; nothing was changed") from None
        if not mem.write(text):
            raise UserError(f"{mem.memory_file} cannot be read as text, so it is left as it is: "
                            "move it aside, then restore again")
        print(f"Restored version {args.number} to {mem.memory_file}; the one it replaced is now "
              "version 1 (memory versions)")


# --- gateway ---

def cmd_gateway(args):
    from lib.gateway import Gateway
    from lib.providers.registry import resolve
    cfg = _config(args)
    resolve(cfg)                        # no key: say so now, not at the first message
    g = cfg.gateway
    logging.getLogger().setLevel((args.logs or g.log_level).upper())
    if g.log_file:
        from logging.handlers import RotatingFileHandler
        path = Path(g.log_file).expanduser()
        path = path if path.is_absolute() else cfg.home / "logs" / path
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=int(g.log_max_mb * (1 << 20)),
                                      backupCount=g.log_backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
    return Gateway(cfg).run()


def cmd_channels(args):
    cfg = _config(args)
    if args.action == "login":
        from lib.channels.whatsapp import login
        return login(cfg)
    from lib.channels import describe
    rows = describe(cfg)
    for r in rows:
        r["configured"] = "yes" if r["configured"] else f"no ({r['missing']})"
    wide = max(len("configured"), *(len(r["configured"]) for r in rows))
    print(f"{'channel':<10} {'enabled':<8} {'configured':<{wide}} {'waiting':>7} {'sending':>7} "
          f"{'failed':>6}  allow_from")
    for r in rows:
        print(f"{r['name']:<10} {'yes' if r['enabled'] else 'no':<8} {r['configured']:<{wide}} "
              f"{r['new']:>7} {r['cur']:>7} {r['failed']:>6}  {r['allow_from']}")
    inbox = cfg.home / "inbox"
    counts = {f: len(list((inbox / f).glob("*.json"))) if (inbox / f).is_dir() else 0
              for f in ("new", "cur", "failed")}
    print(f"\ninbox: {counts['new']} waiting, {counts['cur']} in progress, {counts['failed']} failed")


# --- cron ---

def cmd_cron(args):
    from lib.cron import CronService, describe, make_schedule
    from lib.mail import CHANNELS
    cfg = _config(args)
    service = CronService(cfg)
    if args.action == "add":
        if args.deliver and not (args.channel and args.to):
            raise UserError("--deliver needs --channel and --to, e.g. --channel telegram --to 123")
        if (args.channel or args.to) and not args.deliver:
            raise UserError("--channel and --to say where to deliver: add --deliver")
        if args.deliver and args.channel not in CHANNELS:
            raise UserError(f"unknown channel {args.channel!r}; use one of {', '.join(CHANNELS)}")
        schedule = make_schedule(args.every, args.cron, args.at, service.tz,
                                 ("--every", "--cron", "--at"))
        job = service.add(args.name, args.message, schedule, args.deliver, args.channel or "",
                          args.to or "")
        print(f"added job {job['id']} ({job['name']}): {describe(schedule)}, next run "
              f"{service.local(job['next_run'])}")
        chat_app = getattr(cfg.channels, args.channel or "", None)    # None: local, system, …
        if chat_app is not None and not chat_app.enabled:
            print(f"{term.style('warning:', 'yellow', stream=sys.stderr)} channel {args.channel} "
                  f"is not enabled (channels.{args.channel}.enabled is false): until it is, this "
                  "job's answers go to outbox/failed/", file=sys.stderr)
    elif args.action == "list":
        jobs = service.jobs()
        rows = [("id", "name", "schedule", "enabled", "next run", "last status")] + [
            (j["id"], str(j.get("name", "")), describe(j.get("schedule", {})),
             "yes" if j.get("enabled") else "no",
             service.local(j.get("next_run")) if j.get("enabled") else "-",
             str(j.get("last_status") or "-")) for j in jobs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows if jobs else ():
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if not jobs:
            print(f"no jobs in {service.path}; add one with: {_command()} cron add --name N "
                  "--message M --every 3600")
    elif args.action == "remove":
        job = service.remove(args.id)
        print(f"removed job {job['id']} ({job.get('name', '')})")
    elif args.action == "enable":
        job = service.enable(args.id, not args.disable)
        state = "disabled" if args.disable else f"enabled, next {service.local(job['next_run'])}"
        print(f"job {job['id']} ({job.get('name', '')}) {state}")
    else:
        path = service.run_now(args.id)
        print(f"posted job {args.id} to {path}; the gateway will answer (if it is running)")
