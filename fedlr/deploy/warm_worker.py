"""The **warm ClientApp worker** (``run_warm_worker``) beside a SuperNode.

Flower's stock SuperNode starts ``flower-superexec``, which starts a fresh ``flwr-clientapp`` process for every
message: each message then pays Python + torch + transformers imports and the model and corpus
build (≈16 s of a 2-core machine for the tiny test model, against 0.6 s of training). A SuperNode
started with ``--isolation process`` leaves task execution to an outside process instead; the warm
worker is that process: it acquires the SuperNode's ClientApp tasks over the SuperNode's Runtime
API and runs them one after another in one long-lived process, so the base model and data are
built once per run and swapped per message — design principle 2, as in a simulation's Ray actor.
The messages, the Context kept by the SuperNode and the replies are exactly those of the stock
path; only the process that executes the ClientApp differs.

One difference with Flower's executor matters: it starts a process per task and goes on, this worker
runs one task at a time, so a task that never gets its input would block every later one. Flower
1.39's SuperNode leaves such a task behind (``_pull_and_store_message`` in
``flwr/supernode/start_client_internal.py``): it creates the task, then pulls the message's content
from the SuperLink; when the SuperLink answers that the run is no longer running (a message of a
run that died with a SuperLink crash, handed out again after the restart) ``RunNotRunningException``
(a ``BaseException``) skips the cleanup meant for failed pulls, and the task stays pending with a
message whose content never comes. Pulling it would wait up to 7200 s (``PULL_MAX_TIME``).
``abandoned_guard`` ends that wait: the SuperNode pulls its next message only once the current one
is complete, so a newer pending task while our input is still missing means ours was given up.
"""

from __future__ import annotations

import logging

from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

log = logging.getLogger("fedlr")


class AbandonedMessage(ObjectPullError):
    """The SuperNode gave up the message of this task and holds a newer task (``abandoned_guard``)."""


def abandoned_guard(pull_object, newer_task_pending):
    """``pull_object`` (the Runtime API's ``PullObject``) that raises ``AbandonedMessage`` instead of
    answering "not available yet" once ``newer_task_pending()``: the SuperNode has taken a newer
    message, so it will never complete this one (module docstring)."""

    def guarded(request):
        response = pull_object(request)
        if response.object_found and not response.object_available and newer_task_pending():
            raise AbandonedMessage(request.object_id, "the SuperNode gave up this message (its run is no longer "
                                   "running) and has taken a newer one")
        return response

    return guarded


def _run_task(token: str, runtime_api_address: str, apps: dict, newer_task_pending=lambda: False) -> str:
    """Execute one ClientApp task (what ``flwr-clientapp --token`` does, in this process);
    returns the task's final sub-status. A task whose input the SuperNode gave up on
    (``abandoned_guard``) fails without a reply."""
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
    client.PullObject = abandoned_guard(client.PullObject, newer_task_pending)

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
    except AbandonedMessage as ex:  # nothing to reply to: the SuperNode no longer waits for this task
        log.warning("skipped a ClientApp task: %s", ex)
        details = str(ex)
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

    from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullPendingTasksRequest  # pylint: disable=E0611
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

    def newer_task_pending() -> bool:  # our own task is claimed, no longer pending
        return bool(acquirer.PullPendingTasks(PullPendingTasksRequest()).tasks)

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
                status = _run_task(res.token, runtime_api_address, apps, newer_task_pending)
                log.info("task %d: %s in %.2f s", res.task.task_id, status, time.perf_counter() - started)
            else:
                time.sleep(poll_s)
    finally:
        acquirer.close()
