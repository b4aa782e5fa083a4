"""wskit_trio: typed real-time WebSocket servers and clients for trio (WS-Kit compatible)."""

from ._config import Heartbeat, Limits
from ._connection import ConnectionStatistics
from ._context import ConnectionContext, Context, RpcContext
from ._contract import ContractFormat, export_contract
from ._errors import (
    AlreadyClosed,
    CloseError,
    ConfigurationError,
    ConnectionClosed,
    OutboundValidationError,
    RateLimited,
    UpgradeRejected,
    WsKitError,
)
from ._outbound import OutboxStatistics, QueuePolicy
from ._protocol.codes import ERROR_CODE_META, ErrorCode
from ._router import Middleware, Next, Router
from ._schema import MessageSchema, RpcSchema, message, rpc
from ._server import Page, Server, ServerStatistics, TransportName, serve
from ._transport import UpgradeRequest
from .middleware import Metrics, MetricsStatistics, log_messages, require_auth
from .pubsub import (
    History,
    MemoryPubSub,
    Position,
    PublishResult,
    Recovery,
    TopicPolicy,
    with_pubsub,
)
from .ratelimit import (
    MemoryRateLimiter,
    RateLimitDecision,
    RateLimiter,
    key_per_ip,
    key_per_user,
    key_per_user_per_type,
    rate_limit,
)

__all__ = [
    "History",
    "ERROR_CODE_META",
    "CloseError",
    "ConfigurationError",
    "AlreadyClosed",
    "ConnectionClosed",
    "ConnectionContext",
    "ConnectionStatistics",
    "Context",
    "ContractFormat",
    "ErrorCode",
    "Heartbeat",
    "Limits",
    "MemoryPubSub",
    "MemoryRateLimiter",
    "MessageSchema",
    "Metrics",
    "MetricsStatistics",
    "Middleware",
    "Next",
    "OutboundValidationError",
    "OutboxStatistics",
    "Page",
    "Position",
    "PublishResult",
    "Recovery",
    "QueuePolicy",
    "RateLimitDecision",
    "RateLimited",
    "RateLimiter",
    "Router",
    "RpcContext",
    "RpcSchema",
    "Server",
    "ServerStatistics",
    "TopicPolicy",
    "TransportName",
    "UpgradeRejected",
    "UpgradeRequest",
    "WsKitError",
    "export_contract",
    "key_per_ip",
    "key_per_user",
    "key_per_user_per_type",
    "log_messages",
    "message",
    "rate_limit",
    "require_auth",
    "rpc",
    "serve",
    "with_pubsub",
]

__version__ = "0.1.0"
