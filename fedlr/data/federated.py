"""One experiment's data as every party sees it.

Partitioned data (a corpus): built from the config and seed alone, so the server and each
simulated or deployed client derive the same splits without exchanging data. Client-owned data
(``data.dataset = 'client-files'``, deployment only): a client holds its own file
(``ClientFile``, from its node config) and nothing else; the server holds its own test file
(``data.test_file``) or nothing. ``data.labels`` gives every party the same class order."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from fedlr.config import Experiment
from fedlr.data.corpora import NATURAL_ID, labelled, read_table_file
from fedlr.data.partition import partition_rows, split_local, split_test
from fedlr.data.tokens import TokenizedSet
from fedlr.tasks import get_task


@dataclass(frozen=True)
class ClientFile:
    """A deployed client's own labelled table (node config ``data-path``, ``text-column``,
    ``label-column``); the column names default to the experiment's."""

    path: str
    text_column: str | None = None
    label_column: str | None = None

    def load(self, exp: Experiment) -> pd.DataFrame:
        cols = (self.text_column or exp.data.text_column, self.label_column or exp.data.label_column)
        table, _ = labelled(read_table_file(self.path, "data-path"), self.path, ("text-column", cols[0]),
                            ("label-column", cols[1]), list(exp.data.labels))
        return table


def server_test_table(exp: Experiment) -> pd.DataFrame:
    """The server's own test rows under client-owned data (an empty table without a test file)."""
    d = exp.data
    if d.test_file is None:
        return pd.DataFrame({"text": pd.Series(dtype=str), "label": pd.Series(dtype=int)})
    table, _ = labelled(read_table_file(d.test_file, "data.test_file"), d.test_file,
                        ("data.text_column", d.text_column), ("data.label_column", d.label_column), list(d.labels))
    return table


class FederatedData:
    """Splits on construction; tokenizes each part on first use and keeps it (once per process).
    ``own``: this process is a deployed client of a client-owned-data experiment, holding that file."""

    def __init__(self, exp: Experiment, tokenizer=None, own: ClientFile | None = None):
        self.exp = exp
        self.task = get_task(exp.model.task)
        self.partitions: list[np.ndarray] | None = None
        if exp.data.client_files:
            self.label_names = list(exp.data.labels)
            self.table = own.load(exp) if own is not None else server_test_table(exp)
            everything, nothing = np.arange(len(self.table)), np.arange(0)
            self.train_rows, self.test_rows = (everything, nothing) if own is not None else (nothing, everything)
        else:
            self.table, self.label_names = self.task.load_table(exp.data)
            self.train_rows, self.test_rows = split_test(self.table, exp.data, exp.seed)
            self.partitions = partition_rows(
                self.table, self.train_rows, exp.data, NATURAL_ID.get(exp.data.dataset),
                exp.federation.num_clients, exp.seed,
            )
        self.own = own
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, int], TokenizedSet] = {}

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def client_rows(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A client's (train, val) rows: of its partition, or of its own file (client-owned data)."""
        if self.partitions is not None:
            rows = self.partitions[partition_id]
        elif self.own is not None:
            rows = self.train_rows
        else:
            raise RuntimeError("data.dataset = 'client-files': this process holds no client's data")
        return split_local(rows, self.exp.data.val_fraction, self.exp.seed, partition_id)

    def client_train(self, partition_id: int) -> TokenizedSet:
        return self._tokens("train", partition_id, lambda: self.client_rows(partition_id)[0])

    def client_val(self, partition_id: int) -> TokenizedSet:
        return self._tokens("val", partition_id, lambda: self.client_rows(partition_id)[1])

    @cached_property
    def central_test_rows(self) -> np.ndarray:
        rows = self.test_rows
        cap = self.exp.data.max_test_examples
        return rows if cap is None or cap >= len(rows) else rows[:cap]

    def test(self) -> TokenizedSet:
        return self._tokens("test", -1, lambda: self.central_test_rows)

    def majority_rate(self) -> float | None:
        """Accuracy of always predicting the most frequent training label, on the central test rows
        (None where this process sees no training or no test rows: the server of client-owned data)."""
        if len(self.train_rows) == 0 or len(self.central_test_rows) == 0:
            return None
        majority = np.bincount(self.table["label"].to_numpy()[self.train_rows]).argmax()
        return float(np.mean(self.table["label"].to_numpy()[self.central_test_rows] == majority))

    def _tokens(self, part: str, pid: int, rows_fn) -> TokenizedSet:
        key = (part, pid)
        if key not in self._cache:
            rows = rows_fn()
            self._cache[key] = self.task.tokenize(self.table.iloc[rows], self.tokenizer, self.exp.model.max_length)
        return self._cache[key]
