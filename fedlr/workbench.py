"""The model and data one process needs for an experiment, built once and reused.

A simulation worker (Ray actor) serves many virtual clients: it loads the base model and the
corpus once per experiment and, per client call, swaps in that client's state (milliseconds)
instead of rebuilding the model (seconds) — design principle 2. A workbench serves one run: a run
that finds one another run used (same experiment, the runs of a sweep on long-lived workers)
builds its own, so it starts from the experiment's initial adapters, not where the other run left
them.

Across experiments that follow each other in one process (the runs of a sweep) it keeps the split,
tokenized data (``kept``), keyed by what determines it, and — only where the environment variable
``KEEP_BASE_MODEL`` says so — the pristine base model, so a run that changes only the method, rank
or training settings builds nothing but its adapters. A kept base model costs its memory again
beside the adapted copy in every process (+0.5 GB for SmolLM2-135M), so ``fedlr sweep`` sets the
variable only where two consecutive runs share a base model (``fedlr.run.shared_engine``); a lone
run never keeps one.
"""

from __future__ import annotations

import copy
import json
import os
import time
from functools import cached_property
from typing import Any, Callable

import torch

from fedlr.config import Experiment
from fedlr.data import ClientFile, FederatedData
from fedlr.fused import fused_local_train
from fedlr.models import choose_device, load_base_model, load_tokenizer
from fedlr.models.adapted import AdaptedModel, adapter_paths, build_adapted_model
from fedlr.models.frozen_prefix import attach_prefix_cache
from fedlr.adapters.naming import BASE_KEY, key
from fedlr.privacy.accountant import StepAccountant
from fedlr.privacy.dp_sgd import DPSGDSettings, dp_local_train
from fedlr.privacy import modes
from fedlr.privacy.noise import noise_generator
from fedlr.privacy.planning import PrivacyPlan, plan_privacy
from fedlr.seeding import derive_seed, torch_generator
from fedlr.train import EvalResult, local_train, summed_weight_gradients

State = dict[str, torch.Tensor]


