"""A SuperNode in the foreground (``fedlr deploy supernode``): Flower's ``flower-supernode`` as a
child and this process as its warm ClientApp worker (``fedlr.deploy.warm_worker``), supervised so
that they stop together; or, cold, Flower's stock SuperNode exec'd in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fedlr.deploy.flower_argv import flwr_env

# what flower-supernode prints when the SuperLink refuses its connection (Flower's exit code 305;
# the process itself exits with 1, as for every error)
REFUSED = "[code: 2004] Failed to activate SuperNode"
REJOIN_WINDOW_S = 300.0  # how long a refused SuperNode tries again (``--max-wait-time`` overrides)


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), so a SuperNode never
    outlives the fedlr process that serves its ClientApp tasks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the worker's own liveness check still stops it
        pass


def _relay(stream):
    """Copy a child's output to ours as it comes (a thread); ``thread.text`` keeps its last 4 kB."""
    import threading

    def copy():
        for line in iter(stream.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            thread.text = (thread.text + line.decode(errors="replace"))[-4096:]

    thread = threading.Thread(target=copy, daemon=True)
    thread.text = ""
    thread.start()
    return thread


def backoff(refused_at: list[float], window_s: float, first_s: float = 5.0, most_s: float = 60.0) -> float | None:
    """Seconds to wait before the next try after the refusals at times ``refused_at`` (the first
    one opens a window of ``window_s``), doubling from ``first_s`` up to ``most_s``; None once the
    next try would fall outside the window."""
    delay = min(first_s * 2 ** (len(refused_at) - 1), most_s)
    return delay if refused_at[-1] + delay <= refused_at[0] + window_s else None


def serve_supernode(argv: list[str], runtime_port: int, warm: bool = True,
                    rejoin_window_s: float = REJOIN_WINDOW_S) -> int:
    """Run a SuperNode in the foreground.

    ``warm`` (default): ``flower-supernode --isolation process`` as a child, and this process as
    its warm ClientApp worker (``fedlr.deploy.warm_worker.run_warm_worker``); both stop together.
    A SuperNode the SuperLink refuses at connection (Flower's exit 305, ``REFUSED``: for about a
    minute after a node with the same key went away, the SuperLink still counts that one as
    connected) is started again with back-off for up to ``rejoin_window_s``. Otherwise exec Flower's stock SuperNode,
    which starts ``flower-superexec`` and one ``flwr-clientapp`` process per message (no retry)."""
    env = flwr_env()
    if not warm:
        sys.stdout.flush()
        os.execve(argv[0], argv, env)
    from fedlr.deploy.warm_worker import run_warm_worker

    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack (diagnosis)
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code, refused_at, child = 0, [], None
    try:
        while True:
            child = subprocess.Popen([*argv, "--isolation", "process"], env=env, preexec_fn=_die_with_parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            said = _relay(child.stdout)
            run_warm_worker(f"127.0.0.1:{runtime_port}", is_alive=lambda: child.poll() is None)
            code = child.returncode or 0
            said.join(timeout=5)
            if code == 0 or REFUSED not in said.text:
                break
            refused_at.append(time.monotonic())
            if (delay := backoff(refused_at, rejoin_window_s)) is None:
                break
            print(f"fedlr: the SuperLink refused this SuperNode ({REFUSED}); trying again in {delay:g} s",
                  flush=True)
            time.sleep(delay)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        if child is not None and child.poll() is None:
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

