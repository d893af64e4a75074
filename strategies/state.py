"""Everything the server carries from one round to the next, as one value.

A checkpoint is ``ServerState.state_dict()`` (plain values and tensors: ``fedlr.checkpoint``);
``ServerState.from_state`` reads it back for ``fedlr run --resume``. Every random draw derives
from (seed, purpose, round), so no RNG state is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedlr.privacy.federation_accountant import FederationAccountant

State = dict[str, torch.Tensor]


@dataclass
class ServerState:
    round: int = -1  # the last round finished (-1: nothing yet, 0: the init round)
    state: State = field(default_factory=dict)  # the global trained and per-round broadcast tensors
    once_state: State = field(default_factory=dict)  # tensors each client receives once (Fed-SB's B, A)
    has_once: set[int] = field(default_factory=set)  # partition ids that hold the once-sent tensors
    assignment: dict[str, int] | None = None  # L-GreCo's per-tensor codec parameters
    last_aggregate: State | None = None  # θ_t − θ_{t−1} of the uploaded tensors (L-GreCo's input)
    client_epsilon: dict[int, float] = field(default_factory=dict)  # last cumulative ε each client reported
    federation_accountant: FederationAccountant | None = None  # client_central: one release per round
    totals: list[int] = field(default_factory=lambda: [0, 0])  # cumulative uplink, downlink bytes
    wall_time_s: float = 0.0  # wall time of the run up to this round
    downlink_state: State = field(default_factory=dict)  # compression.downlink: the reference B_t, warm start
    holds_broadcast: dict[int, int] = field(default_factory=dict)  # partition id -> round of the B_t it holds
    # per-client DP (sample, client_local): training rounds each partition id was sampled in, and
    # those its accepted reply reported ε for (``strategies.privacy_ledger``)
    sampled_rounds: dict[int, int] = field(default_factory=dict)
    reported_rounds: dict[int, int] = field(default_factory=dict)

    def state_dict(self, fingerprint: str) -> dict:
        """The checkpoint payload; ``fingerprint`` is the experiment's, checked on resume."""
        return {
            "round": self.round, "state": self.state, "once_state": self.once_state,
            "has_once": sorted(self.has_once), "assignment": self.assignment, "last_aggregate": self.last_aggregate,
            "client_epsilon": {str(k): v for k, v in self.client_epsilon.items()},
            "federation_accountant": (self.federation_accountant.state_dict()
                                      if self.federation_accountant is not None else None),
            "totals": list(self.totals), "fingerprint": fingerprint,
            "wall_time_s": self.wall_time_s, "downlink_state": self.downlink_state,
            "holds_broadcast": {str(k): v for k, v in self.holds_broadcast.items()},
            "sampled_rounds": {str(k): v for k, v in self.sampled_rounds.items()},
            "reported_rounds": {str(k): v for k, v in self.reported_rounds.items()},
        }

    @classmethod
    def from_state(cls, saved: dict, fingerprint: str) -> "ServerState":
        """The inverse of ``state_dict``; refuses a checkpoint of another experiment."""
        if saved["fingerprint"] != fingerprint:
            raise RuntimeError("the checkpoint was written by a different experiment configuration")
        accountant = saved["federation_accountant"]
        return cls(
            round=int(saved["round"]), state=dict(saved["state"]), once_state=dict(saved["once_state"]),
            has_once=set(saved["has_once"]), assignment=saved["assignment"], last_aggregate=saved["last_aggregate"],
            client_epsilon={int(k): float(v) for k, v in saved["client_epsilon"].items()},
            federation_accountant=FederationAccountant.from_state(accountant) if accountant is not None else None,
            totals=list(saved["totals"]), wall_time_s=float(saved["wall_time_s"]),
            downlink_state=dict(saved["downlink_state"]),
            holds_broadcast={int(k): int(v) for k, v in saved["holds_broadcast"].items()},
            sampled_rounds={int(k): int(v) for k, v in saved["sampled_rounds"].items()},
            reported_rounds={int(k): int(v) for k, v in saved["reported_rounds"].items()},
        )
