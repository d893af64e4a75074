"""A SuperNode in the foreground (``fedlr deploy supernode``): Flower's ``flower-supernode`` as a
child and this process as its warm ClientApp worker (``fedlr.deploy.warm_worker``), supervised so
that they stop together; or, cold, Flower's stock SuperNode exec'd in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from fedlr.deploy.flower_argv import flwr_env


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), so a SuperNode never
    outlives the fedlr process that serves its ClientApp tasks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the worker's own liveness check still stops it
        pass


def serve_supernode(argv: list[str], runtime_port: int, warm: bool = True) -> int:
    """Run a SuperNode in the foreground.

    ``warm`` (default): ``flower-supernode --isolation process`` as a child, and this process as
    its warm ClientApp worker (``fedlr.deploy.warm_worker.run_warm_worker``); both stop together.
    Otherwise exec Flower's stock SuperNode, which starts ``flower-superexec`` and one
    ``flwr-clientapp`` process per message."""
    env = flwr_env()
    if not warm:
        sys.stdout.flush()
        os.execve(argv[0], argv, env)
    from fedlr.deploy.warm_worker import run_warm_worker

    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack (diagnosis)
    child = subprocess.Popen([*argv, "--isolation", "process"], env=env, preexec_fn=_die_with_parent)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        run_warm_worker(f"127.0.0.1:{runtime_port}", is_alive=lambda: child.poll() is None)
        code = child.returncode or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    # Leave at once: library threads (tokenizers, torch, Flower's object pools) would otherwise
    # hold the interpreter's shutdown; the worker has nothing left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