class Workbench:
    def __init__(self, exp: Experiment, own: ClientFile | None = None):
        """``own``: a deployed client's own file (client-owned data, ``fedlr.data.ClientFile``)."""
        started = time.perf_counter()
        self.exp = exp
        self.run_id: int | None = None  # the Flower run using it (``get_workbench``)
        self.device = choose_device(exp.federation.num_gpus)
        self.data = kept("data", data_key(exp, own), lambda: FederatedData(exp, load_tokenizer(exp.model), own))
        self.adapted: AdaptedModel = build_adapted_model(exp, self.data.num_labels,
                                                         base=base_model(exp, self.data.num_labels))
        self.adapted.model.to(self.device)
        self.prefix_cache = attach_prefix_cache(exp, self.adapted)  # None where refused (fedlr plan says why)
        self.build_seconds = time.perf_counter() - started

    def load(self, *states: State) -> None:
        for state in states:
            self.adapted.load({k: v.to(self.device) for k, v in state.items()})

    @property
    def privacy_mode(self) -> modes.PrivacyMode:
        """The privacy mode that applies to this run (``fedlr.privacy.modes.privacy_mode``)."""
        return modes.privacy_mode(self.exp.privacy)

    @cached_property
    def privacy(self) -> PrivacyPlan | None:
        """σ and the ε plan, from the config and the clients' sizes (same in every process). Under
        client-owned data no process holds those sizes: the server plans from the sizes the clients
        report at enrollment and sends each client its part (``PrivacyPlan.seen_by``), which the
        ClientApp assigns here before the client trains."""
        if not self.exp.privacy.enabled:
            return None
        if self.exp.data.client_files:
            raise RuntimeError("data.dataset = 'client-files': the privacy plan comes from the clients' sizes "
                               "reported at enrollment, not from this process's data")
        sizes = [len(self.data.client_rows(pid)[0]) for pid in range(self.exp.federation.num_clients)]
        return plan_privacy(self.exp, sizes)

    def client_round(self, partition_id: int, server_round: int, global_state: State, once_state: State,
                     accountant: StepAccountant | None = None) -> tuple[State, dict[str, float]]:
        """One client's round: evaluate the received model on local val data (if asked), train
        (DP-SGD where the mode asks, ``PrivacyMode.dp_sgd``), return the update Δ = θ_trained −
        θ_received of every trained tensor — as the mode releases it (``PrivacyMode.release``) — and
        metrics. Where the mode keeps a client accountant (``sample``, ``client_local``) the round's
        privacy cost is composed into ``accountant`` (the client's own, persisted by the caller) and
        its cumulative ε reported."""
        exp = self.exp
        data = self.train_data(partition_id)
        global_state = self.receive(exp.method.client_rank(partition_id), server_round, global_state, once_state)
        metrics = self.client_val_metrics(partition_id, server_round)
        torch.manual_seed(derive_seed(exp.seed, "dropout", server_round, partition_id))
        gen = noise_generator(exp.privacy.noise_source, exp.seed, "batches", server_round, partition_id)
        params = self.adapted.trainable_parameters()
        named = self.adapted.parameters_by_name()
        head = [named[k] for k in self.adapted.head_keys]
        plan, mode = self.privacy, self.privacy_mode
        if mode.client_accountant:
            if accountant is None:
                raise ValueError(f"privacy.mode {mode.name!r} needs the client's accountant")
            if (refusal := plan.round_refusal(partition_id, accountant.steps)) is not None:
                raise ValueError(refusal)
        if mode.dp_sgd:
            dp = DPSGDSettings(plan.client_noise(partition_id), plan.max_grad_norm, plan.sample_rates[partition_id],
                               exp.privacy.grad_sample_mode, per_tensor_clipping=self.adapted.spec.per_tensor_clipping,
                               secure_mode=exp.privacy.noise_source == "secure")
            noise = noise_generator(exp.privacy.noise_source, exp.seed, "dp-noise", server_round, partition_id,
                                    device=self.device)
            res = dp_local_train(self.adapted.model, params, head, data, exp.train, dp, gen, noise, self.device)
            metrics.update({"dp_empty_batches": res.empty_batches, "dp_mean_batch_size": res.mean_batch_size})
        else:
            res = local_train(self.adapted.model, params, head, data, exp.train, gen, self.device)
        update = self.released(self.adapted.trained_state(), global_state, partition_id, server_round)
        if mode.client_accountant:
            accountant.step(*mode.client_step(plan, partition_id, res.steps))
            metrics["epsilon"] = accountant.epsilon(plan.delta)
        metrics.update({"train_loss": res.loss, "steps": res.steps, "num-examples": res.num_examples})
        return update, metrics

    def fused_round(self, partition_ids: list[int], server_round: int, global_state: State,
                    once_state: State) -> dict[int, tuple[State, dict[str, float]]]:
        """``client_round`` for several clients in one pass over the frozen base
        (``federation.fused_clients``; ``fedlr.fused.fused_local_train``): each client evaluates
        the received model on its own validation data, then the clients whose batches have the
        same size train together, each from the received model with its own batch stream (the
        draws ``client_round`` makes). Dropout masks come from one stream per group, seeded as the
        group's first client's. Per-client DP and compression are refused by the config
        (``fedlr.config.fused_refusal``); under ``client_central`` each update is clipped."""
        exp = self.exp
        datasets = {pid: self.train_data(pid) for pid in partition_ids}
        global_state = self.receive(exp.method.rank, server_round, global_state, once_state)
        start = self.adapted.trained_state()
        metrics = {pid: self.client_val_metrics(pid, server_round) for pid in partition_ids}
        groups: dict[int, list[int]] = {}
        for pid in partition_ids:
            groups.setdefault(min(exp.train.batch_size, len(datasets[pid])), []).append(pid)
        out: dict[int, tuple[State, dict[str, float]]] = {}
        for group in groups.values():
            torch.manual_seed(derive_seed(exp.seed, "dropout", server_round, group[0]))
            gens = [torch_generator(exp.seed, "batches", server_round, pid) for pid in group]
            trained, results = fused_local_train(self.adapted, [start] * len(group), [datasets[p] for p in group],
                                                 exp.train, gens, self.device)
            for pid, state, res in zip(group, trained, results):
                metrics[pid].update({"train_loss": res.loss, "steps": res.steps, "num-examples": res.num_examples})
                out[pid] = (self.released(state, global_state, pid, server_round), metrics[pid])
        return {pid: out[pid] for pid in partition_ids}

    def train_data(self, partition_id: int):
        data = self.data.client_train(partition_id)
        if len(data) == 0:
            raise ValueError(f"client {partition_id} has no training examples and cannot take part in training "
                             "(its update would be empty; under DP-SGD its sampling rate batch_size/n is undefined)")
        return data

    def receive(self, rank: int, server_round: int, global_state: State, once_state: State) -> State:
        """Load the received model at a client's ``rank`` (``method.client_ranks``), with the
        tensors a client draws itself (FLoRA's fresh adapters); returns the state loaded."""
        self.adapted.use_rank(rank, self.exp.seed)
        global_state = {**global_state, **self.adapted.fresh_state(self.exp.seed, server_round)}
        self.load(once_state, global_state)
        return global_state

    def client_val_metrics(self, partition_id: int, server_round: int) -> dict[str, float]:
        """The loaded model on the client's validation split (``evaluation.client_side``, in the
        rounds ``evaluation.every`` schedules)."""
        evaluation = self.exp.evaluation
        if not evaluation.client_side or not evaluation.due(server_round, self.exp.federation.num_rounds):
            return {}
        ev = self.adapted.task.evaluate(self.adapted.model, self.data.client_val(partition_id),
                                        self.exp.evaluation.batch_size, self.device)
        return {"val_loss": ev.loss, "val_accuracy": ev.accuracy, "val_examples": ev.num_examples} if ev.num_examples else {}

    def released(self, trained: State, received: State, partition_id: int, server_round: int) -> State:
        """The update a client sends, Δ = θ_trained − θ_received of every trained tensor, as the
        privacy mode releases it (``PrivacyMode.release``: clipped to S under ``client_central``,
        clipped and noised under ``client_local``)."""
        update = {k: trained[k] - received[k] for k in self.adapted.trained_keys}
        return self.privacy_mode.release(update, self.privacy, self.exp.privacy.noise_source, self.exp.seed,
                                         server_round, partition_id)

    def init_gradients(self, partition_id: int, num_examples: int) -> tuple[State, int]:
        """A federated init round (Fed-SB's): summed gradients of the target base weights on this
        client's first ``num_examples`` training examples, with the adapters contributing nothing
        (every trained adapter tensor zeroed: R = 0)."""
        params = self.adapted.parameters_by_name()
        head = set(self.adapted.head_keys)
        with torch.no_grad():
            for k in self.adapted.trained_keys:
                if k not in head:
                    params[k].zero_()
        data = self.data.client_train(partition_id)
        n = min(num_examples, len(data))
        subset = data.__class__(data.input_ids[:n], data.labels[:n], data.pad_id)
        weights = {key(p, BASE_KEY): params[key(p, BASE_KEY)] for p in adapter_paths(self.adapted)}
        grads = summed_weight_gradients(self.adapted.model, weights, subset, self.exp.train.batch_size, self.device)
        return grads, n

    def central_eval(self, global_state: State, once_state: State) -> EvalResult:
        self.adapted.use_rank(self.exp.method.rank, self.exp.seed)  # the server's rank, after any client's
        self.load(once_state, global_state)
        return self.adapted.task.evaluate(self.adapted.model, self.data.test(), self.exp.evaluation.batch_size,
                                          self.device)


