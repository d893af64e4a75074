"""Simulation on Flower's simulation engine (Ray backend): N virtual SuperNodes, the object store
capped, telemetry off, client resources from the experiment, and the engine's message poller
replaced by one whose cost does not grow with N (``fedlr.run.engine_poll``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from fedlr.config import Experiment
from fedlr.errors import FedlrError
from fedlr.results import RunDir
from fedlr.results.console import Console

OBJECT_STORE_BYTES = 512 * 2**20
QUIET_FLOWER_ENV = "FEDLR_FLOWER_LOG_LEVEL"  # Flower's log level in the clients' Ray workers (fedlr.clients.app)


def quiet_environment() -> None:
    """Environment for Flower and Ray set before either starts (workers inherit it)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault(QUIET_FLOWER_ENV, "ERROR")


def backend_config(exp: Experiment) -> dict:
    """Client resources from the experiment; a local Ray instance with the object store capped, or,
    when ``RAY_ADDRESS`` names an existing cluster (``ray start --head`` / ``--address``), that
    cluster as it is (Ray refuses resource arguments when joining one)."""
    fed = exp.federation
    import torch

    log_args = {"logging_level": logging.ERROR, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        return {"client_resources": {"num_cpus": fed.num_cpus, "num_gpus": fed.num_gpus},
                "init_args": {"address": os.environ["RAY_ADDRESS"], **log_args}}
    gpus = torch.cuda.device_count() if fed.num_gpus > 0 else 0
    if fed.num_gpus > 0 and gpus == 0:
        logging.getLogger("fedlr").warning("federation.num_gpus > 0 but no GPU is visible; clients run on the CPU")
    return {
        "client_resources": {"num_cpus": fed.num_cpus, "num_gpus": fed.num_gpus if gpus else 0.0},
        "init_args": {
            "num_cpus": fed.ray_num_cpus or os.cpu_count() or 1, "num_gpus": gpus,
            "include_dashboard": False, "object_store_memory": OBJECT_STORE_BYTES, **log_args,
        },
    }


def simulate(exp: Experiment, run_dir: RunDir, console: Console, resume: bool = False) -> dict:
    """Run ``exp`` with ``num_clients`` simulated clients (``resume``: from the run directory's
    newest valid checkpoint); returns the summary."""
    quiet_environment()
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.simulation import run_simulation

    from fedlr.clients.app import app as client_app
    from fedlr.run import engine_poll
    from fedlr.run.server import make_server_app

    FLOWER_LOGGER.setLevel(logging.ERROR)  # client failures still show; fedlr logs its own warnings
    engine_poll.install()  # one scan of the message store per poll, not one per client
    result: dict = {}
    stop = threading.Event()
    try:
        with first_interrupt_sets(stop):
            run_simulation(
                server_app=make_server_app(exp, run_dir, console, result, resume=resume, stop=stop),
                client_app=client_app, num_supernodes=exp.federation.num_clients, backend_name="ray",
                backend_config=backend_config(exp), verbose_logging=False,
            )
    except engine_poll.ServerStopped:
        raise RunInterrupted(_resume_hint(exp, run_dir)) from None
    if not result:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    if "error" in result:
        raise RunFailed(f"{result['error']} ({run_dir.path / 'summary.json'})")
    return result


class RunFailed(FedlrError, RuntimeError):
    """The run went through every round but produced no result (its summary.json says why): exit 1."""

    exit_code = 1


class RunInterrupted(KeyboardInterrupt):
    """A Ctrl-C stopped the run; the message says how to resume it."""


def _resume_hint(exp: Experiment, run_dir: RunDir) -> str:
    from fedlr import checkpoint

    rounds = checkpoint.rounds(run_dir.checkpoint_dir) if exp.output.checkpoint else []
    if not rounds:
        why = "output.checkpoint is false" if not exp.output.checkpoint else "no round had finished"
        return f"interrupted; {run_dir.path} cannot be resumed ({why})"
    return (f"interrupted after round {rounds[-1]} of {exp.federation.num_rounds}; continue with:\n"
            f"  fedlr run --resume {run_dir.path}")


@contextmanager
def first_interrupt_sets(stop: threading.Event):
    """While a simulation runs, the first Ctrl-C (SIGINT) only sets ``stop``: the ServerApp ends
    at its next exchange with the clients (``engine_poll.stop_when``), after the round it is
    writing, and Flower then stops its workers and Ray in order. A KeyboardInterrupt raised
    anywhere in Flower's threads instead left its ServerApp waiting for replies up to
    ``round_timeout_s`` and its workers for actors Ray no longer ran. A second Ctrl-C interrupts
    at once. Outside the main thread (where signals cannot be caught) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from flwr.common.logger import FLOWER_LOGGER

    def on_interrupt(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        FLOWER_LOGGER.setLevel(logging.CRITICAL)  # clients cut off mid-task are expected now
        print("fedlr: stopping after the current round's writes (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
