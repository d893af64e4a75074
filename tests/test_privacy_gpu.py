"""DP-SGD on a GPU (skipped without CUDA): the model is on the device before Opacus's hooks
(opacus #820, where LoRA weights silently never change), the noise generator lives on the device,
every trained tensor moves and no frozen one does, and the noise has std σ·C there too.

Run as a script on a GPU machine for the per-step cost of DP-SGD against plain training:
``python tests/test_privacy_gpu.py``."""

import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedlr.adapters import inject_adapters
from fedlr.config import TrainConfig
from fedlr.data.tokens import TokenizedSet
from fedlr.privacy.accountant import StepAccountant
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer, dp_local_train
from fedlr.privacy.noise import noise_generator
from fedlr.train import local_train

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def lora_bert(hidden=64, layers=2, heads=4, rank=4, device="cuda"):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    conf = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(conf)
    inject_adapters(model, ["query", "value"], "lora", rank, 1.0, seed=0)
    for name, p in model.named_parameters():  # FedIT: both factors and the head
        p.requires_grad_(".lora_" in name or name.startswith("classifier."))
    return model.to(device)  # on the device before the hooks (opacus #820)


def random_set(n, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (n, length), generator=g).tolist()
    return TokenizedSet(ids, torch.randint(0, 2, (n,), generator=g), 0)


def test_dp_sgd_on_the_gpu_moves_exactly_the_trained_tensors():
    model = lora_bert()
    data = random_set(200)
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = {k: v.cuda() for k, v in data.batch(list(range(8))).items()}
    model.eval()
    with torch.no_grad():
        out_before = model(**probe).logits.clone()
    cfg = TrainConfig(local_steps=4, batch_size=16, lr=0.01)
    dp = DPSGDSettings(noise_multiplier=0.5, max_grad_norm=1.0, sample_rate=16 / 200)
    res = dp_local_train(model, params, [], data, cfg, dp, torch.Generator().manual_seed(1),
                         noise_generator("seeded", 2, device="cuda"), torch.device("cuda"))
    assert res.steps == 4
    for name, p in model.named_parameters():
        assert p.is_cuda
        assert torch.equal(p, before[name]) != p.requires_grad, name
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(**probe).logits, out_before)
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "summed_grad") for p in model.parameters())
    acc = StepAccountant()
    acc.step(0.5, 16 / 200, res.steps)
    assert acc.epsilon(1e-5) > 0


class ZeroGradient(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2048)

    def forward(self, input_ids, attention_mask=None, labels=None):
        out = self.lin(input_ids[:, :4].float())
        return SimpleNamespace(loss=(out * 0.0).mean(), logits=out)


def test_noise_std_on_the_gpu_is_sigma_times_c():
    model = ZeroGradient().cuda()
    params = list(model.parameters())
    cfg = TrainConfig(optimizer="sgd", lr=1.0, local_steps=1, batch_size=8, max_grad_norm=None)
    sigma, c, n, q = 1.7, 0.3, 200, 0.04
    batch = {"input_ids": torch.randint(0, 50, (8, 6), device="cuda")}
    moves = []
    with PrivateTrainer(model, params, [], cfg, DPSGDSettings(sigma, c, q), n, noise_generator("seeded", 0, device="cuda")) as t:
        for step in range(3):
            before = [p.detach().clone() for p in params]
            t.step(batch if step % 2 else None)
            moves.append(torch.cat([(b - p.detach()).flatten() for p, b in zip(params, before)]))
    noise = torch.cat(moves) * (q * n)
    assert noise.std().item() == pytest.approx(sigma * c, rel=0.03)


def _time_steps(fn, repeats):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn(repeats)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def benchmark(steps=30, batch=32, length=64):
    """ms per optimizer step on a MiniLM-sized BERT (6×384, random weights), LoRA r=8 on q, v + head."""
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    n = 3200
    data = random_set(n, length=length)
    rows = []
    for label in ("non-DP", "DP hooks", "DP functorch"):
        model = lora_bert(hidden=384, layers=6, heads=12, rank=8)
        params = [p for p in model.parameters() if p.requires_grad]
        cfg = TrainConfig(local_steps=steps, batch_size=batch, lr=1e-3)

        def run(k, label=label, model=model, params=params):
            cfg_k = cfg.model_copy(update={"local_steps": k})
            if label == "non-DP":
                local_train(model, params, [], data, cfg_k, torch.Generator().manual_seed(0), torch.device("cuda"))
            else:
                mode = "hooks" if label == "DP hooks" else "functorch"
                dp = DPSGDSettings(1.0, 1.0, batch / n, grad_sample_mode=mode)
                dp_local_train(model, params, [], data, cfg_k, dp, torch.Generator().manual_seed(0),
                               noise_generator("seeded", 0, device="cuda"), torch.device("cuda"))
        run(3)  # warm-up
        rows.append((label, 1000 * _time_steps(run, steps)))
    base = rows[0][1]
    for label, ms in rows:
        print(f"{label:14s} {ms:8.2f} ms/step  ({ms / base:.2f}x)")


if __name__ == "__main__":
    benchmark()
