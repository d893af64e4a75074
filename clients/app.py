"""The ClientApp: one handler per message type, each a thin shell over ``fedlr.workbench``.

Protocol (all message contents are RecordDicts):
- ``query``: {"config": {"experiment": JSON}} → the client stores the experiment in its
  persistent state and replies its partition id (and, on its own data under DP, its number of
  training examples n_k). Sent once to every node before round 1.
- ``train.sb_init``: Fed-SB's federated init; reply {"grads": summed target-weight gradients}.
- ``train``: {"arrays": global trained tensors, "once"?: frozen tensors sent on first
  participation, "config": {server-round, "privacy-plan"?: the client's part of the privacy plan,
  under client-owned data}} → reply {"arrays": update Δ, "metrics": {...}} (empty
  under ``federation.weighting = "uniform"``: nothing but the update).
- ``train.fused`` (simulation, ``federation.fused_clients``): as ``train`` for the group of
  partition ids in its config → reply {"arrays-<pid>": Δ, "metrics-<pid>": {...}} per client.

Persistent per-client state (``context.state``): the experiment, the once-broadcast tensors, and
where the privacy mode keeps a client accountant ('sample', 'client_local') its history
(``fedlr.privacy.accountant.StepAccountant.state_dict``), so the ε a client reports is
cumulative over every round it took part in and continues across a resume.

Resume: with a state directory (node config ``state-dir``, or the one a simulation's server names
in the query) a client snapshots that state after every round it trains
(``fedlr.run.client_snapshots``); a query carrying ``resume-round`` = k restores its snapshot of
round k. Injected faults (``[faults]``, ``fedlr.faults``) act here, before any work.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from fedlr.config import experiment_from_json
from fedlr.data import FederatedData
from fedlr.deploy.node_config import client_file, data_mismatch, experiment_mismatch
from fedlr.faults import fault_for, garbage, inject
from fedlr.privacy.accountant import StepAccountant
from fedlr.privacy.planning import PrivacyPlan
from fedlr.compression.base import canonical_keys
from fedlr.compression.pipeline import apply_broadcast, cached_reference, encode_update, remember_broadcast
from fedlr.run import client_snapshots
from fedlr.run.simulation import QUIET_FLOWER_ENV
from fedlr.run.records import (BASE_ROUND_KEY, BROADCAST_KEY, EXPERIMENT_KEY, FUSED_KEY, KEEP_FROM_KEY, NOT_ENROLLED,
                               PARTITION_KEY, PRIVACY_PLAN_KEY, RESUME_ROUND_KEY, STATE_DIR_KEY, TRAIN_EXAMPLES_KEY,
                               from_record, fused_key, payload_record, record_payload, to_record)
from fedlr.seeding import torch_generator
from fedlr.workbench import get_workbench

app = ClientApp()
log = logging.getLogger("fedlr")
if os.environ.get(QUIET_FLOWER_ENV):
    # a simulated client's Ray worker (it inherits the driver's environment): Flower's own warnings
    # there, such as each actor's "Manually terminating" at shutdown, would print beside fedlr's
    FLOWER_LOGGER.setLevel(os.environ[QUIET_FLOWER_ENV])

STATE_CONFIG = "fedlr"
STATE_ONCE = "fedlr.once"
STATE_ACCOUNTANT = "fedlr.accountant"
STATE_COMPRESSION = "fedlr.compression"
ASSIGNMENT_KEY = "assignment"


def _partition_id(context: Context) -> int:
    if PARTITION_KEY not in context.node_config:
        raise KeyError("node config has no 'partition-id' (start the SuperNode with --node-config 'partition-id=N')")
    return int(context.node_config[PARTITION_KEY])


def _experiment(context: Context):
    if STATE_CONFIG not in context.state:
        raise RuntimeError(f"{NOT_ENROLLED} (query message missing); the server enrolls it again before the next "
                           "round")
    exp = experiment_from_json(context.state[STATE_CONFIG][EXPERIMENT_KEY])
    torch.set_num_threads(exp.federation.num_cpus)
    return exp


def _workbench(exp, context: Context):
    """This process's workbench for this run: on the client's own file where its node config names one."""
    return get_workbench(exp, client_file(context.node_config), context.run_id)


def _state_dir(context: Context) -> str | None:
    return context.state[STATE_CONFIG].get(STATE_DIR_KEY) if STATE_CONFIG in context.state else None


@app.query()
def enroll(msg: Message, context: Context) -> Message:
    query = msg.content["config"]
    if (mismatch := experiment_mismatch(context.node_config, query[EXPERIMENT_KEY])) is not None:
        log.warning("partition %s: %s", _partition_id(context), mismatch)
    mine = {EXPERIMENT_KEY: query[EXPERIMENT_KEY]}
    state_dir = context.node_config.get(STATE_DIR_KEY, query.get(STATE_DIR_KEY))
    if state_dir:
        mine[STATE_DIR_KEY] = str(state_dir)
    exp = experiment_from_json(query[EXPERIMENT_KEY])
    if (problem := data_mismatch(context.node_config, exp)) is not None:
        raise RuntimeError(f"partition {_partition_id(context)}: {problem}")
    reply = {PARTITION_KEY: _partition_id(context)}
    if (own := client_file(context.node_config)) is not None:
        data = FederatedData(exp, own=own)  # a missing column or a label data.labels does not name fails here
        if exp.privacy.enabled:  # the server plans σ and ε from every client's n_k (docs/deployment.md)
            reply[TRAIN_EXAMPLES_KEY] = len(data.client_rows(_partition_id(context))[0])
    context.state[STATE_CONFIG] = ConfigRecord(mine)
    resume_round = int(query.get(RESUME_ROUND_KEY, -1))
    if resume_round >= 0 and state_dir:
        client_snapshots.restore(state_dir, _partition_id(context), resume_round, context.state, STATE_ACCOUNTANT,
                                 keep_newest_accountant=exp.privacy.noise_source == "secure")
    return Message(RecordDict({"metrics": MetricRecord(reply)}), reply_to=msg)


@app.train("sb_init")
def sb_init(msg: Message, context: Context) -> Message:
    exp = _experiment(context)
    grads, n = _workbench(exp, context).init_gradients(_partition_id(context), exp.method.init_examples)
    content = RecordDict({"grads": to_record(grads), "metrics": MetricRecord(released_metrics(exp, {"num-examples": n}))})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    exp = _experiment(context)
    server_round = int(msg.content["config"]["server-round"])
    global_state = received_model(exp, msg, context, server_round)
    if "once" in msg.content.array_records:
        context.state[STATE_ONCE] = msg.content["once"]
    fault = fault_for(exp, server_round, _partition_id(context))
    if fault == "garbage":
        content = RecordDict({"arrays": to_record(garbage(global_state)), "metrics": MetricRecord({"num-examples": 1})})
        return Message(content, reply_to=msg)
    if fault is not None:
        inject(fault, exp, server_round, _partition_id(context))
    once = from_record(context.state[STATE_ONCE]) if STATE_ONCE in context.state else {}
    bench = _workbench(exp, context)
    if PRIVACY_PLAN_KEY in msg.content["config"]:  # client-owned data: the plan the server made from every n_k
        bench.privacy = PrivacyPlan(**json.loads(msg.content["config"][PRIVACY_PLAN_KEY]))
    accountant = None
    if bench.privacy_mode.client_accountant:
        accountant = load_accountant(context, bench.privacy.accountant)
    update, metrics = bench.client_round(_partition_id(context), server_round, global_state, once, accountant)
    if accountant is not None:
        save_accountant(context, accountant)  # only once the round succeeded: an unsent update spends nothing
    arrays = compress(exp, update, msg, context, server_round, bench)
    if (state_dir := _state_dir(context)) is not None:
        keep_from = msg.content["config"].get(KEEP_FROM_KEY)
        client_snapshots.save(state_dir, _partition_id(context), server_round, context.state, skip=(STATE_CONFIG,),
                              keep_from=None if keep_from is None else int(keep_from))
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(released_metrics(exp, metrics))})
    return Message(content, reply_to=msg)


def released_metrics(exp, metrics: dict) -> dict:
    """What a reply says beside the update: its metrics, or nothing under ``federation.weighting =
    "uniform"`` — no example count n_k, loss or accuracy, which depend on the client's data and no
    DP mechanism covers (the server takes each client's ε from the privacy plan; docs/privacy.md)."""
    return metrics if exp.federation.weighting == "examples" else {}


@app.train("fused")
def train_fused(msg: Message, context: Context) -> Message:
    """Simulation only (``federation.fused_clients``): the round of every client in the message's
    group, trained in one pass over the shared frozen base (``Workbench.fused_round``); each
    client's update and metrics under its own keys. The experiment forbids per-client state here
    (``fedlr.config.fused_refusal``), so nothing is kept in this node's context."""
    exp = _experiment(context)
    config = msg.content["config"]
    once = from_record(msg.content["once"]) if "once" in msg.content.array_records else {}
    results = _workbench(exp, context).fused_round([int(p) for p in config[FUSED_KEY]], int(config["server-round"]),
                                             from_record(msg.content["arrays"]), once)
    content = RecordDict()
    for pid, (update, metrics) in results.items():
        content[fused_key("arrays", pid)] = to_record(update)
        content[fused_key("metrics", pid)] = MetricRecord(released_metrics(exp, metrics))
    return Message(content, reply_to=msg)


def received_model(exp, msg: Message, context: Context, server_round: int) -> dict:
    """The model this round trains from: the dense tensors, or (``compression.downlink``) B_t
    rebuilt from this client's cached B_{t−1} and the compressed delta — bit for bit the server's
    B_t. Under the downlink B_t is cached in the compression state for the next round's delta."""
    cfg = exp.compression
    state = from_record(context.state[STATE_COMPRESSION]) if STATE_COMPRESSION in context.state else {}
    if BROADCAST_KEY in msg.content.array_records:
        base_round = int(msg.content["config"][BASE_ROUND_KEY])
        reference = cached_reference(state, base_round)
        if reference is None:
            raise RuntimeError(f"the server sent a delta against round {base_round}'s broadcast, which this client "
                               "does not hold")
        model = apply_broadcast(record_payload(msg.content[BROADCAST_KEY]), cfg, reference, server_round=server_round)
    else:
        model = from_record(msg.content["arrays"])
    if cfg.downlink:
        context.state[STATE_COMPRESSION] = to_record(remember_broadcast(state, model, server_round))
    return model


def compress(exp, update, msg: Message, context: Context, server_round: int, bench):
    """The update as it travels: plain fp32, or encoded by ``exp.compression`` with this client's
    error-feedback memory and warm start (kept in its persistent state). Compression comes after
    clipping and local noise (a post-processing of the DP release); under central noise the
    encoded payload itself is clipped to the bound the server's noise is calibrated for."""
    cfg = exp.compression
    if not cfg.active:
        return to_record(update)
    state = from_record(context.state[STATE_COMPRESSION]) if STATE_COMPRESSION in context.state else {}
    assignment = None
    if ASSIGNMENT_KEY in msg.content.array_records:
        values = msg.content[ASSIGNMENT_KEY][ASSIGNMENT_KEY].numpy().tolist()
        assignment = dict(zip(canonical_keys(update), values))
    clip = bench.privacy_mode.update_norm_bound(bench.privacy)
    gen = torch_generator(exp.seed, "compress", server_round, _partition_id(context))
    payload, state = encode_update(update, cfg, state, gen, server_round=server_round, assignment=assignment,
                                   clip_norm=clip)
    context.state[STATE_COMPRESSION] = to_record(state)
    return payload_record(payload)


def load_accountant(context: Context, kind: str) -> StepAccountant:
    """This client's accountant from its persistent state (a fresh one before its first round)."""
    if STATE_ACCOUNTANT not in context.state:
        return StepAccountant(kind)
    acc = StepAccountant.from_state(dict(context.state[STATE_ACCOUNTANT]))
    if acc.kind != kind:
        raise RuntimeError(f"this client's privacy history was kept by the {acc.kind!r} accountant, "
                           f"the experiment asks for {kind!r}")
    return acc


def save_accountant(context: Context, accountant: StepAccountant) -> None:
    context.state[STATE_ACCOUNTANT] = ConfigRecord(accountant.state_dict())

