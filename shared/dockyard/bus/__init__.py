"""The NATS JetStream side: topology, connection, publishing, the outbox relay."""

from dockyard.bus.connection import close, connect, jetstream
from dockyard.bus.errors import (
    BusError,
    BusRejected,
    BusUnavailable,
    MessageDecodeError,
    TopologyError,
)
from dockyard.bus.event_batches import EventBatchPublisher
from dockyard.bus.leader import Leader, LeadershipLost, PgLeader, SoleLeader
from dockyard.bus.messages import (
    WorkOffer,
    decode_event,
    decode_work_offer,
    encode_work_offer,
    message_id,
)
from dockyard.bus.outbox import EventSink, OutboxRelay, OutboxSource
from dockyard.bus.publish import EventPublisher, Published, publish
from dockyard.bus.topology import ensure_topology

__all__ = [
    "BusError",
    "BusRejected",
    "BusUnavailable",
    "EventBatchPublisher",
    "EventPublisher",
    "EventSink",
    "Leader",
    "LeadershipLost",
    "MessageDecodeError",
    "OutboxRelay",
    "OutboxSource",
    "PgLeader",
    "Published",
    "SoleLeader",
    "TopologyError",
    "WorkOffer",
    "close",
    "connect",
    "decode_event",
    "decode_work_offer",
    "encode_work_offer",
    "ensure_topology",
    "jetstream",
    "message_id",
    "publish",
]
