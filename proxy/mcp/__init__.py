"""The Model Context Protocol: JSON-RPC messages, what makes a server MCP, tool calls through the
gate, and MCP servers on stdio. Imports no mitmproxy."""
