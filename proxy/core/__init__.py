"""What happens to an action whatever carried it: admission, idempotency keys, the retry breaker,
records, redaction, rule reloading, and rechecking actions left in doubt. Imports no mitmproxy."""
