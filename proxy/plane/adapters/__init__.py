"""Protocol adapters: each turns what a flow carries into an Action (HTTP, WebSocket messages)."""
