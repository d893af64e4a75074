"""The privacy plan of an experiment: the noise multiplier every party uses, and the ε the run
will spend, computed from the config and the clients' dataset sizes alone (before any work).

Sample-level (``sample``): client k takes τ = ``train.local_steps`` DP-SGD steps per round at
q_k = B / n_k. σ is one number for the federation, calibrated once over the whole planned run —
the worst case: the client with the largest q (the smallest client) taking part in all R rounds,
R·τ steps. So every client's ε stays ≤ the target whatever the sampling does; the plan also gives
the ε the seeded client schedule (``fedlr.sampling``) will actually reach. Guarantee: per
example (add/remove one example of one client); records are partitioned across clients, so the
federation's figure is max_k ε_k (parallel composition, reference/privacy.md §0).

Per client (``privacy.calibration = 'per_client'``; ``sample`` and ``client_local``): client k's
σ_k is calibrated to the target for its own accountant history — q_k and the R_k rounds the
seeded schedule samples it in — so every client ends within ``rtol`` under the target instead of
the smaller clients' budgets going unspent. σ_k depends only on the seed, the config and the
dataset sizes (public, as above), never on data; each ε_k is computed for the mechanism client k
runs, and the federation's figure is still max_k ε_k. A client refuses a round past its R_k
(``PrivacyPlan.round_refusal``): σ_k covers no more.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from fedlr.config import Experiment
from fedlr.methods import get_method
from fedlr.privacy.accountant import COARSE_ORDERS, epsilon_of_history
from fedlr.privacy.calibration import calibrate_noise
from fedlr.privacy.federation_accountant import FederationAccountant
from fedlr.privacy.modes import configured_mode
from fedlr.sampling import sample_clients

@dataclass
class PrivacyPlan:
    mode: str
    accountant: str
    delta: float
    noise_multiplier: float
    noise_calibrated: bool  # True when σ came from privacy.target_epsilon
    max_grad_norm: float
    # worst_case: every client in every round; per_client: the seeded schedule (a client refuses more rounds)
    epsilon: float
    epsilon_seeded_schedule: float  # max over clients under the seeded client sampling
    adjacency: str
    sampling: str
    mechanisms: list[str]
    num_rounds: int
    steps_per_round: int  # accountant steps a client takes per round it joins
    sample_rates: list[float] = field(default_factory=list)  # q_k per partition (sample mode; 0 = no data)
    smallest_client: int | None = None
    warnings: list[str] = field(default_factory=list)
    calibration: str = "worst_case"
    # per_client only, by partition id: σ_k (None: no data, or never sampled), the rounds R_k the seed
    # samples client k in, and ε_k after them (the cumulative ε each reports is the ledger's client_epsilon)
    client_noise_multipliers: list[float | None] | None = None
    client_rounds: list[int] | None = None
    client_epsilon_planned: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def seen_by(self, partition_id: int) -> "PrivacyPlan":
        """The plan as client ``partition_id`` receives it under client-owned data (``fedlr deploy``
        with ``data.dataset = 'client-files'``): everything its own mechanism and accountant use —
        σ (its σ_k), its q_k, the seeded schedule (public: from the seed) — and nothing that
        describes another client: their rates, σ_j and planned ε_j are zeroed, the smallest size,
        the warnings and the federation's planned ε (a max over clients) dropped."""
        def own(values, other):
            return None if values is None else [v if i == partition_id else other for i, v in enumerate(values)]

        return replace(self, sample_rates=own(self.sample_rates, 0.0), smallest_client=None, warnings=[],
                       epsilon=math.nan, epsilon_seeded_schedule=math.nan,
                       client_noise_multipliers=own(self.client_noise_multipliers, None),
                       client_epsilon_planned=own(self.client_epsilon_planned, 0.0))

    def client_noise(self, partition_id: int) -> float:
        """σ of client ``partition_id``'s mechanism: its own under per-client calibration."""
        if self.client_noise_multipliers is None:
            return self.noise_multiplier
        sigma = self.client_noise_multipliers[partition_id]
        if sigma is None:
            raise ValueError(f"client {partition_id} has no noise multiplier: per-client calibration gives one only "
                             "to a client with training examples that the seeded schedule samples")
        return sigma

    def round_refusal(self, partition_id: int, steps_so_far: int) -> str | None:
        """Why client ``partition_id``, whose accountant holds ``steps_so_far`` steps, must not take
        another round, or None: under per-client calibration σ_k covers R_k rounds and no more."""
        if self.client_rounds is None:
            return None
        planned = self.client_rounds[partition_id]
        if steps_so_far + self.steps_per_round > planned * self.steps_per_round:
            return (f"client {partition_id} has taken the {planned} round(s) its noise multiplier was calibrated for "
                    f"(privacy.calibration 'per_client', the seeded schedule); another round would spend more than "
                    f"privacy.target_epsilon")
        return None

    def federation_accountant(self, num_clients: int, clients_per_round: int) -> FederationAccountant:
        return FederationAccountant(self.noise_multiplier, num_clients, clients_per_round)