_WORKBENCHES: dict[tuple[str, ClientFile | None], Workbench] = {}
_KEPT: dict[str, tuple[str, Any]] = {}  # kind -> (key, value): what experiments of one process share
KEEP_BASE_MODEL = "FEDLR_KEEP_BASE_MODEL"  # "1": this process keeps the pristine base model between experiments


def kept(kind: str, key: str, build: Callable[[], Any]) -> Any:
    """This process's one ``kind`` of shared, read-only object, built for ``key`` (what determines
    it): kept while experiments with the same key follow each other (the runs of a sweep on one
    worker), built anew when the key changes. Callers never change the object; the base model is
    copied before adapters go in."""
    if kind not in _KEPT or _KEPT[kind][0] != key:
        _KEPT.pop(kind, None)  # free the old one before building its successor
        _KEPT[kind] = (key, build())
    return _KEPT[kind][1]


def base_model_source(exp: Experiment) -> str:
    """What determines an experiment's base model besides its number of labels (which its data
    determines): experiments with one source and one number of labels share a base model."""
    return json.dumps([exp.model.name_or_path, exp.model.task, exp.seed])


def base_model(exp: Experiment, num_labels: int) -> torch.nn.Module:
    """The base model to put ``exp``'s adapters in: a copy of this process's kept one where it keeps
    one (``KEEP_BASE_MODEL`` = "1"), else loaded for this experiment alone and nothing kept."""
    build = lambda: load_base_model(exp.model, num_labels, exp.seed)  # noqa: E731
    if os.environ.get(KEEP_BASE_MODEL) != "1":
        _KEPT.pop("base model", None)
        return build()
    return copy.deepcopy(kept("base model", json.dumps([base_model_source(exp), num_labels]), build))


def data_key(exp: Experiment, own: ClientFile | None) -> str:
    """Everything ``FederatedData`` reads from an experiment: the data section, the seed (test split,
    partitions, local splits), the number of clients, the model's task, tokenizer and length; and a
    deployed client's own file. Experiments with one key share one ``FederatedData``."""
    return json.dumps([exp.data.model_dump(mode="json"), exp.seed, exp.federation.num_clients, exp.model.task,
                       exp.model.name_or_path, exp.model.max_length, repr(own)])


def get_workbench(exp: Experiment, own: ClientFile | None = None, run_id: int | None = None) -> Workbench:
    """The process-wide workbench for ``exp`` (and a deployed client's own file; one kept at a time).
    ``run_id``: the Flower run asking (the ServerApp's, a client's ``Context.run_id``); a workbench
    another run used is built anew (from the kept parts), so no run inherits the adapters, rank or
    privacy plan another run of the same experiment left. Callers inside a run may leave it out."""
    key = (exp.fingerprint(), own)
    bench = _WORKBENCHES.get(key)
    if bench is None or (run_id is not None and bench.run_id not in (None, run_id)):
        _WORKBENCHES.clear()  # free the old one before building its successor
        bench = _WORKBENCHES[key] = Workbench(exp, own)
    if run_id is not None:
        bench.run_id = run_id
    return bench
