"""The Event Hubs checkpoint store in Azure Blob storage (`PTU_EVENTHUB_CHECKPOINT_STORE=blob`).

The SDK's own `BlobCheckpointStore` keeps ownership and checkpoints as blob metadata
under `<namespace>/<hub>/<consumer group>/`, the layout every version-5 Event Hubs SDK
shares; KEDA's `azure-eventhub` scaler (`checkpointStrategy: blobMetadata`) reads the
same blobs to compute each hub's unprocessed events, which it cannot do while the
checkpoints live in Redis (the default store, `checkpoint_redis`).
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.errors import ConfigError, MissingDependencyError
from orchestrator.core.views import CheckpointView


def blob_checkpoint_store(view: CheckpointView) -> tuple[Any, list[Any]]:
    """The blob store from settings, and what must be closed at shutdown (store, credential).

    A connection string (`PTU_EVENTHUB_CHECKPOINT_CONNECTION_STRING`, e.g. Azurite's)
    wins; otherwise `PTU_EVENTHUB_CHECKPOINT_BLOB_URL` with `DefaultAzureCredential`.
    """
    try:
        from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
    except ImportError as exc:
        raise MissingDependencyError("azure-eventhub-checkpointstoreblob-aio", "azure") from exc
    container = view.container
    secret = view.connection_string
    if secret is not None:
        store = BlobCheckpointStore.from_connection_string(secret.get_secret_value(), container)
        return store, [store]
    url = view.blob_url
    if not url:
        raise ConfigError(
            "PTU_EVENTHUB_CHECKPOINT_BLOB_URL: required when PTU_EVENTHUB_CHECKPOINT_STORE=blob"
        )
    from azure.identity.aio import DefaultAzureCredential

    credential = DefaultAzureCredential()
    store = BlobCheckpointStore(url, container, credential=credential)
    return store, [store, credential]
