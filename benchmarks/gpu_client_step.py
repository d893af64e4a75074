"""One simulated client's local round on the GPU through fedlr's own code path: the adapted model
built by ``build_adapted_model`` (tiny random BERT, every method), moved to the device that
``choose_device(num_gpus=0.5)`` picks, trained with ``local_train``; prints ms per step on the GPU
and on the CPU of the same machine, and checks the trained tensors moved."""

import time

import torch

from fedlr.config import experiment_from_dict
from fedlr.data.tokens import TokenizedSet
from fedlr.models import choose_device
from fedlr.models.adapted import build_adapted_model
from fedlr.train import local_train


def random_set(n, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenizedSet(torch.randint(1000, 5000, (n, length), generator=g).tolist(),
                        torch.randint(0, 2, (n,), generator=g), 0)


def main():
    device = choose_device(0.5)
    assert device.type == "cuda", device
    data = random_set(512)
    for method in ("fed_sb", "fedit", "ffa_lora", "fedpara", "full_ft"):
        for dev in (device, torch.device("cpu")):
            exp = experiment_from_dict({"model": {"name_or_path": "tiny-random-bert"},
                                        "method": {"name": method, "rank": 8, "init": "random"} if method == "fed_sb"
                                        else {"name": method, "rank": 8},
                                        "train": {"local_steps": 20, "batch_size": 32}})
            adapted = build_adapted_model(exp, 2)
            adapted.model.to(dev)
            before = adapted.trained_state()
            gen = torch.Generator().manual_seed(0)
            local_train(adapted.model, adapted.trainable_parameters(), [], data,
                        exp.train.model_copy(update={"local_steps": 2}), gen, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            local_train(adapted.model, adapted.trainable_parameters(), [], data, exp.train, gen, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t) / exp.train.local_steps
            moved = sum(not torch.equal(before[k], v) for k, v in adapted.trained_state().items())
            print(f"{method:9s} {dev.type:4s} {ms:8.2f} ms/step  trained tensors moved: {moved}/{len(before)}")
            assert moved == len(before)


if __name__ == "__main__":
    main()
