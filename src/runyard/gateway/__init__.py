"""The agent gateway: the WebSocket endpoint agents dial, and their live connections."""
