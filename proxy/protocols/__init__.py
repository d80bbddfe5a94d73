"""Protocol adapters: each turns a raw flow into an Action (http now; mcp, aws, k8s build on it)."""
