"""Each client's cumulative ε as the ledger records it, counting every round it may have released.

Under per-client accounting (``sample``, ``client_local``) a client composes its own accountant
and reports its ε with its update. A sampled client whose reply came late, failed or was
rejected may still have trained and released its update (in a deployment a straggler's update
still reaches the SuperLink), so its report is missing or not trusted. The server therefore
counts, for every client, each training round it was sampled in, and charges the rounds no
accepted reply reported for conservatively: the privacy plan's per-round entry
(``PrivacyMode.client_step`` at the planned steps per round, the entry the client's own
accountant composes) for every round the client was sampled in, never below what the client
last reported. A client whose every sampled round was reported keeps its own figure, bit for bit.
"""

from __future__ import annotations

from fedlr.privacy.accountant import epsilon_of_history
from fedlr.privacy.modes import PrivacyMode
from fedlr.privacy.planning import PrivacyPlan


def planned_epsilon(mode: PrivacyMode, plan: PrivacyPlan, partition_id: int, rounds: int) -> float:
    """ε of ``rounds`` planned client rounds of ``partition_id``: the history its accountant
    composes when it takes the planned steps every round."""
    sigma, q, steps = mode.client_step(plan, partition_id, plan.steps_per_round)
    return epsilon_of_history([(sigma, q, steps * rounds)], plan.delta, plan.accountant)


def client_epsilons(mode: PrivacyMode, plan: PrivacyPlan, sampled_rounds: dict[int, int], reported_rounds: dict[int, int],
                    reported: dict[int, float]) -> dict[int, float]:
    """partition id -> ε for every client sampled so far: its last report when every round it
    was sampled in was reported, else max(report, the plan's ε over all its sampled rounds)."""
    out = {}
    for pid in sorted(set(sampled_rounds) | set(reported)):
        eps = reported.get(pid, 0.0)
        if sampled_rounds.get(pid, 0) > reported_rounds.get(pid, 0):
            eps = max(eps, planned_epsilon(mode, plan, pid, sampled_rounds[pid]))
        out[pid] = eps
    return out
