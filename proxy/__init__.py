"""The proxy process and its faces: the mitmproxy addons, protocol adapters, control API and CLI."""
