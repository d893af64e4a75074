"""One experiment's data as every party sees it: built from the config and seed alone, so the
server and each simulated client derive the same splits without exchanging data."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from fedlr.config import Experiment
from fedlr.data.corpora import NATURAL_ID
from fedlr.data.partition import partition_rows, split_local, split_test
from fedlr.data.tokens import TokenizedSet
from fedlr.tasks import get_task


class FederatedData:
    """Splits on construction; tokenizes each part on first use and keeps it (once per process)."""

    def __init__(self, exp: Experiment, tokenizer=None):
        self.exp = exp
        self.task = get_task(exp.model.task)
        self.table, self.label_names = self.task.load_table(exp.data)
        self.train_rows, self.test_rows = split_test(self.table, exp.data, exp.seed)
        self.partitions = partition_rows(
            self.table, self.train_rows, exp.data, NATURAL_ID.get(exp.data.dataset),
            exp.federation.num_clients, exp.seed,
        )
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, int], TokenizedSet] = {}

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def client_rows(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        return split_local(self.partitions[partition_id], self.exp.data.val_fraction, self.exp.seed, partition_id)

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

    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent training label, on the central test rows."""
        majority = np.bincount(self.table["label"].to_numpy()[self.train_rows]).argmax()
        return float(np.mean(self.table["label"].to_numpy()[self.central_test_rows] == majority))

    def _tokens(self, part: str, pid: int, rows_fn) -> TokenizedSet:
        key = (part, pid)
        if key not in self._cache:
            rows = rows_fn()
            self._cache[key] = self.task.tokenize(self.table.iloc[rows], self.tokenizer, self.exp.model.max_length)
        return self._cache[key]
