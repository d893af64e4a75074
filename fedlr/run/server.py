"""The ServerApp: builds the server's workbench (central evaluation and the initial state), the
method's strategy, runs the rounds, writes the ledger, a checkpoint after every round, the
summary and the exported model. With ``resume`` it continues from the newest valid checkpoint."""

from __future__ import annotations

import threading

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlr import checkpoint
from fedlr.adapters.export import export_model
from fedlr.config import Experiment
from fedlr.methods import get_method
from fedlr.metrics import EVAL_METRICS
from fedlr.plan import per_client_entries
from fedlr.privacy.modes import configured_mode, privacy_mode
from fedlr.privacy.disclosure import released_beside_epsilon
from fedlr.results import RunDir
from fedlr.results.console import Console
from fedlr.results.ledger import LedgerRow
from fedlr.run.records import from_record
from fedlr.strategies import ServerState, strategy_class
from fedlr.workbench import get_workbench


def run_server(grid: Grid, exp: Experiment, run_dir: RunDir, console: Console, resume: bool = False,
               client_state_dir: str | None = None, run_id: int | None = None) -> dict:
    """``client_state_dir``: where clients snapshot their state (a simulation's run directory;
    deployed SuperNodes name their own with ``--node-config state-dir=...``). ``run_id``: the Flower
    run's, so that a workbench another run of this experiment used is not reused (``get_workbench``)."""
    bench = get_workbench(exp, run_id=run_id)
    adapted = bench.adapted
    rows: list[LedgerRow] = []
    saved = checkpoint.latest(run_dir.checkpoint_dir) if resume else None
    if resume and saved is None:
        raise RuntimeError(f"{run_dir.checkpoint_dir}: no valid checkpoint to resume from")

    def on_round(row: LedgerRow) -> None:
        rows.append(row)
        run_dir.append(row)
        console.round(row)

    def save_checkpoint(server_round: int, state: dict) -> None:
        checkpoint.save(run_dir.checkpoint_dir, server_round, state, keep=exp.output.keep_checkpoints)

    resumed = ServerState.from_state(saved[1], exp.fingerprint()) if saved is not None else None
    strategy = strategy_class(adapted.spec).from_experiment(
        exp, on_round=on_round, checkpoint=save_checkpoint if exp.output.checkpoint else None,
        client_state_dir=client_state_dir, resume=resumed,
    )
    console.start(exp)
    if saved is not None:
        resumed_round = saved[0]
        rows.extend(run_dir.truncate_ledger(resumed_round))
        checkpoint.discard_after(run_dir.checkpoint_dir, resumed_round)
        console.print(f"fedlr: resuming {run_dir.path} after round {resumed_round} of {exp.federation.num_rounds}")
    console.header()
    result = strategy.start(grid, strategy.initial_arrays(), exp.federation.num_rounds,
                            evaluate_fn=strategy.central_evaluation if exp.evaluation.central else None)
    final_state = from_record(result.arrays)
    bench.load(final_state)
    aggregated = sum(1 for r in rows if r.round > 0 and r.aggregated)
    if exp.output.export_peft and aggregated:  # an untrained model is no result
        export_model(bench, run_dir.model_dir)
    adapted.task.write_samples(bench, run_dir.path)  # a language model's answers to a few held-out prompts
    accs = [r.eval_accuracy for r in rows if r.eval_accuracy is not None]
    losses = [r.eval_loss for r in rows if r.eval_loss is not None]
    last = rows[-1]
    summary = {
        "method": exp.method.name, "rank": exp.method.rank, "num_rounds": exp.federation.num_rounds,
        "num_clients": exp.federation.num_clients, "clients_per_round": exp.federation.clients_per_round,
        "final_accuracy": accs[-1] if accs else None, "best_accuracy": max(accs) if accs else None,
        **adapted.task.summary(bench, losses[-1] if losses else None), "test_examples": len(bench.data.central_test_rows),
        **final_metrics(rows),
        "uplink_bytes": last.cumulative_uplink_bytes, "downlink_bytes": last.cumulative_downlink_bytes,
        "total_bytes": last.cumulative_bytes,
        "trained_params": sum(v.numel() for k, v in final_state.items() if k in adapted.trained_keys),
        "failed_client_rounds": sum(r.clients_failed for r in rows),
        "rejected_updates": sum(r.clients_rejected for r in rows),
        "wall_time_s": last.wall_time_s, "run_dir": str(run_dir.path),  # the ledger's clock, over every session
        **privacy_summary(exp, strategy.privacy, last), "rounds_aggregated": aggregated,
    }
    if not aggregated:
        summary["error"] = (f"no round aggregated: in all {exp.federation.num_rounds} rounds fewer than "
                            f"federation.min_replies = {exp.federation.min_replies} valid updates arrived (see the "
                            "ledger's clients_failed and clients_rejected); the model was not trained and not exported")
    run_dir.write_summary(summary)
    console.summary(summary)
    return summary


def final_metrics(rows: list[LedgerRow]) -> dict:
    """The summary's ``final_<metric>`` of the last evaluated round; none without a central
    evaluation that measures them (a classification task's, ``fedlr.metrics``)."""
    evaluated = [r for r in rows if r.eval_class_support is not None]
    return {f"final_{name}": getattr(evaluated[-1], f"eval_{name}") for name in EVAL_METRICS} if evaluated else {}


def privacy_summary(exp: Experiment, plan, last_row: LedgerRow) -> dict:
    """The summary's privacy fields: ε (cumulative, from the last ledger row), δ, the accountant,
    the adjacency and sampling the ε assumes, σ, and which mechanisms ran (None without DP)."""
    if plan is None:
        off = (exp.privacy.mode if not configured_mode(exp.privacy).private
               else f"{exp.privacy.mode} at target_epsilon = inf: no clipping, no noise")
        method_mechanism = get_method(exp.method.name).privacy_mechanisms.get(privacy_mode(exp.privacy).name)
        mechanisms = [method_mechanism] if method_mechanism is not None else []
        return {"privacy_mode": off, "epsilon": None, "delta": None, "accountant": None, "adjacency": None,
                "privacy_mechanisms": mechanisms}
    return {
        "privacy_mode": plan.mode, "epsilon": last_row.epsilon, "delta": plan.delta,
        "accountant": plan.accountant, "adjacency": plan.adjacency, "sampling": plan.sampling,
        "noise_multiplier": plan.noise_multiplier, "noise_calibrated": plan.noise_calibrated,
        "max_grad_norm": plan.max_grad_norm, "epsilon_planned": plan.epsilon,
        "client_epsilon": last_row.client_epsilon, "privacy_mechanisms": plan.mechanisms,
        "released_beside_epsilon": released_beside_epsilon(exp, plan),
        **per_client_entries(plan),
    }


def make_server_app(exp: Experiment, run_dir: RunDir, console: Console, result: dict, resume: bool = False,
                    stop: threading.Event | None = None) -> ServerApp:
    """A simulation's ServerApp bound to one experiment; the summary lands in ``result``. The
    simulated clients snapshot their state under the run directory (when checkpoints are on).
    Setting ``stop`` ends the ServerApp at its next exchange with the clients."""
    app = ServerApp()
    client_state_dir = str(run_dir.client_state_dir.resolve()) if exp.output.checkpoint else None

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedlr.run import engine_poll

        engine_poll.fast_pull(grid)  # replies looked for every 0.01 s while few are pending, not 0.1 s
        if stop is not None:
            engine_poll.stop_when(grid, stop)
        result.update(run_server(grid, exp, run_dir, console, resume=resume, client_state_dir=client_state_dir,
                                 run_id=context.run_id))

    return app
