"""A SuperNode's node config (``--node-config``): what Flower hands the ClientApp as
``context.node_config``.

- ``partition-id`` (required) and ``num-partitions``: which client of the experiment the node
  serves;
- ``data-path`` (with ``text-column``, ``label-column`` where they differ from the experiment's):
  the client's own labelled file, for ``data.dataset = 'client-files'`` (``fedlr deploy supernode
  --data FILE``); the partition id is then only the client's index in the federation;
- ``experiment-sections`` (set by ``fedlr deploy supernode --experiment FILE``): a short hash of
  each section of the experiment the node checked at start. At enrollment the ClientApp compares
  them with the experiment the server sent and warns, naming the sections, when they differ
  (``experiment_mismatch``): the node then trains the server's experiment, which its start-up
  check did not cover. ``output`` is left out: it says where the server writes, not what clients do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedlr.errors import DeployError

EXPERIMENT_SECTIONS_KEY = "experiment-sections"
DATA_PATH_KEY, TEXT_COLUMN_KEY, LABEL_COLUMN_KEY = "data-path", "text-column", "label-column"
NOT_COMPARED = ("output",)


def parse_node_config(text: str | None, num_partitions: int | None = None) -> dict[str, Any]:
    """A SuperNode's ``--node-config`` ("partition-id=0 num-partitions=3"), validated: the
    ClientApp needs an integer ``partition-id`` in ``[0, num-partitions)``."""
    from flwr.common.config import parse_config_args

    try:
        config = dict(parse_config_args([text])) if text and text.strip() else {}
    except Exception as e:  # noqa: BLE001 - flwr raises ValueError/TOML errors
        raise DeployError(f"--node-config {text!r} is not a list of key=value pairs: {e}") from None
    if "partition-id" not in config:
        raise DeployError(f"--node-config {text!r} has no partition-id: every SuperNode serves one client and "
                          f"needs --node-config 'partition-id=N' (or --partition-id N), N from 0 to "
                          f"num_clients - 1")
    pid = config["partition-id"]
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise DeployError(f"--node-config: partition-id must be a non-negative integer, got {pid!r}")
    if "num-partitions" in config:
        n = config["num-partitions"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DeployError(f"--node-config: num-partitions must be a positive integer, got {n!r}")
        if num_partitions is not None and n != num_partitions:
            raise DeployError(f"--node-config: num-partitions={n} but the experiment has "
                              f"federation.num_clients = {num_partitions}")
    elif num_partitions is not None:
        config["num-partitions"] = num_partitions
    n = config.get("num-partitions")
    if n is not None and pid >= n:
        raise DeployError(f"--node-config: partition-id={pid} is out of range for {n} partitions (0..{n - 1})")
    return config


def format_node_config(config: dict[str, Any]) -> str:
    def fmt(v):
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in config.items())



def _section_hashes(exp) -> dict[str, str]:
    return {key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]
            for key, value in sorted(exp.to_dict().items()) if key not in NOT_COMPARED}


def section_fingerprints(exp) -> str:
    """``section:hash,…`` over the experiment's top-level fields (``output`` left out): the value
    of ``experiment-sections``."""
    return ",".join(f"{key}:{digest}" for key, digest in _section_hashes(exp).items())


def experiment_mismatch(node_config: dict[str, Any], server_experiment_json: str) -> str | None:
    """Why the experiment the server sent is not the one this SuperNode was started with
    (``--experiment``), naming the sections that differ; None when they agree or the node was
    started without one."""
    mine = node_config.get(EXPERIMENT_SECTIONS_KEY)
    if not mine:
        return None
    from fedlr.config import experiment_from_json

    theirs = _section_hashes(experiment_from_json(server_experiment_json))
    ours = dict(item.split(":", 1) for item in str(mine).split(",") if ":" in item)
    differ = sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
    if not differ:
        return None
    return (f"the server's experiment differs from this SuperNode's --experiment in {', '.join(differ)}: "
            "the node trains the server's experiment, which its start-up check (partition range, model and "
            "data loading) did not cover")


def client_file(node_config: dict[str, Any]):
    """The client's own file its node config names (``fedlr.data.ClientFile``), or None."""
    if not node_config.get(DATA_PATH_KEY):
        return None
    from fedlr.data import ClientFile

    return ClientFile(str(node_config[DATA_PATH_KEY]), node_config.get(TEXT_COLUMN_KEY) or None,
                      node_config.get(LABEL_COLUMN_KEY) or None)


def data_mismatch(node_config: dict[str, Any], exp) -> str | None:
    """Why this node cannot serve ``exp``'s data: client-owned data and no file of its own, or a
    file of its own for an experiment that partitions a corpus. None when they fit."""
    own = client_file(node_config)
    if exp.data.client_files and own is None:
        return (f"the experiment has data.dataset = '{exp.data.dataset}' but this SuperNode has no file of its own: "
                f"start it with --data FILE (node config {DATA_PATH_KEY}=...)")
    if own is not None and not exp.data.client_files:
        return (f"this SuperNode trains on its own file {own.path}, but the experiment partitions "
                f"data.dataset = {exp.data.dataset!r}; set data.dataset = 'client-files' (and data.labels) on the "
                "server, or start the node without --data")
    return None
