"""A stdio MCP server written by hand that orders its answers as the TypeScript SDK does
(`{"result": …, "jsonrpc": "2.0", "id": N}`: the id last), with one tool, `big(size)`."""
import json
import sys

TOOL = {"name": "big", "description": "size characters",
        "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}}}

for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue                    # a notification (initialized)
    method, params = msg["method"], msg.get("params") or {}
    result = {"protocolVersion": params.get("protocolVersion", "2025-06-18"), "capabilities": {
        "tools": {}}, "serverInfo": {"name": "id-last", "version": "1"}} if method == "initialize" \
        else {"tools": [TOOL]} if method == "tools/list" \
        else {"content": [{"type": "text", "text": "x" * params["arguments"]["size"]}]} \
        if method == "tools/call" else {}
    sys.stdout.write(json.dumps({"result": result, "jsonrpc": "2.0", "id": msg["id"]}) + "\n")
    sys.stdout.flush()
