"""wskit_trio: typed real-time WebSocket servers and clients for trio (WS-Kit compatible)."""

from ._config import Heartbeat, Limits
from ._context import ConnectionContext, Context, RpcContext
from ._errors import (
    CloseError,
    ConfigurationError,
    ConnectionClosed,
    OutboundValidationError,
    UpgradeRejected,
    WsKitError,
)
from ._outbound import QueuePolicy
from ._protocol.codes import ERROR_CODE_META, ErrorCode
from ._router import Middleware, Next, Router
from ._schema import MessageSchema, RpcSchema, message, rpc
from ._server import Server, ServerStatistics, serve
from ._transport import UpgradeRequest

__all__ = [
    "ERROR_CODE_META",
    "CloseError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionContext",
    "Context",
    "ErrorCode",
    "Heartbeat",
    "Limits",
    "MessageSchema",
    "Middleware",
    "Next",
    "OutboundValidationError",
    "QueuePolicy",
    "Router",
    "RpcContext",
    "RpcSchema",
    "Server",
    "ServerStatistics",
    "UpgradeRejected",
    "UpgradeRequest",
    "WsKitError",
    "message",
    "rpc",
    "serve",
]

__version__ = "0.1.0"
