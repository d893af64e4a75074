"""Test environment: offline, no telemetry, temp homes; helpers shared by the tests."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_home = tempfile.mkdtemp(prefix="fedlr-test-home-")
os.environ.setdefault("FLWR_HOME", os.path.join(_home, "flwr"))
os.environ.setdefault("HF_HOME", os.path.join(_home, "hf"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.toml"


@pytest.fixture
def tiny_path() -> Path:
    return TINY


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread is faster and steadier on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_merged_export_reloads(bench, path: Path) -> None:
    """The merged export of ``bench``'s loaded model reloads in transformers with its logits."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from fedlr.adapters.export import export_model

    export_model(bench, path)
    batch = bench.data.test().batch(list(range(8)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ours = bench.adapted.model(**inputs).logits
    theirs = AutoModelForSequenceClassification.from_pretrained(path).eval()(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
