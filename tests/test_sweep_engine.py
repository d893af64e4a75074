"""A sweep's runs share what does not change between them: a process keeps the base model and the
split, tokenized data between experiments that share them (``fedlr.workbench.kept``), and a
workbench built from kept parts equals one built from scratch."""

from __future__ import annotations

from pathlib import Path

import torch

from fedlr import workbench
from fedlr.config import load_experiment

REPO = Path(__file__).resolve().parents[1]


def test_a_workbench_from_kept_parts_equals_one_built_from_scratch():
    tiny = REPO / "experiments" / "tiny.toml"
    first = workbench.Workbench(load_experiment(tiny, ['method.name="fedit"', "method.rank=2"]))
    exp = load_experiment(tiny, ['method.name="fed_sb"', "method.rank=4"])
    reused = workbench.Workbench(exp)
    assert reused.data is first.data  # same data section, seed and tokenizer: split and tokenized once
    workbench._KEPT.clear()
    fresh = workbench.Workbench(exp)
    assert fresh.data is not first.data
    want = fresh.adapted.model.state_dict()
    got = reused.adapted.model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert reused.adapted.trained_keys == fresh.adapted.trained_keys
    for pid in range(exp.federation.num_clients):
        assert reused.data.client_train(pid).input_ids == fresh.data.client_train(pid).input_ids
    other_seed = workbench.Workbench(load_experiment(tiny, ["seed=1"]))
    assert other_seed.data is not fresh.data  # the partitions depend on the seed
    assert not torch.equal(other_seed.adapted.model.classifier.weight, fresh.adapted.model.classifier.weight)
