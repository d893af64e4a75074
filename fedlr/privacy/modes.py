"""The privacy modes (``privacy.mode``), one object each: what a client does to its update before
release, how the server combines the accepted updates, which accountant tracks ε, what the server
checks, and what the mode refuses (with the reason). ``privacy_mode(exp.privacy)`` gives the mode
in effect — ``none`` also for ``target_epsilon = inf`` — and nothing outside ``fedlr/privacy``
compares mode names.

- ``none``: no DP; sample-weighted mean (the method's own aggregation).
- ``sample``: DP-SGD (Opacus) in every client; each client's accountant, its ε reported per round.
- ``client_central``: each update clipped to S; the server adds N(0, z²S²) to the sum and divides
  by the fixed cohort size m; the server's federation accountant (``federation_accountant``).
- ``client_local``: each client clips and adds N(0, z²S²) before upload; uniform mean; each
  client's accountant (a Gaussian of sensitivity 2S per round it joins).

The client-level modes hand the method *one* combined update (weight 1): a method whose
aggregation needs each client's own tensors loses exactness there
(``fedlr.methods.base.MethodSpec.exact_under``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Mapping

import torch

from fedlr.privacy.accountant import COARSE_ORDERS, epsilon_of_history, sample_rate
from fedlr.privacy.client_level import add_local_noise, central_noised_mean, clip_update, uniform_mean
from fedlr.privacy.federation_accountant import COARSE_ORDERS as CENTRAL_COARSE_ORDERS
from fedlr.privacy.federation_accountant import REPLACE_ONE_SENSITIVITY, FederationAccountant, central_epsilon
from fedlr.privacy.noise import noise_generator

if TYPE_CHECKING:
    from fedlr.config import Experiment, PrivacyConfig
    from fedlr.privacy.planning import PrivacyPlan

State = dict[str, torch.Tensor]


class PrivacyMode:
    """The behaviour of one ``privacy.mode``; the base class is the mode without DP."""

    name: ClassVar[str]
    private: ClassVar[bool] = True  # whether the mode clips and noises at all
    adjacency: ClassVar[str] = ""  # the neighbouring datasets ε is about
    sampling: ClassVar[str] = ""  # the sampling the accountant assumes
    mechanism: ClassVar[str] = ""  # what the mode does, for the run's privacy record
    dp_sgd: ClassVar[bool] = False  # clients train with Opacus DP-SGD
    client_accountant: ClassVar[bool] = False  # each client keeps an accountant and reports its ε
    combines_updates: ClassVar[bool] = False  # the method aggregates one combined update, not each client's
    # why several clients cannot be trained in one fused call (``federation.fused_clients``), or None
    fused_refusal: ClassVar[str | None] = None
    # why ``privacy.calibration = 'per_client'`` cannot apply, or None (the mode accounts each client)
    per_client_refusal: ClassVar[str | None] = ("it has no per-client accountant: its epsilon is the federation's, "
                                                "set by one noise multiplier")

    def settings_problem(self, privacy: "PrivacyConfig") -> str | None:
        """What is wrong with the ``[privacy]`` section under this mode, or None."""
        given = [k for k in ("noise_multiplier", "target_epsilon") if getattr(privacy, k) is not None]
        if len(given) != 1:
            which = "both" if given else "neither"
            return (f"privacy.mode {self.name!r} needs exactly one of privacy.noise_multiplier and "
                    f"privacy.target_epsilon ({which} given)")
        return calibration_problem(self, privacy)

    # ------------------------------------------------------------------ client
    def release(self, update: State, plan: "PrivacyPlan", noise_source: str, seed: int, server_round: int,
                partition_id: int) -> State:
        """What a client sends of its update Δ (clipped, noised, or as it is)."""
        return update

    def client_step(self, plan: "PrivacyPlan", partition_id: int, steps: int) -> tuple[float, float, int]:
        """The accountant entry (σ_eff, q, steps) of one client round that took ``steps`` steps."""
        raise ValueError(f"privacy.mode {self.name!r} has no per-client accountant")

    def client_history(self, exp: "Experiment", num_examples: int, noise_multiplier: float,
                       rounds: int) -> list[tuple[float, float, int]]:
        """The accountant history [(σ_eff, q, steps)] of a client with ``num_examples`` training
        examples after ``rounds`` rounds at ``noise_multiplier``."""
        raise ValueError(f"privacy.mode {self.name!r} has no per-client accountant")

    # ------------------------------------------------------------------ server
    def update_norm_bound(self, plan: "PrivacyPlan | None") -> float | None:
        """The L2 bound every uploaded update must keep (the server rejects larger ones, the client
        clips its encoded payload to it), or None."""
        return None

    def combine(self, updates: list[Mapping[str, torch.Tensor]], weights: list[float], plan: "PrivacyPlan | None",
                cohort_size: int, noise_source: str, seed: int, server_round: int
                ) -> tuple[list[Mapping[str, torch.Tensor]], list[float]]:
        """The (updates, weights) the method aggregates, from the accepted updates in partition
        order and their sample counts: as they are, sample-weighted."""
        return updates, weights

    def server_accountant(self, plan: "PrivacyPlan | None", num_clients: int,
                          clients_per_round: int) -> FederationAccountant | None:
        """The accountant the server composes one release per round into, or None (clients report ε)."""
        return None

    # ------------------------------------------------------------------ planning
    def epsilon(self, exp: "Experiment", train_sizes: list[int], noise_multiplier: float,
                rounds_per_client: list[int], coarse: bool = False) -> float:
        """max over clients of ε when client k takes part in ``rounds_per_client[k]`` rounds;
        ``coarse``: a fast RDP upper bound (fewer orders), a starting point for calibration."""
        raise ValueError(f"privacy.mode {self.name!r} spends no privacy")

    def steps_per_round(self, exp: "Experiment") -> int:
        """Accountant steps a client takes per round it joins."""
        return 1

    def sample_rates(self, exp: "Experiment", train_sizes: list[int]) -> list[float]:
        """q_k per partition where the accountant needs it (0 = no data)."""
        return []

    def releases_per_client(self, schedule: list[int], num_rounds: int) -> list[int]:
        """The releases ε counts for each client, given how many rounds the seed samples it in."""
        return schedule

    def delta_warning(self, exp: "Experiment", train_sizes: list[int]) -> str | None:
        """Why ``privacy.delta`` is too large for the unit this mode protects, or None.
        The protected unit here is a client."""
        n = exp.federation.num_clients
        if exp.privacy.delta > 1 / n:
            return (f"privacy.delta = {exp.privacy.delta:g} is larger than 1/N = 1/{n} (the protected unit is a "
                    f"client): a mechanism that publishes one whole client's update with probability delta would "
                    f"still satisfy (epsilon, delta)-DP; choose delta < 1/{n}")
        return None

    def extra_warnings(self, exp: "Experiment") -> list[str]:
        return []


class NoPrivacy(PrivacyMode):
    name = "none"
    private = False

    def settings_problem(self, privacy: "PrivacyConfig") -> str | None:
        given = [k for k in ("noise_multiplier", "target_epsilon") if getattr(privacy, k) is not None]
        if privacy.calibration != "worst_case":
            given.append("calibration")
        if given:
            return (f"privacy.{given[0]} is set but privacy.mode is 'none'; "
                    "choose privacy.mode 'sample', 'client_central' or 'client_local'")
        return None


class SampleLevel(PrivacyMode):
    """DP-SGD in every client; guarantee per example of one client (parallel composition across
    clients, ε = max_k ε_k)."""

    name = "sample"
    adjacency = "add/remove one training example of one client"
    sampling = "Poisson: each local example in each step independently with probability q_k = batch_size / n_k"
    mechanism = "DP-SGD (Opacus per-sample gradients, clip C, Gaussian noise sigma*C per step) in every client"
    dp_sgd = True
    client_accountant = True
    fused_refusal = ("privacy.mode 'sample' keeps an accountant in each client and draws its noise per client "
                     "(Opacus per-sample gradients are not fused)")
    per_client_refusal = None

    def client_step(self, plan, partition_id, steps):
        return plan.client_noise(partition_id), plan.sample_rates[partition_id], steps

    def client_history(self, exp, num_examples, noise_multiplier, rounds):
        return [(noise_multiplier, sample_rate(exp.train.batch_size, num_examples), rounds * exp.train.local_steps)]

    def epsilon(self, exp, train_sizes, noise_multiplier, rounds_per_client, coarse=False):
        kind = "rdp" if coarse else exp.privacy.accountant
        orders = COARSE_ORDERS if coarse else None
        tau = exp.train.local_steps
        # ε grows with q and with steps: only the distinct (q, rounds) pairs need evaluating
        pairs = {(sample_rate(exp.train.batch_size, n), r) for n, r in zip(train_sizes, rounds_per_client) if n > 0}
        dominant = [(q, r) for q, r in pairs if not any(q2 >= q and r2 >= r and (q2, r2) != (q, r) for q2, r2 in pairs)]
        return max(epsilon_of_history([(noise_multiplier, q, r * tau)], exp.privacy.delta, kind, orders)
                   for q, r in dominant)

    def steps_per_round(self, exp):
        return exp.train.local_steps

    def sample_rates(self, exp, train_sizes):
        return [sample_rate(exp.train.batch_size, n) if n > 0 else 0.0 for n in train_sizes]

    def delta_warning(self, exp, train_sizes):
        delta, n_min = exp.privacy.delta, min(n for n in train_sizes if n > 0)
        if delta > 1 / n_min:
            return (f"privacy.delta = {delta:g} is larger than 1/n = 1/{n_min} for the smallest client "
                    f"({n_min} training examples): a mechanism that publishes one whole random example of each "
                    f"client with probability delta satisfies (epsilon, delta)-DP, so the guarantee is void; "
                    f"choose delta < 1/{n_min} (e.g. 1e-5)")
        return None


class ClientCentral(PrivacyMode):
    """DP-FedAvg with the noise at the server (McMahan et al. 2018, arXiv 1710.06963, Alg. 1)."""

    name = "client_central"
    adjacency = "replace one client (all of its data); N public"
    sampling = ("m of N clients per round, uniformly without replacement (fedlr.sampling); "
                "amplification assumes the cohort is secret")
    mechanism = ("update clipped to S on the client (and again at the server); Gaussian noise z*S on the sum "
                 "at the server; uniform mean over the fixed cohort size m")
    combines_updates = True
    per_client_refusal = ("its noise is drawn once, at the server, on the sum of the cohort's updates, so every "
                          "client's guarantee is the federation's, set by one noise multiplier")

    def settings_problem(self, privacy):
        if privacy.accountant == "prv":
            return ("privacy.accountant 'prv' cannot account client_central: fedlr samples a fixed number of "
                    "clients without replacement, which only the RDP accountant (Wang et al. 2019) covers; use "
                    "privacy.accountant = 'rdp'")
        return super().settings_problem(privacy)

    def release(self, update, plan, noise_source, seed, server_round, partition_id):
        return clip_update(update, plan.max_grad_norm)[0]

    def update_norm_bound(self, plan):
        return plan.max_grad_norm

    def combine(self, updates, weights, plan, cohort_size, noise_source, seed, server_round):
        """(Σ_k clip(Δ_k, S) + N(0, z²S²)) / m, one update of weight 1."""
        gen = noise_generator(noise_source, seed, "server-noise", server_round)
        return [central_noised_mean(updates, plan.max_grad_norm, plan.noise_multiplier, cohort_size, gen)], [1.0]

    def server_accountant(self, plan, num_clients, clients_per_round):
        return plan.federation_accountant(num_clients, clients_per_round)

    def epsilon(self, exp, train_sizes, noise_multiplier, rounds_per_client, coarse=False):
        fed = exp.federation
        return central_epsilon(noise_multiplier, fed.num_clients, fed.clients_per_round, max(rounds_per_client),
                               exp.privacy.delta, **({"orders": CENTRAL_COARSE_ORDERS} if coarse else {}))

    def releases_per_client(self, schedule, num_rounds):
        return [num_rounds] * len(schedule)  # the federation's figure: every round is one release

    def extra_warnings(self, exp):
        if exp.federation.clients_per_round == exp.federation.num_clients:
            return ["every client takes part in every round (m = N): client sampling gives no amplification"]
        return []


class ClientLocal(PrivacyMode):
    """Each client its own Gaussian mechanism on its clipped update; no amplification."""

    name = "client_local"
    adjacency = "replace one client (all of its data)"
    sampling = "none: each client's own release, no amplification by client sampling"
    mechanism = "update clipped to S and Gaussian noise z*S added by each client before upload; uniform mean"
    client_accountant = True
    combines_updates = True
    fused_refusal = ("privacy.mode 'client_local' keeps an accountant in each client and draws its noise per client "
                     "(Opacus per-sample gradients are not fused)")
    per_client_refusal = None

    def release(self, update, plan, noise_source, seed, server_round, partition_id):
        gen = noise_generator(noise_source, seed, "client-noise", server_round, partition_id)
        return add_local_noise(update, plan.max_grad_norm, plan.client_noise(partition_id), gen)

    def client_step(self, plan, partition_id, steps):
        return plan.client_noise(partition_id) / REPLACE_ONE_SENSITIVITY, 1.0, 1

    def client_history(self, exp, num_examples, noise_multiplier, rounds):
        return [(noise_multiplier / REPLACE_ONE_SENSITIVITY, 1.0, rounds)]

    def combine(self, updates, weights, plan, cohort_size, noise_source, seed, server_round):
        """(1/K) Σ_k Δ_k: the noise is in the updates; uniform weights, as DP-FedAvg."""
        return [uniform_mean(updates)], [1.0]

    def epsilon(self, exp, train_sizes, noise_multiplier, rounds_per_client, coarse=False):
        history = [(noise_multiplier / REPLACE_ONE_SENSITIVITY, 1.0, max(rounds_per_client))]
        return epsilon_of_history(history, exp.privacy.delta, "rdp" if coarse else exp.privacy.accountant,
                                  COARSE_ORDERS if coarse else None)


MODES: dict[str, PrivacyMode] = {m.name: m for m in (NoPrivacy(), SampleLevel(), ClientCentral(), ClientLocal())}
NONE = MODES[NoPrivacy.name]


def calibration_problem(mode: PrivacyMode, privacy: "PrivacyConfig") -> str | None:
    """What is wrong with ``privacy.calibration`` under ``mode``, or None."""
    if privacy.calibration == "worst_case":
        return None
    if mode.per_client_refusal is not None:
        return (f"privacy.calibration 'per_client' cannot apply to privacy.mode {mode.name!r}: "
                f"{mode.per_client_refusal}; use privacy.calibration = 'worst_case' (or privacy.mode 'sample' or "
                "'client_local')")
    if privacy.target_epsilon is None:
        return ("privacy.calibration 'per_client' calibrates each client's noise multiplier to "
                "privacy.target_epsilon; with privacy.noise_multiplier every client uses that one; set "
                "privacy.target_epsilon instead")
    return None


def configured_mode(privacy: "PrivacyConfig") -> PrivacyMode:
    """The mode ``privacy.mode`` names, whether or not it is in effect (for checking its settings)."""
    return MODES[privacy.mode]


def privacy_mode(privacy: "PrivacyConfig") -> PrivacyMode:
    """The mode in effect: ``privacy.mode``'s, or ``none`` when DP is off (``target_epsilon = inf``)."""
    return configured_mode(privacy) if privacy.enabled else NONE
