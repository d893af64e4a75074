"""What a run prints: a per-round table as rounds finish, and a final summary."""

from __future__ import annotations

import sys

COLUMNS = [
    ("round", "{:>5}", 5), ("clients", "{:>7}", 7), ("train_loss", "{:>10}", 10), ("val_acc", "{:>7}", 7),
    ("test_loss", "{:>9}", 9), ("test_acc", "{:>8}", 8), ("up_MB", "{:>8}", 8), ("down_MB", "{:>8}", 8),
    ("total_MB", "{:>8}", 8), ("time_s", "{:>7}", 7),
]


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stdout

    def print(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def header(self) -> None:
        self.print("  ".join(f"{name:>{w}}" for name, _, w in COLUMNS))

    def round(self, row: dict) -> None:
        clients = f"{row['clients_replied']}/{len(row['clients_sampled'])}"
        cells = [
            str(row["round"]), clients, _num(row["train_loss"], "{:.4f}"), _num(row["client_val_accuracy"], "{:.4f}"),
            _num(row["eval_loss"], "{:.4f}"), _num(row["eval_accuracy"], "{:.4f}"),
            f"{row['uplink_bytes'] / 2**20:.3f}", f"{row['downlink_bytes'] / 2**20:.3f}",
            f"{row['cumulative_bytes'] / 2**20:.3f}", f"{row['wall_time_s']:.1f}",
        ]
        self.print("  ".join(f"{c:>{w}}" for c, (_, _, w) in zip(cells, COLUMNS)))

    def summary(self, s: dict) -> None:
        self.print()
        self.print(f"method {s['method']} (rank {s['rank']}), {s['num_rounds']} rounds, "
                   f"{s['clients_per_round']} of {s['num_clients']} clients per round")
        self.print(f"final test accuracy {_num(s['final_accuracy'], '{:.4f}')} "
                   f"(best {_num(s['best_accuracy'], '{:.4f}')}; majority class {s['majority_rate']:.4f})")
        self.print(f"bytes: up {s['uplink_bytes']:,} ({s['uplink_bytes'] / 2**20:.2f} MiB), "
                   f"down {s['downlink_bytes']:,} ({s['downlink_bytes'] / 2**20:.2f} MiB), total {s['total_bytes'] / 2**20:.2f} MiB")
        self.print(f"wall time {s['wall_time_s']:.1f} s; run directory {s['run_dir']}")
