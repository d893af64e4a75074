"""The communication plan of an experiment, before any training: what each client sends and
receives per round and in total, counted on the meta device (no weights) with the same wire
formula the ledger's records obey (``fedlr.wire``) — and, under DP, the privacy it will spend
(``epsilon`` at ``delta`` with the named ``accountant``; the calibrated ``noise_multiplier`` when
``privacy.target_epsilon`` is set), from ``fedlr.privacy.planning``."""

from __future__ import annotations

from dataclasses import dataclass

from fedlr.adapters.naming import BASE_KEY, key
from fedlr.compression.pipeline import compression_ratio, planned_bytes, planned_downlink_bytes
from fedlr.config import Experiment
from fedlr.models.adapted import adapter_paths, build_adapted_model
from fedlr.models.frozen_prefix import prefix_boundary
from fedlr.privacy.modes import privacy_mode
from fedlr.sampling import sample_clients
from fedlr.wire import record_wire_bytes


def communication_plan(exp: Experiment, num_labels: int, train_sizes: list[int] | None = None) -> dict:
    """Bytes (and ε under DP). ``train_sizes``: the clients' training-set sizes, derived from the
    data when not given (only needed under DP).

    Under ``method.client_ranks`` each client uploads its factors at its own rank: the per-client
    figures come as lists by partition id (``*_by_client``; the scalar ``*_per_client`` fields are
    then None) and every round's uplink is the sum over the clients the seed samples in it
    (``uplink_bytes_by_round``). What travels down does not depend on a client's rank."""
    adapted = build_adapted_model(exp, num_labels, meta=True)
    fed = exp.federation
    comp = exp.compression
    rank_of = [exp.method.client_rank(pid) for pid in range(fed.num_clients)]
    uplink = {}  # rank -> what one client of that rank uploads
    for rank in sorted(set(rank_of)):
        adapted.use_rank(rank, exp.seed)
        uplink[rank] = _client_uplink(adapted, comp, fed.num_rounds)
    adapted.use_rank(exp.method.rank, exp.seed)
    params = adapted.parameters_by_name()
    boundary, cache_reason = prefix_boundary(exp, adapted)

    def entries(keys):
        return [(k, params[k].numel()) for k in keys]

    head_params = sum(n for _, n in entries(adapted.head_keys))
    # L-GreCo's per-tensor choice rides down with every message once the server has made it
    lgreco = comp.adaptive == "lgreco"
    assignment_bytes = record_wire_bytes([("assignment", len(adapted.trained_keys))]) if lgreco else 0
    lgreco_rounds = sum(1 for t in range(2, fed.num_rounds + 1) if t > comp.warmup_rounds) if assignment_bytes else 0
    # FedSVD's A and FedEx/FLoRA's base weights ride down beside the trained tensors; FLoRA's fresh
    # adapters do not travel (every party draws them from the seed)
    down_round_bytes = record_wire_bytes(entries(adapted.downlink_keys))

    init_round = adapted.spec.runs_init_round(exp.method.init)
    once_bytes = record_wire_bytes(entries(adapted.once_keys)) if init_round else 0
    init_uplink = 0
    if init_round:  # each init client sends the summed gradient of every adapted layer's base weight
        grads = entries(key(p, BASE_KEY) for p in adapter_paths(adapted))
        init_uplink = fed.clients_per_round * record_wire_bytes(grads)
    down_shapes = {k: tuple(params[k].shape) for k in adapted.downlink_keys}
    participants = set()
    uplink_by_round, downlink_by_round, previous = [], [], []
    for rnd in range(1, fed.num_rounds + 1):
        sampled = sample_clients(exp.seed, rnd, fed.num_clients, fed.clients_per_round)
        participants.update(sampled)
        uplink_by_round.append(sum(uplink[rank_of[pid]].bytes_by_round[rnd - 1] for pid in sampled))
        # compression.downlink: a client that took part in the previous round gets the compressed delta
        downlink_by_round.append(sum(
            planned_downlink_bytes(down_shapes, comp, fresh=pid in previous, server_round=rnd) if comp.downlink
            else down_round_bytes for pid in sampled))
        previous = sampled
    total_up = sum(uplink_by_round) + init_uplink
    total_down = (sum(downlink_by_round) + len(participants) * once_bytes
                  + fed.clients_per_round * lgreco_rounds * assignment_bytes)
    by_client = [uplink[r] for r in rank_of]
    one = by_client[0] if len(uplink) == 1 else None  # every client uploads alike
    return {
        "method": exp.method.name,
        "rank": exp.method.rank if adapted.spec.adapter else None,
        "client_ranks": rank_of if exp.method.client_ranks else None,
        "targets": list(exp.model.targets),
        "num_rounds": fed.num_rounds,
        "num_clients": fed.num_clients,
        "clients_per_round": fed.clients_per_round,
        "uplink_params_per_client": one.adapter_params if one else None,
        "head_params": head_params,
        "downlink_params": sum(n for _, n in entries(adapted.downlink_keys)),
        "uplink_bytes_per_client": one.bytes_by_round[-1] if one else None,
        "uplink_params_by_client": [u.adapter_params for u in by_client],
        "uplink_bytes_by_client": [u.bytes_by_round[-1] for u in by_client],
        "uplink_bytes_by_round": uplink_by_round,
        "downlink_bytes": down_round_bytes,
        "downlink_bytes_by_round": downlink_by_round,
        "once_downlink_bytes_per_client": once_bytes,
        "distinct_participants": len(participants),
        "init_uplink_bytes": init_uplink,
        "total_uplink_bytes": total_up,
        "total_downlink_bytes": total_down,
        "total_bytes": total_up + total_down,
        "exact_aggregation": adapted.spec.exact_under(privacy_mode(exp.privacy).combines_updates),
        "codec": comp.codec,
        "compression_ratio": one.compression_ratio if one else None,
        "dense_uplink_bytes_per_client": one.dense_bytes if one else None,
        "frozen_prefix_cache": boundary is not None,
        "frozen_prefix_reason": cache_reason,
        **privacy_entries(exp, train_sizes),
    }


