"""Checks run before any work or any file is written: every problem a config can have that we can
see without training (unknown method or target module, rank too large, missing data file, more
clients than the data can split into, a target ε no noise reaches) raises ``ConfigError`` naming
the field; privacy warnings (δ ≥ 1/n) are logged."""

from __future__ import annotations

from fedlr.config import Experiment
from fedlr.data.corpora import NATURAL_ID
from fedlr.data.federated import server_test_table
from fedlr.data.partition import partition_rows, split_local, split_test
from fedlr.methods import get_method
from fedlr.models.adapted import build_adapted_model
from fedlr.privacy.planning import check_privacy
from fedlr.tasks import get_task


def preflight(exp: Experiment) -> int:
    """Validate ``exp`` end to end on the meta device; return the number of labels. Under
    client-owned data (``data.dataset = 'client-files'``) the data checked is the server's test
    file: the clients' files are checked by their SuperNodes."""
    get_method(exp.method.name)
    if exp.data.client_files:
        server_test_table(exp)
        build_adapted_model(exp, len(exp.data.labels), meta=True)
        return len(exp.data.labels)
    table, names = get_task(exp.model.task).load_table(exp.data)
    train, _ = split_test(table, exp.data, exp.seed)
    parts = partition_rows(table, train, exp.data, NATURAL_ID.get(exp.data.dataset), exp.federation.num_clients,
                           exp.seed)
    build_adapted_model(exp, len(names), meta=True)
    # the privacy plan (σ, ε), its errors and its warnings (δ ≥ 1/n, clients without data)
    check_privacy(exp, [len(split_local(rows, exp.data.val_fraction, exp.seed, pid)[0])
                        for pid, rows in enumerate(parts)])
    return len(names)