def epsilon_for(exp: Experiment, train_sizes: list[int], noise_multiplier: float, rounds_per_client: list[int],
                coarse: bool = False) -> float:
    """max over clients of ε when client k takes part in ``rounds_per_client[k]`` rounds.
    ``coarse``: a fast RDP upper bound (fewer orders), only a starting point for calibration."""
    return configured_mode(exp.privacy).epsilon(exp, train_sizes, noise_multiplier, rounds_per_client, coarse)


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
    mode = configured_mode(priv)
    schedule = mode.releases_per_client(seeded_schedule(exp), fed.num_rounds)
    per_client = {}
    if priv.calibration == "per_client":
        sigmas = calibrate_per_client(exp, train_sizes, schedule)
        per_client = dict(client_noise_multipliers=sigmas, client_rounds=schedule, client_epsilon_planned=[
            0.0 if s is None else epsilon_of_client(exp, n, s, r) for n, s, r in zip(train_sizes, sigmas, schedule)])
    own_sigmas = [s for s in per_client.get("client_noise_multipliers", []) if s is not None]
    if priv.noise_multiplier is not None:
        sigma = priv.noise_multiplier
    elif own_sigmas:
        sigma = max(own_sigmas)  # the noisiest client's
    else:
        sigma = calibrate(exp, lambda s, coarse=False: epsilon_for(exp, train_sizes, s, every_round, coarse))
    mechanisms = [mode.mechanism]
    if (method_mechanism := get_method(exp.method.name).privacy_mechanisms.get(mode.name)) is not None:
        mechanisms.append(method_mechanism)
    nonempty = [n for n in train_sizes if n > 0]
    if per_client:
        epsilon = seeded = max(per_client["client_epsilon_planned"])
    else:
        epsilon = epsilon_for(exp, train_sizes, sigma, every_round)
        seeded = epsilon_for(exp, train_sizes, sigma, schedule) if any(schedule) else 0.0
    return PrivacyPlan(
        mode=priv.mode, accountant=priv.accountant, delta=priv.delta, noise_multiplier=sigma,
        noise_calibrated=priv.noise_multiplier is None, max_grad_norm=priv.max_grad_norm,
        epsilon=epsilon, epsilon_seeded_schedule=seeded,
        adjacency=mode.adjacency, sampling=mode.sampling, mechanisms=mechanisms,
        num_rounds=fed.num_rounds, steps_per_round=mode.steps_per_round(exp),
        sample_rates=mode.sample_rates(exp, train_sizes),
        smallest_client=min(nonempty), warnings=privacy_warnings(exp, train_sizes),
        calibration=priv.calibration, **per_client,
    )


def seeded_schedule(exp: Experiment) -> list[int]:
    """R_k: the rounds the seeded client sampling (``fedlr.sampling``) puts each client in."""
    fed = exp.federation
    schedule = [0] * fed.num_clients
    for rnd in range(1, fed.num_rounds + 1):
        for pid in sample_clients(exp.seed, rnd, fed.num_clients, fed.clients_per_round):
            schedule[pid] += 1
    return schedule


def calibrate(exp: Experiment, epsilon_of: Callable[..., float]) -> float:
    """The σ with ε(σ) within ``calibrate_noise``'s rtol under ``privacy.target_epsilon``:
    a cheap conservative pass (``epsilon_of(σ, coarse=True)``: RDP at integer orders) for the
    bracket, then a few exact evaluations around it."""
    priv = exp.privacy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the smallest alpha": expected of a coarse pass
        guess = calibrate_noise(lambda s: epsilon_of(s, coarse=True), priv.target_epsilon, rtol=1e-2)
    step = 1.1 if priv.accountant == "prv" else 1.03  # PRV's σ sits 5–10% under RDP's
    return calibrate_noise(epsilon_of, priv.target_epsilon, initial=guess, factor=step)


def epsilon_of_client(exp: Experiment, num_examples: int, noise_multiplier: float, rounds: int,
                      coarse: bool = False) -> float:
    """ε of one client with ``num_examples`` training examples after ``rounds`` rounds at σ."""
    history = configured_mode(exp.privacy).client_history(exp, num_examples, noise_multiplier, rounds)
    return epsilon_of_history(history, exp.privacy.delta, "rdp" if coarse else exp.privacy.accountant,
                              COARSE_ORDERS if coarse else None)


def calibrate_per_client(exp: Experiment, train_sizes: list[int], rounds: list[int]) -> list[float | None]:
    """σ_k for each client: calibrated to the target for its own history (n_k, R_k), once per
    distinct history; None for a client without data or without a round."""
    from fedlr.privacy.calibration import CalibrationError

    found: dict[tuple, float] = {}
    sigmas: list[float | None] = []
    for pid, (n, r) in enumerate(zip(train_sizes, rounds)):
        if n == 0 or r == 0:
            sigmas.append(None)
            continue
        key = tuple(configured_mode(exp.privacy).client_history(exp, n, 1.0, r))  # σ enters as a scale only
        if key not in found:
            try:
                found[key] = calibrate(exp, lambda s, coarse=False: epsilon_of_client(exp, n, s, r, coarse))
            except CalibrationError as e:
                raise CalibrationError(f"client {pid} ({n} training examples, {r} rounds): {e}") from None
        sigmas.append(found[key])
    return sigmas


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
    mode = configured_mode(exp.privacy)
    out = []
    empty = [i for i, n in enumerate(train_sizes) if n == 0]
    if empty:
        out.append(f"partitions {empty} have no training examples: they will refuse to train when sampled")
    if (delta := mode.delta_warning(exp, train_sizes)) is not None:
        out.append(delta)
    return out + mode.extra_warnings(exp)


def client_train_sizes(exp: Experiment) -> list[int]:
    """n_k: each partition's local training rows, derived from the config and seed alone."""
    from fedlr.data import FederatedData

    data = FederatedData(exp)
    return [len(data.client_rows(pid)[0]) for pid in range(exp.federation.num_clients)]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: ε = ∞ (σ = 0 somewhere) is written as None with the mode saying why."""
    return None if x is None or math.isinf(x) else x