@dataclass(frozen=True)
class ClientUplink:
    adapter_params: int  # trained adapter values (the head apart)
    dense_bytes: int  # the fp32 record of every trained tensor
    bytes_by_round: list[int]  # what travels in rounds 1..T: the codec's payload (dense during warm-up)
    compression_ratio: float


def _client_uplink(adapted, comp, num_rounds: int) -> ClientUplink:
    """What one client with ``adapted``'s current adapters uploads each round; under L-GreCo the
    uniform parameters, an upper bound for error_budget >= 1."""
    params = adapted.parameters_by_name()
    head = set(adapted.head_keys)
    shapes = {k: tuple(params[k].shape) for k in adapted.trained_keys}
    dense = record_wire_bytes((k, params[k].numel()) for k in adapted.trained_keys)
    by_round = [planned_bytes(shapes, comp, server_round=t) if comp.active else dense for t in range(1, num_rounds + 1)]
    return ClientUplink(
        adapter_params=sum(params[k].numel() for k in adapted.trained_keys if k not in head),
        dense_bytes=dense, bytes_by_round=by_round,
        compression_ratio=compression_ratio(shapes, comp) if comp.active else 1.0)


def privacy_entries(exp: Experiment, train_sizes: list[int] | None) -> dict:
    """``epsilon`` (the planned run's worst case: every client in every round), ``delta``,
    ``accountant``, ``noise_multiplier`` and the assumptions; None values without DP."""
    from fedlr.privacy.modes import configured_mode
    from fedlr.privacy.planning import check_privacy, client_train_sizes, finite_or_none

    if not exp.privacy.enabled:
        off = exp.privacy.mode if not configured_mode(exp.privacy).private else f"{exp.privacy.mode} (epsilon inf: off)"
        return {"privacy_mode": off,
                "epsilon": None, "delta": None, "accountant": None, "noise_multiplier": None}
    plan = check_privacy(exp, train_sizes if train_sizes is not None else client_train_sizes(exp))
    return {
        "privacy_mode": plan.mode, "epsilon": finite_or_none(plan.epsilon), "delta": plan.delta,
        "accountant": plan.accountant, "noise_multiplier": plan.noise_multiplier,
        "noise_calibrated": plan.noise_calibrated, "max_grad_norm": plan.max_grad_norm,
        "epsilon_seeded_schedule": finite_or_none(plan.epsilon_seeded_schedule), "adjacency": plan.adjacency,
        "sampling": plan.sampling, "privacy_mechanisms": plan.mechanisms,
        "privacy_steps_per_round": plan.steps_per_round, "max_sample_rate": max(plan.sample_rates, default=None),
        "privacy_warnings": plan.warnings, **per_client_entries(plan),
    }


