"""Converting between fedlr's tensors and Flower's records (the only Flower types fedlr's core
touches are built here and in the strategies / client app)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

EXPERIMENT_KEY = "experiment"
NOT_ENROLLED = "this client has not received the experiment"  # a restarted node, before it rejoins
PARTITION_KEY = "partition-id"
STATE_DIR_KEY = "state-dir"  # where a client snapshots its persistent state (query / node config)
RESUME_ROUND_KEY = "resume-round"  # query: restore the client state of this round (-1: fresh run)
TRAIN_EXAMPLES_KEY = "train-examples"  # enrollment reply under client-owned data with DP: the client's n_k
PRIVACY_PLAN_KEY = "privacy-plan"  # train config under client-owned data with DP: the client's part of the plan
KEEP_FROM_KEY = "keep-from"  # train config: oldest round the server may still resume from
BROADCAST_KEY = "broadcast"  # train message: the compressed B_t - B_{t-1} (compression.downlink)
BASE_ROUND_KEY = "base-round"  # train config: the round t-1 whose B_{t-1} the delta applies to
FUSED_KEY = "fused-partitions"  # train.fused config: the partition ids one worker call trains (simulation)
FUSED_ACTION = "train.fused"


def fused_key(kind: str, partition_id: int) -> str:
    """Where a fused reply keeps client ``partition_id``'s ``kind`` ('arrays', 'metrics')."""
    return f"{kind}-{partition_id}"


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items()))


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def payload_record(payload: dict[str, np.ndarray]) -> ArrayRecord:
    """A compressed payload (``fedlr.compression``) as the record that travels."""
    return ArrayRecord(array_dict=OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in payload.items()))


def record_payload(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def experiment_config(json_text: str) -> ConfigRecord:
    return ConfigRecord({EXPERIMENT_KEY: json_text})
