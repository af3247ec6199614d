"""Event Hubs clients from settings: a connection string, or the namespace with Entra ID.

Shared by the queue backend (one hub per deployment) and `ptu estimator` (the
token-event hub). The credential is created once per `EventHubAuth` and belongs
to whoever closes `closers`; constructing clients does no network I/O.
"""

from __future__ import annotations

from typing import Any

from azure.eventhub import parse_connection_string
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient

from orchestrator.core.errors import ConfigError
from orchestrator.core.views import EventHubsView


class EventHubAuth:
    """How this process reaches the Event Hubs namespace (key or `DefaultAzureCredential`)."""

    def __init__(self, view: EventHubsView) -> None:
        secret = view.connection_string
        self._connection_string = None if secret is None else secret.get_secret_value()
        self._namespace = view.namespace
        self._credential: Any = None
        if self._connection_string is not None:
            return
        if not self._namespace:
            raise ConfigError(
                "PTU_EVENTHUB_NAMESPACE: required (or PTU_EVENTHUB_CONNECTION_STRING) "
                "when PTU_QUEUE_BACKEND=eventhubs"
            )
        from azure.identity.aio import DefaultAzureCredential

        self._credential = DefaultAzureCredential()

    @property
    def namespace(self) -> str:
        """The fully qualified namespace host, as the SDK names it to the checkpoint store."""
        if self._connection_string is not None:
            return parse_connection_string(self._connection_string).fully_qualified_namespace
        assert self._namespace is not None
        return self._namespace

    @property
    def closers(self) -> list[Any]:
        """Objects with an async `close()` the owner must call at shutdown (the credential)."""
        return [] if self._credential is None else [self._credential]

    def producer(self, hub: str) -> EventHubProducerClient:
        """A producer client for `hub`."""
        if self._connection_string is not None:
            return EventHubProducerClient.from_connection_string(
                self._connection_string, eventhub_name=hub
            )
        assert self._namespace is not None
        return EventHubProducerClient(self._namespace, hub, self._credential)

    def consumer(
        self, hub: str, consumer_group: str, checkpoint_store: Any
    ) -> EventHubConsumerClient:
        """A consumer client for `hub` in `consumer_group`, balancing through `checkpoint_store`."""
        if self._connection_string is not None:
            return EventHubConsumerClient.from_connection_string(
                self._connection_string,
                consumer_group=consumer_group,
                eventhub_name=hub,
                checkpoint_store=checkpoint_store,
            )
        assert self._namespace is not None
        return EventHubConsumerClient(
            self._namespace, hub, consumer_group, self._credential,
            checkpoint_store=checkpoint_store,
        )  # fmt: skip

    def __repr__(self) -> str:
        how = "connection_string" if self._connection_string is not None else "entra_id"
        return f"<EventHubAuth namespace={self._namespace} auth={how}>"