def per_client_entries(plan) -> dict:
    """Under ``privacy.calibration = 'per_client'``: each client's σ_k, its rounds R_k and the ε_k
    it ends at, by partition id (nothing under the default worst-case calibration)."""
    if plan.calibration != "per_client":
        return {}
    from fedlr.privacy.planning import finite_or_none

    return {"calibration": plan.calibration, "client_noise_multipliers": plan.client_noise_multipliers,
            "client_rounds": plan.client_rounds,
            "client_epsilon_planned": [finite_or_none(e) for e in plan.client_epsilon_planned]}


def format_plan(plan: dict) -> str:
    mib = 2**20
    if plan["client_ranks"] is None:
        lines = [
            f"method {plan['method']}, rank {plan['rank']}, targets {plan['targets']}",
            f"{plan['num_rounds']} rounds x {plan['clients_per_round']} of {plan['num_clients']} clients",
            f"per client per round: up {plan['uplink_params_per_client']:,} adapter + {plan['head_params']:,} head "
            f"params = {plan['uplink_bytes_per_client']:,} bytes; down {plan['downlink_bytes']:,} bytes",
        ]
    else:
        by_rank = dict(zip(plan["client_ranks"], zip(plan["uplink_params_by_client"], plan["uplink_bytes_by_client"])))
        lines = [
            f"method {plan['method']}, client ranks {plan['client_ranks']} (by partition id), "
            f"targets {plan['targets']}",
            f"{plan['num_rounds']} rounds x {plan['clients_per_round']} of {plan['num_clients']} clients",
            *(f"per client of rank {rank} per round: up {params:,} adapter + {plan['head_params']:,} head params "
              f"= {up:,} bytes" for rank, (params, up) in sorted(by_rank.items())),
            f"per client per round: down {plan['downlink_bytes']:,} bytes, whatever its rank; up per round (the "
            f"sampled clients): {', '.join(f'{b:,}' for b in plan['uplink_bytes_by_round'])} bytes",
        ]
    if plan["init_uplink_bytes"] or plan["once_downlink_bytes_per_client"]:
        lines.append(f"init round: up {plan['init_uplink_bytes']:,} bytes; frozen factors once per client: "
                     f"{plan['once_downlink_bytes_per_client']:,} bytes x {plan['distinct_participants']} clients")
    lines.append(f"whole run: up {plan['total_uplink_bytes'] / mib:.2f} MiB, down {plan['total_downlink_bytes'] / mib:.2f} MiB, "
                 f"total {plan['total_bytes'] / mib:.2f} MiB ({plan['total_bytes']:,} bytes)")
    lines.append(f"frozen-prefix cache: {'on' if plan['frozen_prefix_cache'] else 'off'} "
                 f"({plan['frozen_prefix_reason']})")
    if plan.get("delta") is not None:
        eps = "inf" if plan["epsilon"] is None else f"{plan['epsilon']:.4g}"
        how = "calibrated to privacy.target_epsilon" if plan["noise_calibrated"] else "from privacy.noise_multiplier"
        sigma = "largest noise multiplier" if plan.get("calibration") == "per_client" else "noise multiplier"
        lines.append(f"privacy ({plan['privacy_mode']}): epsilon {eps} at delta {plan['delta']:g} ({plan['accountant']} "
                     f"accountant), {sigma} {plan['noise_multiplier']:.4g} {how}")
        lines.append(f"  adjacency: {plan['adjacency']}; sampling: {plan['sampling']}")
        if plan.get("calibration") == "per_client":
            lines.append("  per-client calibration (the seeded schedule): each client's noise multiplier, rounds, "
                         "epsilon:")
            lines += [f"    client {pid}: " + ("no rounds" if sigma is None else f"{sigma:.4g}, {r}, {eps:.4g}")
                      for pid, (sigma, r, eps) in enumerate(zip(plan["client_noise_multipliers"], plan["client_rounds"],
                                                                plan["client_epsilon_planned"]))]
        elif plan["epsilon_seeded_schedule"] is not None and plan["epsilon_seeded_schedule"] != plan["epsilon"]:
            lines.append(f"  epsilon is the worst case (a client in every round); under this seed's client schedule: "
                         f"{plan['epsilon_seeded_schedule']:.4g}")
    else:
        lines.append(f"privacy: {plan['privacy_mode']} (no differential privacy)")
    return "\n".join(lines)
