"""The ServerApp that ``flwr run`` starts on a SuperLink (Flower's Deployment Engine).

It is the simulation's server loop (``fedlr.run.server.run_server``) behind a ServerApp whose
experiment comes from the run config instead of a Python closure, because in deployment the
ServerApp runs in its own process (``flwr-serverapp``) started by the SuperLink:

- ``run_config["experiment"]``: the resolved experiment as JSON (what ``Experiment.to_json``
  writes) or the path of an experiment TOML readable on the SuperLink's machine;
- ``run_config["run-dir"]``: the absolute path of the run directory to create on the SuperLink's
  machine (empty: ``<output.dir>/<run-name>-<timestamp>`` as ``fedlr run`` does, relative to the
  SuperLink's working directory);
- ``run_config["run-name"]``: the name stem used when ``run-dir`` is empty;
- ``run_config["resume"]``: ``run-dir`` exists; continue it from its newest checkpoint
  (``fedlr deploy resume``), a new Flower run of the same fedlr run.

``fedlr deploy submit`` fills them in (``--run-config``); the ClientApp is the simulation's
``fedlr.clients.app:app`` unchanged. Next to the usual run directory files it writes
``deployment.json`` (``RunDir.deployment_path``: it marks a deployed run): the Flower run id, the
earlier ones of a resumed run, Flower's version and the run config.
"""

from __future__ import annotations

import json
from pathlib import Path

import flwr
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlr.config import ConfigError, Experiment, experiment_from_dict, experiment_from_json, load_experiment
from fedlr.deploy.eligibility import refuse_undeployable

EXPERIMENT_KEY = "experiment"
RUN_DIR_KEY = "run-dir"
RUN_NAME_KEY = "run-name"
RESUME_KEY = "resume"


def experiment_from_run_config(run_config: dict) -> Experiment:
    """The experiment a run config names: JSON text, or a TOML path on this machine."""
    value = str(run_config.get(EXPERIMENT_KEY, "")).strip()
    if not value:
        raise ConfigError(f"the run config has no '{EXPERIMENT_KEY}' (submit with `fedlr deploy submit`)")
    if value.startswith("{"):
        try:
            exp = experiment_from_json(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"run config '{EXPERIMENT_KEY}' is not valid JSON: {e}") from None
    else:
        exp = load_experiment(value)
    refuse_undeployable(exp)
    return exp


def run_dir_for(exp: Experiment, run_config: dict):
    """Create the run directory ``run_config`` asks for (see the module docstring). Its
    ``config.toml`` is the experiment as submitted, and that experiment is what the clients get,
    so repeated runs of one experiment reuse the warm workers' model (same fingerprint)."""
    from fedlr.results import RunDir

    run_dir = str(run_config.get(RUN_DIR_KEY, "")).strip()
    placed = exp
    if run_dir:
        path = Path(run_dir)
        if not path.is_absolute():
            raise ConfigError(f"run config '{RUN_DIR_KEY}' must be an absolute path, got {run_dir!r}")
        data = exp.to_dict()
        data["output"] = {**data["output"], "dir": str(path.parent), "name": path.name}
        placed = experiment_from_dict(data)
    rd = RunDir.create(placed, str(run_config.get(RUN_NAME_KEY, "")) or "deploy")
    rd.write_config(exp)
    return exp, rd


def serve(grid: Grid, context: Context) -> dict:
    """The ServerApp's body: experiment and run directory from the run config, then the same
    server loop as a simulation."""
    from fedlr.results import RunDir
    from fedlr.results.console import Console
    from fedlr.run.server import run_server

    run_config = dict(context.run_config)
    exp = experiment_from_run_config(run_config)
    resume = bool(run_config.get(RESUME_KEY, False))
    earlier = []
    if resume:
        run_dir = RunDir.existing(str(run_config.get(RUN_DIR_KEY, "")))
        before = json.loads(run_dir.deployment_path.read_text())
        earlier = [*before.get("earlier_flwr_run_ids", []), before["flwr_run_id"]]
    else:
        exp, run_dir = run_dir_for(exp, run_config)
    deployment = {"flwr_run_id": context.run_id, "earlier_flwr_run_ids": earlier, "flwr_version": flwr.__version__,
                  "engine": "deployment", "run_config": {k: v for k, v in run_config.items() if k != EXPERIMENT_KEY}}
    run_dir.deployment_path.write_text(json.dumps(deployment, indent=2, sort_keys=True) + "\n")
    console = Console(quiet=exp.output.quiet)
    console.print(f"fedlr: {exp.method.name} on {exp.data.dataset}, {exp.federation.num_clients} SuperNodes, "
                  f"Flower run {context.run_id}, run directory {run_dir.path}")
    return run_server(grid, exp, run_dir, console, resume=resume)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve(grid, context)
