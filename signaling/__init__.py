"""The aiohttp application: signaling, REST API, tokens, the enforcer, and the CLI."""
