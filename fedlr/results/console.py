"""What a run prints while it runs: progress per round, and a final summary.

Two styles, chosen by whether the stream is a terminal:

- on a terminal, an aligned table, one row per round, ending in the progress columns
  ``eps`` (when the ledger carries ε), ``left`` (rounds done / total) and ``ETA``;
- elsewhere (CI, a log file, a pipe), one plain ``key=value`` log line per round, prefixed with
  the time of day, easy to grep and never rewritten in place::

      10:50:52 fedlr round=1/3 clients=2/2 train_loss=0.6953 test_acc=0.3750 eps=- up_MB=0.003 ...

``observers`` (callables) receive every ledger row as it is printed, quiet or not: the hook
``fedlr sweep --tensorboard`` logs through.

``ETA`` is the mean time of the rounds so far times the rounds left (``eta_seconds``), which needs
the run's number of rounds: ``Console(total_rounds=...)`` or ``Console.start(exp)``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings

from fedlr.results.ledger import LedgerRow

COLUMNS = [
    ("round", "{:>5}", 5), ("clients", "{:>7}", 7), ("train_loss", "{:>10}", 10), ("val_acc", "{:>7}", 7),
    ("test_loss", "{:>9}", 9), ("test_acc", "{:>8}", 8), ("up_MB", "{:>8}", 8), ("down_MB", "{:>8}", 8),
    ("total_MB", "{:>8}", 8), ("time_s", "{:>7}", 7),
]
PROGRESS_COLUMNS = [("eps", 7), ("left", 7), ("ETA", 8)]
MB = 2**20  # the console's MB are MiB, as everywhere in fedlr's output
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # fedlr's own: "WARNING fedlr: ..."
SILENCED_WARNINGS = [  # (category, message regex): noise a user cannot act on
    # PEFT reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


class ClientErrorEcho(logging.Filter):
    """Drops Flower's simulation-engine records of a client's exception (the Ray backend's "An
    exception was raised ..." and the engine worker's exception and traceback): the same exception
    comes back as the client's error reply, which fedlr logs once as ``round r: client k failed
    (error): ...`` and records in the ledger."""

    ECHOES = (("raybackend.py", "process_message"), ("vce_api.py", "worker"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.pathname.endswith(f) and record.funcName == fn for f, fn in self.ECHOES)


def configure_logging() -> None:
    """Every warning printed once, in one format, on stderr (the command line calls this first).

    fedlr's log records, other libraries' and Python ``warnings`` (routed into logging) all reach
    one handler on the root logger. Configuring the root before anything else makes Opacus's own
    ``logging.basicConfig`` (run when it is imported, with a date-stamped format) a no-op, where a
    second handler on the ``fedlr`` logger used to print each warning twice (and each of Flower's,
    which has its own handler, once more)."""
    logging.basicConfig(format=LOG_FORMAT)
    flower = logging.getLogger("flwr")
    flower.propagate = False  # Flower prints its records with its own handler
    if not any(isinstance(f, ClientErrorEcho) for f in flower.filters):
        flower.addFilter(ClientErrorEcho())
    logging.captureWarnings(True)
    for category, message in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` for an unknown duration."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(durations: list[float], remaining: int) -> float | None:
    """Time left if each of the ``remaining`` steps takes the mean of ``durations``; None when
    nothing has finished yet, 0 when nothing remains."""
    if remaining <= 0:
        return 0.0
    if not durations:
        return None
    return sum(durations) / len(durations) * remaining


class Console:
    """Prints a run's progress. ``tty`` None: detect from ``stream.isatty()``."""

    def __init__(self, quiet: bool = False, stream=None, total_rounds: int | None = None, tty: bool | None = None,
                 observers: list | None = None):
        self.quiet = quiet
        self.observers = list(observers or [])  # callables given every ledger row, quiet or not (TensorBoard)
        self.stream = stream or sys.stdout
        self.total_rounds = total_rounds
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self._round_times: list[float] = []
        self._last_wall: float | None = None

    def print(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def start(self, exp) -> None:
        """Learn the run's number of rounds (for ``left`` and ``ETA``) from the experiment."""
        self.total_rounds = exp.federation.num_rounds

    def header(self) -> None:
        self._round_times, self._last_wall = [], None
        if self.tty:
            names = [f"{name:>{w}}" for name, _, w in COLUMNS] + [f"{name:>{w}}" for name, w in PROGRESS_COLUMNS]
            self.print("  ".join(names))

    def _progress(self, row: LedgerRow) -> tuple[str, str]:
        """(rounds done/total, ETA) after ``row``; round 0 (set-up) is not a training round."""
        if self._last_wall is not None and row.round >= 1:
            self._round_times.append(row.wall_time_s - self._last_wall)
        self._last_wall = row.wall_time_s
        total = self.total_rounds
        done = row.round
        left = f"{done}/{total}" if total else str(done)
        eta = eta_seconds(self._round_times, total - done) if total else None
        return left, format_duration(eta)

    def round(self, row: LedgerRow) -> None:
        for observe in self.observers:
            observe(row)
        clients = f"{row.clients_replied}/{len(row.clients_sampled)}"
        eps = _num(row.epsilon, "{:.3g}")
        left, eta = self._progress(row)
        if self.tty:
            cells = [
                str(row.round), clients, _num(row.train_loss, "{:.4f}"),
                _num(row.client_val_accuracy, "{:.4f}"), _num(row.eval_loss, "{:.4f}"),
                _num(row.eval_accuracy, "{:.4f}"), f"{row.uplink_bytes / MB:.3f}",
                f"{row.downlink_bytes / MB:.3f}", f"{row.cumulative_bytes / MB:.3f}", f"{row.wall_time_s:.1f}",
            ]
            widths = [w for _, _, w in COLUMNS] + [w for _, w in PROGRESS_COLUMNS]
            self.print("  ".join(f"{c:>{w}}" for c, w in zip([*cells, eps, left, eta], widths)))
            return
        fields = [
            ("round", left), ("clients", clients), ("train_loss", _num(row.train_loss, "{:.4f}")),
            ("val_acc", _num(row.client_val_accuracy, "{:.4f}")), ("test_loss", _num(row.eval_loss, "{:.4f}")),
            ("test_acc", _num(row.eval_accuracy, "{:.4f}")), ("eps", eps),
            ("up_MB", f"{row.uplink_bytes / MB:.3f}"), ("down_MB", f"{row.downlink_bytes / MB:.3f}"),
            ("total_MB", f"{row.cumulative_bytes / MB:.3f}"), ("elapsed_s", f"{row.wall_time_s:.1f}"),
            ("eta", eta),
        ]
        if row.clients_failed or row.clients_rejected:
            fields.insert(2, ("failed", str(row.clients_failed)))
            fields.insert(3, ("rejected", str(row.clients_rejected)))
        self.print(f"{time.strftime('%H:%M:%S')} fedlr " + " ".join(f"{k}={v}" for k, v in fields))

    def summary(self, s: dict) -> None:
        self.print()
        self.print(f"method {s['method']} (rank {s['rank']}), {s['num_rounds']} rounds, "
                   f"{s['clients_per_round']} of {s['num_clients']} clients per round")
        if s.get("final_perplexity") is not None:  # a language model: response-token accuracy and perplexity
            self.print(f"final test perplexity {s['final_perplexity']:.4g}, token accuracy "
                       f"{_num(s['final_accuracy'], '{:.4f}')}")
        else:
            self.print(f"final test accuracy {_num(s['final_accuracy'], '{:.4f}')} (best "
                       f"{_num(s['best_accuracy'], '{:.4f}')}; majority class {_num(s['majority_rate'], '{:.4f}')})")
        if s.get("epsilon") is not None:
            delta = s.get("delta")
            self.print(f"privacy: epsilon {s['epsilon']:.4g}" + (f" at delta {delta:.3g}" if delta is not None else ""))
            for note in s.get("released_beside_epsilon") or []:
                self.print(f"  not covered by epsilon: {note}")
        self.print(f"bytes: up {s['uplink_bytes']:,} ({s['uplink_bytes'] / MB:.2f} MiB), "
                   f"down {s['downlink_bytes']:,} ({s['downlink_bytes'] / MB:.2f} MiB), total {s['total_bytes'] / MB:.2f} MiB")
        self.print(f"wall time {s['wall_time_s']:.1f} s; run directory {s['run_dir']}")
