"""The data plane: mitmproxy addons that carry every request through the gate, pin egress, read
streams, answer refusals and replays, and hold the CA. The only package that imports mitmproxy."""
