"""The proxy process: a transport-neutral core, MCP, the mitmproxy data plane, operations, routing
and the `airlock` command. Imports flow core <- mcp, ops <- plane, routing <- cli; only plane/
imports mitmproxy."""
