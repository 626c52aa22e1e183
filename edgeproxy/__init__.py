"""edgeproxy: an asyncio edge proxy and blue/green release switcher."""

__version__ = "0.1.0"
