"""The Runyard agent: runs on a GPU machine and dials out to the gateway.

It must run without the server's weight: it imports only ``runyard.protocol``,
``runyard.logging``, the standard library, websockets, httpx and pydantic.
"""

from runyard.agent.client import (
    AgentReplaced,
    GatewayClient,
    Reporter,
    Runner,
    backoff_delay,
    run_until_signalled,
    websocket_url,
)
from runyard.agent.simulate import BEHAVIOURS, Behaviour, SimulatedRunner

__all__ = [
    "BEHAVIOURS",
    "AgentReplaced",
    "Behaviour",
    "GatewayClient",
    "Reporter",
    "Runner",
    "SimulatedRunner",
    "backoff_delay",
    "run_until_signalled",
    "websocket_url",
]
