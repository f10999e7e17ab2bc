"""The agent ⇄ gateway protocol: one set of models both sides import (see docs/protocol.md)."""

from runyard.protocol.v1 import (
    PROTOCOL_VERSION,
    AgentFrame,
    GatewayFrame,
    parse_agent_frame,
    parse_gateway_frame,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AgentFrame",
    "GatewayFrame",
    "parse_agent_frame",
    "parse_gateway_frame",
]
