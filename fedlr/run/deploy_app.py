"""The ServerApp that ``flwr run`` starts on a SuperLink (Flower's Deployment Engine).

It is the simulation's server loop (``fedlr.run.server.run_server``) behind a ServerApp whose
experiment comes from the run config instead of a Python closure, because in deployment the
ServerApp runs in its own process (``flwr-serverapp``) started by the SuperLink:

- ``run_config["experiment"]``: the resolved experiment as JSON (what ``Experiment.to_json``
  writes) or the path of an experiment TOML readable on the SuperLink's machine;
- ``run_config["run-dir"]``: the absolute path of the run directory to create on the SuperLink's
  machine (empty: ``<output.dir>/<run-name>-<timestamp>`` as ``fedlr run`` does, relative to the
  SuperLink's working directory);
- ``run_config["run-name"]``: the name stem used when ``run-dir`` is empty.

``fedlr deploy submit`` fills them in (``--run-config``); the ClientApp is the simulation's
``fedlr.clients.app:app`` unchanged. Next to the usual run directory files it writes
``deployment.json``: the Flower run id, Flower's version and the run config.

The module also holds the **warm ClientApp worker** (``run_warm_worker``). Flower's stock
SuperNode starts ``flower-superexec``, which starts a fresh ``flwr-clientapp`` process for every
message: each message then pays Python + torch + transformers imports and the model and corpus
build (≈16 s of a 2-core machine for the tiny test model, against 0.6 s of training). A SuperNode
started with ``--isolation process`` leaves task execution to an outside process instead; the warm
worker is that process: it acquires the SuperNode's ClientApp tasks over the SuperNode's Runtime
API and runs them one after another in one long-lived process, so the base model and data are
built once per run and swapped per message — design principle 2, as in a simulation's Ray actor.
The messages, the Context kept by the SuperNode and the replies are exactly those of the stock
path; only the process that executes the ClientApp differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import flwr
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlr.config import (ConfigError, Experiment, deployment_refusal, experiment_from_dict, experiment_from_json,
                          load_experiment)

EXPERIMENT_KEY = "experiment"
RUN_DIR_KEY = "run-dir"
RUN_NAME_KEY = "run-name"
DEPLOYMENT_FILE = "deployment.json"

log = logging.getLogger("fedlr")


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
    if (reason := deployment_refusal(exp)) is not None:
        raise ConfigError(reason)
    return exp


def run_dir_for(exp: Experiment, run_config: dict):
    """Create the run directory ``run_config`` asks for (see the module docstring). Its
    ``config.toml`` is the experiment as submitted, and that experiment is what the clients get,
    so repeated runs of one experiment reuse the warm workers' model (same fingerprint)."""
    from fedlr.config import to_toml
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
    (rd.path / "config.toml").write_text(to_toml(exp))
    return exp, rd


def serve(grid: Grid, context: Context) -> dict:
    """The ServerApp's body: experiment and run directory from the run config, then the same
    server loop as a simulation."""
    from fedlr.results.console import Console
    from fedlr.run.server import run_server

    run_config = dict(context.run_config)
    exp = experiment_from_run_config(run_config)
    exp, run_dir = run_dir_for(exp, run_config)
    deployment = {"flwr_run_id": context.run_id, "flwr_version": flwr.__version__, "engine": "deployment",
                  "run_config": {k: v for k, v in run_config.items() if k != EXPERIMENT_KEY}}
    (run_dir.path / DEPLOYMENT_FILE).write_text(json.dumps(deployment, indent=2, sort_keys=True) + "\n")
    console = Console(quiet=exp.output.quiet)
    console.print(f"fedlr: {exp.method.name} on {exp.data.dataset}, {exp.federation.num_clients} SuperNodes, "
                  f"Flower run {context.run_id}, run directory {run_dir.path}")
    return run_server(grid, exp, run_dir, console)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve(grid, context)


# ------------------------------------------------------------------------------ warm ClientApp worker
def _run_task(token: str, runtime_api_address: str, apps: dict) -> str:
    """Execute one ClientApp task (what ``flwr-clientapp --token`` does, in this process);
    returns the task's final sub-status."""
    from flwr.app import Error, Message
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker(),
    )

    def heartbeat() -> bool:  # the stock one raises SIGINT when the task is gone: not in a worker
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except Exception:  # noqa: BLE001 - a failed heartbeat is retried by HeartbeatSender
            return False

    sender = HeartbeatSender(heartbeat)
    sender.start()
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        key = (run.fab_id, run.fab_version, fab.hash_str)
        if key not in apps:
            install_from_fab(fab.content, skip_prompt=True)
            apps[key] = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(*key)
        reply = apps[key](message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - reported to the server as the stock process does
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        log.exception("ClientApp raised an exception")
        details = reason
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        finally:
            sender.stop()
            client.close()
    return sub_status


def run_warm_worker(runtime_api_address: str, is_alive=lambda: True, poll_s: float = 0.2,
                    preload: str = "fedlr.clients.app") -> None:
    """Serve a SuperNode's ClientApp tasks until ``is_alive()`` turns false.

    ``runtime_api_address`` is the SuperNode's local Runtime API (``flower-supernode --port``),
    reached without TLS on loopback as Flower's own ``flower-superexec`` does by default."""
    import importlib
    import threading
    import time

    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    # Pay the torch/transformers imports before the first message, in a thread so that a
    # SuperNode that exits early (refused by the SuperLink) is noticed at once.
    loader = threading.Thread(target=importlib.import_module, args=(preload,), daemon=True) if preload else None
    if loader is not None:
        loader.start()
    # No retry invoker: Flower's retries back off for minutes while the SuperNode is down; this
    # loop retries itself and checks between tries that the SuperNode still runs.
    acquirer = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=None,
    )
    apps: dict = {}
    try:
        while is_alive():
            try:
                res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception as e:  # noqa: BLE001 - the SuperNode may be starting or stopping
                log.debug("AcquireTask failed: %s", e)
                time.sleep(0.5)
                continue
            if res.HasField("task") and res.token:
                if loader is not None:
                    loader.join()
                started = time.perf_counter()
                status = _run_task(res.token, runtime_api_address, apps)
                log.info("task %d: %s in %.2f s", res.task.task_id, status, time.perf_counter() - started)
            else:
                time.sleep(poll_s)
    finally:
        acquirer.close()
