"""The privacy plan of an experiment: the noise multiplier every party uses, and the ε the run
will spend, computed from the config and the clients' dataset sizes alone (before any work).

Sample-level (``sample``): client k takes τ = ``train.local_steps`` DP-SGD steps per round at
q_k = B / n_k. σ is one number for the federation, calibrated once over the whole planned run —
the worst case: the client with the largest q (the smallest client) taking part in all R rounds,
R·τ steps. So every client's ε stays ≤ the target whatever the sampling does; the plan also gives
the ε the seeded client schedule (``fedlr.sampling``) will actually reach. Guarantee: per
example (add/remove one example of one client); records are partitioned across clients, so the
federation's figure is max_k ε_k (parallel composition, reference/privacy.md §0).

Client-level: each update clipped to S, noise z·S.
- ``client_central``: noise at the server on the sum; m of N clients sampled uniformly without
  replacement per round → ``fedlr.privacy.federation_accountant`` (replace one client, RDP).
- ``client_local``: every client adds its own noise before upload; no amplification (the server
  sees who sent). Per client, one Gaussian with sensitivity 2S (replace the client's data) per
  round it takes part in → RDP/PRV of a Gaussian with multiplier z/2 at q = 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

from fedlr.config import Experiment
from fedlr.privacy.accountant import COARSE_ORDERS, epsilon_of_history, sample_rate
from fedlr.privacy.calibration import calibrate_noise
from fedlr.privacy.federation_accountant import COARSE_ORDERS as CENTRAL_COARSE_ORDERS
from fedlr.privacy.federation_accountant import REPLACE_ONE_SENSITIVITY, FederationAccountant, central_epsilon
from fedlr.sampling import sample_clients

ADJACENCY = {
    "sample": "add/remove one training example of one client",
    "client_central": "replace one client (all of its data); N public",
    "client_local": "replace one client (all of its data)",
}
SAMPLING = {
    "sample": "Poisson: each local example in each step independently with probability q_k = batch_size / n_k",
    "client_central": "m of N clients per round, uniformly without replacement (fedlr.sampling); "
                      "amplification assumes the cohort is secret",
    "client_local": "none: each client's own release, no amplification by client sampling",
}
MECHANISMS = {
    "sample": "DP-SGD (Opacus per-sample gradients, clip C, Gaussian noise sigma*C per step) in every client",
    "client_central": "update clipped to S on the client (and again at the server); Gaussian noise z*S on the sum "
                      "at the server; uniform mean over the fixed cohort size m",
    "client_local": "update clipped to S and Gaussian noise z*S added by each client before upload; uniform mean",
}


@dataclass
class PrivacyPlan:
    mode: str
    accountant: str
    delta: float
    noise_multiplier: float
    noise_calibrated: bool  # True when σ came from privacy.target_epsilon
    max_grad_norm: float
    epsilon: float  # worst case over the planned run (every client in every round)
    epsilon_seeded_schedule: float  # max over clients under the seeded client sampling
    adjacency: str
    sampling: str
    mechanisms: list[str]
    num_rounds: int
    steps_per_round: int  # accountant steps a client takes per round it joins
    sample_rates: list[float] = field(default_factory=list)  # q_k per partition (sample mode; 0 = no data)
    smallest_client: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def client_step(self, partition_id: int, steps: int) -> tuple[float, float, int]:
        """The accountant entry (σ_eff, q, steps) of one client round that took ``steps`` steps."""
        if self.mode == "sample":
            return self.noise_multiplier, self.sample_rates[partition_id], steps
        if self.mode == "client_local":
            return self.noise_multiplier / REPLACE_ONE_SENSITIVITY, 1.0, 1
        raise ValueError(f"mode {self.mode!r} has no per-client accountant")

    def federation_accountant(self, num_clients: int, clients_per_round: int) -> FederationAccountant:
        return FederationAccountant(self.noise_multiplier, num_clients, clients_per_round)


def epsilon_for(exp: Experiment, train_sizes: list[int], noise_multiplier: float, rounds_per_client: list[int],
                coarse: bool = False) -> float:
    """max over clients of ε when client k takes part in ``rounds_per_client[k]`` rounds.
    ``coarse``: a fast RDP upper bound (fewer orders), only a starting point for calibration."""
    priv, fed = exp.privacy, exp.federation
    if priv.mode == "client_central":
        return central_epsilon(noise_multiplier, fed.num_clients, fed.clients_per_round, max(rounds_per_client),
                               priv.delta, **({"orders": CENTRAL_COARSE_ORDERS} if coarse else {}))
    kind = "rdp" if coarse else priv.accountant
    orders = COARSE_ORDERS if coarse else None
    if priv.mode == "client_local":
        history = [(noise_multiplier / REPLACE_ONE_SENSITIVITY, 1.0, max(rounds_per_client))]
        return epsilon_of_history(history, priv.delta, kind, orders)
    tau = exp.train.local_steps
    # ε grows with q and with steps: only the distinct (q, rounds) pairs need evaluating
    pairs = {(sample_rate(exp.train.batch_size, n), r) for n, r in zip(train_sizes, rounds_per_client) if n > 0}
    dominant = [(q, r) for q, r in pairs if not any(q2 >= q and r2 >= r and (q2, r2) != (q, r) for q2, r2 in pairs)]
    return max(epsilon_of_history([(noise_multiplier, q, r * tau)], priv.delta, kind, orders) for q, r in dominant)


def plan_privacy(exp: Experiment, train_sizes: list[int]) -> PrivacyPlan | None:
    """The privacy plan, or None when DP is off (mode 'none', or target_epsilon = inf)."""
    priv, fed = exp.privacy, exp.federation
    if not priv.enabled:
        return None
    if len(train_sizes) != fed.num_clients:
        raise ValueError(f"expected {fed.num_clients} client sizes, got {len(train_sizes)}")
    if not any(n > 0 for n in train_sizes):
        raise ValueError("no client has training examples")
    every_round = [fed.num_rounds] * fed.num_clients
    if priv.noise_multiplier is not None:
        sigma, calibrated = priv.noise_multiplier, False
    else:
        # a cheap conservative pass (RDP at integer orders), then a few exact evaluations around it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the smallest alpha": expected of a coarse pass
            guess = calibrate_noise(lambda s: epsilon_for(exp, train_sizes, s, every_round, coarse=True),
                                    priv.target_epsilon, rtol=1e-2)
        step = 1.1 if priv.accountant == "prv" else 1.03  # PRV's σ sits 5–10% under RDP's
        sigma = calibrate_noise(lambda s: epsilon_for(exp, train_sizes, s, every_round), priv.target_epsilon,
                                initial=guess, factor=step)
        calibrated = True
    schedule = [0] * fed.num_clients
    for rnd in range(1, fed.num_rounds + 1):
        for pid in sample_clients(exp.seed, rnd, fed.num_clients, fed.clients_per_round):
            schedule[pid] += 1
    if priv.mode == "client_central":
        schedule = [fed.num_rounds] * fed.num_clients  # the federation's figure: every round is one release
    mechanisms = [MECHANISMS[priv.mode]]
    if exp.method.name == "dp_lora":
        mechanisms.append(_dp_lora_stage(priv.mode))
    nonempty = [n for n in train_sizes if n > 0]
    return PrivacyPlan(
        mode=priv.mode, accountant=priv.accountant, delta=priv.delta, noise_multiplier=sigma,
        noise_calibrated=calibrated, max_grad_norm=priv.max_grad_norm,
        epsilon=epsilon_for(exp, train_sizes, sigma, every_round),
        epsilon_seeded_schedule=epsilon_for(exp, train_sizes, sigma, schedule) if any(schedule) else 0.0,
        adjacency=ADJACENCY[priv.mode], sampling=SAMPLING[priv.mode], mechanisms=mechanisms,
        num_rounds=fed.num_rounds, steps_per_round=exp.train.local_steps if priv.mode == "sample" else 1,
        sample_rates=[sample_rate(exp.train.batch_size, n) if n > 0 else 0.0 for n in train_sizes]
        if priv.mode == "sample" else [],
        smallest_client=min(nonempty), warnings=privacy_warnings(exp, train_sizes),
    )


def check_privacy(exp: Experiment, train_sizes: list[int]) -> PrivacyPlan | None:
    """``plan_privacy`` for the pre-work checks: problems become ``ConfigError`` naming the field,
    warnings are logged (and kept in the plan)."""
    import logging

    from fedlr.config import ConfigError
    from fedlr.privacy.calibration import CalibrationError

    if not exp.privacy.enabled:
        return None
    try:
        plan = plan_privacy(exp, train_sizes)
    except CalibrationError as e:
        raise ConfigError(f"privacy.target_epsilon: {e}") from None
    except ValueError as e:
        raise ConfigError(f"privacy: {e}") from None
    for text in plan.warnings:
        logging.getLogger("fedlr").warning("%s", text)
    return plan


def privacy_warnings(exp: Experiment, train_sizes: list[int]) -> list[str]:
    """Choices that are allowed but weaken or void the guarantee, each saying why."""
    priv, fed = exp.privacy, exp.federation
    out = []
    empty = [i for i, n in enumerate(train_sizes) if n == 0]
    if empty:
        out.append(f"partitions {empty} have no training examples: they will refuse to train when sampled")
    if priv.mode == "sample":
        n_min = min(n for n in train_sizes if n > 0)
        if priv.delta > 1 / n_min:
            out.append(
                f"privacy.delta = {priv.delta:g} is larger than 1/n = 1/{n_min} for the smallest client "
                f"({n_min} training examples): a mechanism that publishes one whole random example of each "
                f"client with probability delta satisfies (epsilon, delta)-DP, so the guarantee is void; "
                f"choose delta < 1/{n_min} (e.g. 1e-5)")
    elif priv.delta > 1 / fed.num_clients:
        out.append(
            f"privacy.delta = {priv.delta:g} is larger than 1/N = 1/{fed.num_clients} (the protected unit is a "
            f"client): a mechanism that publishes one whole client's update with probability delta would still "
            f"satisfy (epsilon, delta)-DP; choose delta < 1/{fed.num_clients}")
    if priv.mode == "client_central" and fed.clients_per_round == fed.num_clients:
        out.append("every client takes part in every round (m = N): client sampling gives no amplification")
    return out


def _dp_lora_stage(mode: str) -> str:
    """Which of DP-LoRA's two noise stages (Liu et al., arXiv 2312.17493 §4) this run implements."""
    if mode == "sample":
        return ("dp_lora: stage (2) per-iteration gradient clipping and noise, each trained tensor clipped "
                "separately (Opacus per-layer clipping, C/sqrt(P) each); uniform aggregation weights 1/K")
    if mode == "client_local":
        return ("dp_lora: stage (3) noise on the uploaded factors (clipped update (dA, dB), noise z*S, before "
                "upload); uniform aggregation weights 1/K")
    return "dp_lora: client-level Gaussian on the aggregated (dA, dB) at the server; uniform aggregation weights 1/K"


def client_train_sizes(exp: Experiment) -> list[int]:
    """n_k: each partition's local training rows, derived from the config and seed alone."""
    from fedlr.data import FederatedData

    data = FederatedData(exp)
    return [len(data.client_rows(pid)[0]) for pid in range(exp.federation.num_clients)]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: ε = ∞ (σ = 0 somewhere) is written as None with the mode saying why."""
    return None if x is None or math.isinf(x) else x
