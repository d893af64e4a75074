"""Shared pieces of the benchmarks: the machine's description, medians, output written to both
stdout and ``benchmarks/<name>.txt``, one measurement in a fresh process, and an in-process grid.

``InProcessGrid`` is a Flower ``Grid`` with no transport: ``send_and_receive`` hands each message
to fedlr's real ``ClientApp`` with that node's own persistent ``Context``, in this process, one
after another. The strategy, the client app and the records are the ones a simulation uses; only
Ray and the SuperLink's polling are left out — which is what the overhead benchmark needs as a
reference, and what makes the byte and memory benchmarks quick.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                     "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}.items():
    os.environ.setdefault(_key, _value)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


RESULT_PREFIX = "RESULT "


def print_result(result: dict) -> None:
    """What a measurement run by ``in_fresh_process`` prints for its caller."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def in_fresh_process(cmd: list[str], timeout: float | None) -> dict | str:
    """Run one measurement (a command ending in ``print_result``) in its own process group, so
    its peaks are its own and Ray's processes go with it on a timeout; returns the result, or
    why there is none."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"did not finish within {timeout} s"
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        return f"failed: {stderr.strip().splitlines()[-1:]}"
    return json.loads(line[len(RESULT_PREFIX):])


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, accelerator, Python and torch."""
    import torch

    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # the GPU machines' image has no psutil
        memory = "RAM not read"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {memory}, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def median(values) -> float:
    return statistics.median(values)


class Report:
    """Lines printed and written to ``benchmarks/<name>.txt`` (header: command, machine, date)."""

    def __init__(self, name: str, command: str):
        self.path = BENCH_DIR / f"{name}.txt"
        self.lines: list[str] = []
        self.line(f"# {command}")
        self.line(f"# machine: {machine()}")
        self.line(f"# date: {time.strftime('%Y-%m-%d %H:%M')}")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self) -> None:
        self.path.write_text("\n".join(self.lines) + "\n")
        print(f"wrote {self.path.relative_to(ROOT)}", file=sys.stderr)


class InProcessGrid:
    """The part of ``flwr.serverapp.Grid`` fedlr's strategy uses, delivering to ``client_app``
    in-process. Node ids are 1..N; node ``i`` holds partition ``i − 1``."""

    def __init__(self, client_app, num_nodes: int, run_id: int = 1):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0  # as in a ServerApp process
        self.app = client_app
        self.run_id = run_id
        self.contexts = {
            node: Context(run_id=run_id, node_id=node, node_config={"partition-id": node - 1},
                          state=RecordDict(), run_config={})
            for node in range(1, num_nodes + 1)
        }
        self.messages_handled = 0
        # what crossed, measured on the records themselves: [down, up] x (serialized .npy bytes,
        # key bytes, raw array bytes)
        self.wire = {"down": [0, 0, 0], "up": [0, 0, 0]}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        replies = []
        for msg in messages:
            meta = msg.metadata.__dict__
            meta["_message_id"] = str(uuid4())
            meta["_run_id"] = self.run_id
            meta["_src_node_id"] = 0
            self._count("down" if msg.metadata.message_type.startswith("train") else "query", msg)
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as e:  # as the simulation engine: an error reply, the round goes on
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            self.messages_handled += 1
            if not reply.has_error() and msg.metadata.message_type.startswith("train"):
                self._count("up", reply)
            replies.append(reply)
        return replies

    def _count(self, direction: str, msg) -> None:
        if direction not in self.wire:
            return
        for record in msg.content.array_records.values():
            for key, array in record.items():
                totals = self.wire[direction]
                totals[0] += len(array.data)
                totals[1] += len(key)
                totals[2] += array.numpy().nbytes
