"""The Runyard agent: runs on a GPU machine and dials out to the gateway.

It must run without the server's weight (``pip install runyard[agent]``): it imports only
``runyard.protocol``, ``runyard.logging``, ``runyard.observability``, the standard library,
websockets, httpx, pydantic, pydantic-settings and PyYAML (``tests/e2e/test_agent_install.py``
runs it with every other package hidden). ``runyard.agent.main`` builds it from its settings.
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
