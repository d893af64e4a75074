"""The model and data one process needs for an experiment, built once and reused.

A simulation worker (Ray actor) serves many virtual clients: it loads the base model and the
corpus once per experiment and, per client call, swaps in that client's state (milliseconds)
instead of rebuilding the model (seconds) — design principle 2.
"""

from __future__ import annotations

import time
from functools import cached_property

import torch

from fedlr.config import Experiment
from fedlr.data import FederatedData
from fedlr.models import choose_device, load_tokenizer
from fedlr.models.adapted import AdaptedModel, adapter_paths, build_adapted_model
from fedlr.privacy.accountant import StepAccountant
from fedlr.privacy.client_level import add_local_noise, clip_update
from fedlr.privacy.dp_sgd import DPSGDSettings, dp_local_train
from fedlr.privacy.noise import noise_generator
from fedlr.privacy.planning import PrivacyPlan, plan_privacy
from fedlr.seeding import derive_seed, torch_generator
from fedlr.train import EvalResult, evaluate, local_train, summed_weight_gradients

State = dict[str, torch.Tensor]


class Workbench:
    def __init__(self, exp: Experiment):
        started = time.perf_counter()
        self.exp = exp
        self.device = choose_device(exp.federation.num_gpus)
        self.data = FederatedData(exp, load_tokenizer(exp.model))
        self.adapted: AdaptedModel = build_adapted_model(exp, self.data.num_labels)
        self.adapted.model.to(self.device)
        self.build_seconds = time.perf_counter() - started

    def load(self, *states: State) -> None:
        for state in states:
            self.adapted.load({k: v.to(self.device) for k, v in state.items()})

    @cached_property
    def privacy(self) -> PrivacyPlan | None:
        """σ and the ε plan, from the config and the clients' sizes (same in every process)."""
        sizes = [len(self.data.client_rows(pid)[0]) for pid in range(self.exp.federation.num_clients)]
        return plan_privacy(self.exp, sizes)

    def client_round(self, partition_id: int, server_round: int, global_state: State, once_state: State,
                     accountant: StepAccountant | None = None) -> tuple[State, dict[str, float]]:
        """One client's round: evaluate the received model on local val data (if asked), train
        (DP-SGD under ``privacy.mode = 'sample'``), return the update Δ = θ_trained − θ_received of
        every trained tensor — clipped (and noised, ``client_local``) under client-level DP — and
        metrics. Under ``sample`` and ``client_local`` the round's privacy cost is composed into
        ``accountant`` (the client's own, persisted by the caller) and its cumulative ε reported."""
        exp = self.exp
        data = self.data.client_train(partition_id)
        if len(data) == 0:
            raise ValueError(f"client {partition_id} has no training examples and cannot take part in training "
                             "(its update would be empty; under DP-SGD its sampling rate batch_size/n is undefined)")
        # this client's own rank (method.client_ranks) and the tensors it draws itself (FLoRA's fresh adapters)
        self.adapted.use_rank(exp.method.client_rank(partition_id), exp.seed)
        global_state = {**global_state, **self.adapted.fresh_state(exp.seed, server_round)}
        self.load(once_state, global_state)
        metrics: dict[str, float] = {}
        if exp.evaluation.client_side:
            ev = evaluate(self.adapted.model, self.data.client_val(partition_id), exp.evaluation.batch_size, self.device)
            if ev.num_examples:
                metrics.update({"val_loss": ev.loss, "val_accuracy": ev.accuracy, "val_examples": ev.num_examples})
        torch.manual_seed(derive_seed(exp.seed, "dropout", server_round, partition_id))
        gen = torch_generator(exp.seed, "batches", server_round, partition_id)
        params = self.adapted.trainable_parameters()
        named = self.adapted.parameters_by_name()
        head = [named[k] for k in self.adapted.head_keys]
        plan = self.privacy
        if plan is not None and plan.mode == "sample":
            dp = DPSGDSettings(plan.noise_multiplier, plan.max_grad_norm, plan.sample_rates[partition_id],
                               exp.privacy.grad_sample_mode, per_tensor_clipping=exp.method.name == "dp_lora",
                               secure_mode=exp.privacy.noise_source == "secure")
            noise = noise_generator(exp.privacy.noise_source, exp.seed, "dp-noise", server_round, partition_id,
                                    device=self.device)
            res = dp_local_train(self.adapted.model, params, head, data, exp.train, dp, gen, noise, self.device)
            metrics.update({"dp_empty_batches": res.empty_batches, "dp_mean_batch_size": res.mean_batch_size})
        else:
            res = local_train(self.adapted.model, params, head, data, exp.train, gen, self.device)
        trained = self.adapted.trained_state()
        update = {k: trained[k] - global_state[k] for k in self.adapted.trained_keys}
        if plan is not None and plan.mode == "client_central":
            update, _ = clip_update(update, plan.max_grad_norm)
        elif plan is not None and plan.mode == "client_local":
            noise_gen = noise_generator(exp.privacy.noise_source, exp.seed, "client-noise", server_round, partition_id)
            update = add_local_noise(update, plan.max_grad_norm, plan.noise_multiplier, noise_gen)
        if plan is not None and plan.mode in ("sample", "client_local"):
            if accountant is None:
                raise ValueError(f"privacy.mode {plan.mode!r} needs the client's accountant")
            accountant.step(*plan.client_step(partition_id, res.steps))
            metrics["epsilon"] = accountant.epsilon(plan.delta)
        metrics.update({"train_loss": res.loss, "steps": res.steps, "num-examples": res.num_examples})
        return update, metrics

    def init_gradients(self, partition_id: int, num_examples: int) -> tuple[State, int]:
        """Fed-SB init: summed gradients of the target base weights on this client's first
        ``num_examples`` training examples, with the adapters contributing nothing (R = 0)."""
        layers = {p: self.adapted.model.get_submodule(p) for p in adapter_paths(self.adapted)}
        with torch.no_grad():
            for layer in layers.values():
                layer.lora_R.weight.zero_()
        data = self.data.client_train(partition_id)
        n = min(num_examples, len(data))
        subset = data.__class__(data.input_ids[:n], data.labels[:n], data.pad_id)
        weights = {f"{p}.base.weight": layer.base.weight for p, layer in layers.items()}
        grads = summed_weight_gradients(self.adapted.model, weights, subset, self.exp.train.batch_size, self.device)
        return grads, n

    def central_eval(self, global_state: State, once_state: State) -> EvalResult:
        self.adapted.use_rank(self.exp.method.rank, self.exp.seed)  # the server's rank, after any client's
        self.load(once_state, global_state)
        return evaluate(self.adapted.model, self.data.test(), self.exp.evaluation.batch_size, self.device)


_WORKBENCHES: dict[str, Workbench] = {}


def get_workbench(exp: Experiment) -> Workbench:
    """The process-wide workbench for ``exp`` (one experiment kept at a time)."""
    key = exp.fingerprint()
    if key not in _WORKBENCHES:
        _WORKBENCHES.clear()
        _WORKBENCHES[key] = Workbench(exp)
    return _WORKBENCHES[key]
