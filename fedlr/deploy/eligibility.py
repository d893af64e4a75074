"""What a real deployment refuses to run, checked by every ``fedlr deploy`` command that starts or
submits a run and again by the deployed ServerApp, before anything trains."""

from __future__ import annotations

from fedlr.config import Experiment
from fedlr.errors import DeployError
from fedlr.privacy.noise import deployment_noise_refusal


def deployment_refusal(exp: Experiment) -> str | None:
    """Why ``exp`` cannot run on real SuperNodes (``fedlr deploy``), or None."""
    if exp.federation.fused_clients > 1:
        return (f"federation.fused_clients = {exp.federation.fused_clients} is a simulation setting: one worker "
                "trains several clients on their data, which deployed clients do not share; set it to 1")
    return deployment_noise_refusal(exp.privacy)


def refuse_undeployable(exp: Experiment) -> None:
    """Raise DeployError (exit 2, nothing started) if ``exp`` cannot be deployed."""
    if (reason := deployment_refusal(exp)) is not None:
        raise DeployError(reason)
