"""Converting between fedlr's tensors and Flower's records (the only Flower types fedlr's core
touches are built here and in the strategies / client app)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from flwr.app import ArrayRecord, ConfigRecord

EXPERIMENT_KEY = "experiment"
PARTITION_KEY = "partition-id"


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items()))


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def experiment_config(json_text: str) -> ConfigRecord:
    return ConfigRecord({EXPERIMENT_KEY: json_text})
