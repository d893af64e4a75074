"""Held-out test split and federated partitions, through flwr-datasets' partitioners.

- ``iid``: rows shuffled by the seed, then ``IidPartitioner``'s contiguous shards (computed
  directly, ``iid_shards``; the shuffle matters — reference/flower.md §11).
- ``dirichlet``: ``DirichletPartitioner`` over labels with concentration α.
- ``natural``: the id column's values (e.g. movie) grouped into ``num_clients`` clients by
  ``GroupedNaturalIdPartitioner``; which ids go together depends on the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedlr.config import ConfigError, DataConfig
from fedlr.seeding import derive_seed, numpy_rng

ROW = "__row"


def split_test(df: pd.DataFrame, cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): a seeded random test_fraction held out for central evaluation."""
    perm = numpy_rng(seed, "test-split").permutation(len(df))
    n_test = max(1, int(round(cfg.test_fraction * len(df))))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = np.sort(numpy_rng(seed, "train-subset").choice(train, cfg.max_train_examples, replace=False))
    return train, test


def partition_rows(df: pd.DataFrame, rows: np.ndarray, cfg: DataConfig, dataset_id_column: str | None,
                   num_clients: int, seed: int) -> list[np.ndarray]:
    """Split ``rows`` of ``df`` into ``num_clients`` index arrays."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, GroupedNaturalIdPartitioner

    shuffled = numpy_rng(seed, "partition-shuffle").permutation(rows)
    table = df.iloc[shuffled].copy()
    table[ROW] = shuffled
    column = None
    if cfg.partitioner == "iid":
        if num_clients > len(table):
            raise ConfigError(f"federation.num_clients: {num_clients} clients but only {len(table)} train rows")
        return iid_shards(shuffled, num_clients)
    elif cfg.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=cfg.alpha,
            min_partition_size=0, self_balancing=False, shuffle=True, seed=derive_seed(seed, "dirichlet") % 2**32,
        )
    else:
        column = cfg.partition_by or dataset_id_column
        if column is None:
            raise ConfigError(
                f"data.partition_by: {cfg.dataset!r} has no natural id column; set data.partition_by "
                "or use data.partitioner = 'iid' or 'dirichlet'"
            )
        if column not in table.columns:
            raise ConfigError(f"data.partition_by: column {column!r} not in the data (columns: {list(df.columns)})")
        n_ids = table[column].nunique()
        if n_ids < num_clients:
            raise ConfigError(f"federation.num_clients: {num_clients} clients but only {n_ids} distinct {column!r} values")
        table = table.astype({column: str})
        partitioner = GroupedNaturalIdPartitioner(partition_by=column, group_size=n_ids // num_clients, mode="allow-bigger")
    columns = [ROW] + (["label"] if cfg.partitioner == "dirichlet" else [column])
    partitioner.dataset = datasets.Dataset.from_pandas(table[columns], preserve_index=False)
    return [np.asarray(partitioner.load_partition(i)[ROW], dtype=np.int64) for i in range(num_clients)]


def iid_shards(shuffled: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """flwr-datasets' ``IidPartitioner`` on the shuffled rows, computed directly: its partition i
    is ``Dataset.shard(num_clients, i, contiguous=True)`` — contiguous blocks, the first
    ``len % num_clients`` one row longer — which is ``np.array_split``. One pass instead of one
    Arrow ``select`` per client (seconds at 10,000 clients, in the server and in every worker)."""
    return [np.asarray(block, dtype=np.int64) for block in np.array_split(shuffled, num_clients)]


def split_local(rows: np.ndarray, val_fraction: float, seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's (train, val) rows: a seeded val_fraction kept for client-side evaluation."""
    perm = numpy_rng(seed, "local-split", partition_id).permutation(rows)
    n_val = int(round(val_fraction * len(rows))) if len(rows) > 1 else 0
    return perm[n_val:], perm[:n_val]
