"""A real MCP server built with the official SDK's FastMCP, for the tests of lib/mcp.py and the
bench. Run it as a program:

    python tests/fakes/mcp_server.py stdio
    python tests/fakes/mcp_server.py streamable-http PORT
    python tests/fakes/mcp_server.py sse PORT
    python tests/fakes/mcp_server.py exit          # says why on stderr and exits at once

Tools: echo, fail (an isError result), slow (sleeps), env (its environment's names), where (the
files it sees), picture (text and an image), big (a long text), pid, header (an HTTP request
header), grow (adds the tool `extra` and says so with notifications/tools/list_changed).
"""
import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP, Image
from mcp.server.fastmcp.exceptions import ToolError

server = FastMCP("fake", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Says the text back."""
    return f"echo: {text}"


@server.tool()
def fail(why: str) -> str:
    """Always fails (an isError result) with the reason given."""
    raise ToolError(f"it broke: {why}")


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after a while."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def env() -> str:
    """The names of the environment variables this server got, and the values of the fake ones."""
    return " ".join(sorted(k if not k.startswith("FAKE_") else f"{k}={v}" for k, v in os.environ.items()))


@server.tool()
def where(path: str) -> str:
    """Whether `path` exists for this server, and its working folder."""
    return f"{'exists' if os.path.exists(path) else 'missing'} in {os.getcwd()}"


@server.tool()
def picture() -> list:
    """A text and an image."""
    return ["here it is", Image(data=b"\x89PNG\r\n\x1a\n", format="png")]


@server.tool()
def big(size: int) -> str:
    """`size` characters."""
    return "x" * size


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool()
def header(name: str, ctx: Context) -> str:
    """The value of an HTTP request header (over HTTP)."""
    request = ctx.request_context.request
    return request.headers.get(name, "(none)") if request is not None else "(not HTTP)"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool `extra` and tells the client the tool list changed."""
    server.add_tool(lambda: "extra here", name="extra", description="Added later.")
    await ctx.request_context.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    mode = sys.argv[1]
    print(f"fake mcp server starting ({mode})", file=sys.stderr, flush=True)
    if mode == "exit":
        print("fatal: the fake server was told to exit at once", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "stdio":
        server.run("stdio")
    else:
        server.settings.port = int(sys.argv[2])
        server.run(mode)
