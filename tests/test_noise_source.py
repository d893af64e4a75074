"""privacy.noise_source: seeded noise reproduces, OS-seeded ('secure') noise does not, and
Opacus samples in secure_mode for it — through a real client round (DP-SGD and client_local)."""

import pytest
import torch

from fedlr.config import load_experiment
from fedlr.privacy.accountant import StepAccountant
from fedlr.privacy.dp_sgd import DPSGDSettings, PrivateTrainer
from fedlr.privacy.noise import noise_generator
from fedlr.workbench import Workbench


def test_seeded_generators_repeat_and_secure_ones_do_not():
    draw = lambda source: torch.randn(8, generator=noise_generator(source, 0, "dp-noise", 3, 1))  # noqa: E731
    assert torch.equal(draw("seeded"), draw("seeded"))
    assert not torch.equal(draw("secure"), draw("secure"))
    assert not torch.equal(draw("seeded"), torch.randn(8, generator=noise_generator("seeded", 0, "dp-noise", 3, 2)))
    with pytest.raises(ValueError, match="noise_source"):
        noise_generator("urandom", 0)


@pytest.mark.parametrize("secure", [False, True])
def test_opacus_samples_in_secure_mode_only_when_asked(secure):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    params = list(model.parameters())
    cfg = load_experiment(None).train
    dp = DPSGDSettings(1.0, 1.0, 0.5, secure_mode=secure)
    with PrivateTrainer(model, params, [], cfg, dp, 8, noise_generator("seeded", 0)) as trainer:
        assert trainer.optimizer.secure_mode is secure


@pytest.mark.parametrize("mode", ["sample", "client_local"])
def test_a_client_round_is_reproducible_with_seeded_noise_only(tiny_path, one_torch_thread, mode):
    def update(source):
        exp = load_experiment(tiny_path, ["method.name=fedit", f'privacy.mode="{mode}"', "privacy.noise_multiplier=1.0",
                                          f'privacy.noise_source="{source}"', "evaluation.client_side=false"])
        bench = Workbench(exp)
        delta, _ = bench.client_round(0, 1, bench.adapted.round_state(), {}, StepAccountant("rdp"))
        return torch.cat([v.flatten() for _, v in sorted(delta.items())])

    assert torch.equal(update("seeded"), update("seeded"))
    assert not torch.allclose(update("secure"), update("secure"))


def test_secure_dp_sgd_draws_its_poisson_batches_from_the_secure_source(tiny_path, one_torch_thread, monkeypatch):
    """Amplification by subsampling needs secret batch membership: under ``secure`` two runs of
    one client's round sample different batches; under ``seeded`` they sample the same ones."""
    import fedlr.privacy.dp_sgd as dp_sgd

    drawn: list[list[int]] = []

    class RecordingSampler(dp_sgd.UniformWithReplacementSampler):
        def __iter__(self):
            for idx in super().__iter__():
                drawn.append(list(idx))
                yield idx

    monkeypatch.setattr(dp_sgd, "UniformWithReplacementSampler", RecordingSampler)

    def batches(source):
        drawn.clear()
        exp = load_experiment(tiny_path, ["method.name=fedit", 'privacy.mode="sample"', "privacy.noise_multiplier=1.0",
                                          f'privacy.noise_source="{source}"', "evaluation.client_side=false",
                                          "train.local_steps=6"])
        bench = Workbench(exp)
        bench.client_round(0, 1, bench.adapted.round_state(), {}, StepAccountant("rdp"))
        return list(drawn)

    assert batches("seeded") == batches("seeded")
    assert batches("secure") != batches("secure")
    # seeded batches are the stream they always were: (seed, "batches", round, partition)
    from fedlr.seeding import torch_generator

    assert torch.equal(noise_generator("seeded", 0, "batches", 1, 0).get_state(),
                       torch_generator(0, "batches", 1, 0).get_state())


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_seeds_json_says_how_batches_and_noise_are_drawn_for_the_runs_noise_source(tmp_path, tiny_path, source):
    """seeds.json said the batch order derives from the seed, also where the secure source draws it."""
    import json

    from fedlr.results import RunDir

    run = RunDir.create(load_experiment(tiny_path, [f'output.dir="{tmp_path}"', f'privacy.noise_source="{source}"']),
                        "seeds")
    seeds = json.loads(run.seeds_path.read_text())
    assert seeds["seed"] == 0 and seeds["noise_source"] == source
    streams = seeds["streams"]
    if source == "seeded":
        assert streams["batch order"] == "derive_seed(seed, 'batches', round, partition_id)"
        assert "derive_seed(seed, 'dp-noise'" in streams["DP noise"]
    else:
        for name in ("batch order", "DP noise"):
            assert "derive_seed" not in streams[name] and "not derived from the seed" in streams[name]
    assert streams["client sampling"] == "derive_seed(seed, 'sample', round)"  # the seed's, under either source
