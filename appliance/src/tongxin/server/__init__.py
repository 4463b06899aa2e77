"""The aiohttp application: WebSocket gateway, health, metrics, HTTP API."""
