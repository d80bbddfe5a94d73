"""The notes MCP server the MCP tests run, on stdio or over HTTP (a real MCP SDK server).

Tools: `read_note` (read-only), `write_note` and `delete_note` (destructive), whose effects are
appended to the effects file one line each; `big_note` (read-only, a big result); and `consult`,
which logs, reports progress, and asks the client's model (sampling) and user (elicitation)
before it answers.

    python notes_server.py EFFECTS [RECEIVED]                  # stdio
    python notes_server.py EFFECTS --http MODE --port PORT     # MODE: json, sse-stream, legacy-sse

RECEIVED records every line the process receives on stdin before the server reads it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import threading

from mcp.server.elicitation import elicit_with_validation
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent, ToolAnnotations
from pydantic import BaseModel

# The server's first words on stderr (the stdio tests look for them on airlock's stderr).
MARKER = "notes-server-3f9c: started, stderr is passed through"


class Colour(BaseModel):
    """What `consult` asks the user."""

    colour: str


def big_text(size: int) -> str:
    """What `big_note(size)` returns."""
    return base64.b64encode(hashlib.shake_256(b"airlock").digest(size)).decode()[:size]


def notes(effects: str) -> MCPServer:
    """The server, recording effects to the file `effects`."""
    app = MCPServer("notes")

    def record(line: str) -> None:
        with open(effects, "a") as f:
            f.write(line + "\n")

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    def read_note(name: str) -> str:
        return f"the note {name} says hello"

    @app.tool()
    def write_note(name: str, text: str, api_token: str = "", password: str = "") -> str:
        record(f"write {name}")
        return f"wrote {name}: text {len(text)}, api_token {len(api_token)}, password {len(password)}"

    @app.tool(annotations=ToolAnnotations(destructive_hint=True))
    def delete_note(name: str) -> str:
        record(f"delete {name}")
        return f"deleted {name}"

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    def big_note(size: int) -> str:
        return big_text(size)

    @app.tool()
    async def consult(topic: str, ctx: Context, standalone: bool = False) -> str:
        # The result says what the model and the user answered. standalone: the log message and
        # the requests go on the session's own stream, not the call's.
        related = None if standalone else ctx.request_id
        await ctx.session.send_log_message("info", f"consulting on {topic}", "notes", related)
        await ctx.report_progress(1, 2, f"sampling on {topic}")
        prompt = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize {topic}"))
        sampled = await ctx.session.create_message([prompt], max_tokens=64, related_request_id=related)
        await ctx.report_progress(2, 2, f"asking about {topic}")
        asked = await elicit_with_validation(ctx.session, f"Which colour is {topic}?", Colour, related)
        colour = asked.data.colour if asked.action == "accept" and asked.data else asked.action
        return f"{sampled.model} said {sampled.content.text!r}; {topic} is {colour}"

    return app


def record_stdin(received: str) -> None:
    """Put a pipe in front of fd 0: every line is recorded to `received`, then handed to the
    server unchanged."""
    wire = os.dup(0)
    r, w = os.pipe()
    os.dup2(r, 0)
    os.close(r)

    def tee() -> None:
        with open(wire, "rb") as src, open(w, "wb", buffering=0) as dst, open(received, "ab") as log:
            for line in src:
                log.write(line)
                log.flush()
                dst.write(line)

    threading.Thread(target=tee, daemon=True).start()


def main() -> None:
    """Serve as the command line says."""
    parser = argparse.ArgumentParser()
    parser.add_argument("effects")
    parser.add_argument("received", nargs="?")
    parser.add_argument("--http", choices=["json", "sse-stream", "legacy-sse"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    print(MARKER, file=sys.stderr, flush=True)
    if args.received:
        record_stdin(args.received)
    app = notes(args.effects)
    if args.http == "legacy-sse":
        app.run("sse", host="127.0.0.1", port=args.port)
    elif args.http:
        app.run("streamable-http", host="127.0.0.1", port=args.port, json_response=(args.http == "json"))
    else:
        app.run("stdio")


if __name__ == "__main__":
    main()
