"""Differential privacy: the privacy modes as objects (``modes``: what a client releases, how the
server combines, which accountant, what each mode refuses), Opacus DP-SGD in each client
(``dp_sgd``), client-level clipping and noise (``client_level``), the accountants with
serializable state (``accountant``, ``federation_accountant``), calibration of σ to a target ε
(``calibration``) and the privacy plan of an experiment (``planning``). No Flower here; ``clients/`` and ``strategies/`` call these.
See docs/privacy.md for the guarantees and their assumptions."""

from fedlr.privacy.accountant import StepAccountant, epsilon_of_history
from fedlr.privacy.calibration import calibrate_noise
from fedlr.privacy.federation_accountant import FederationAccountant, central_epsilon

__all__ = ["FederationAccountant", "StepAccountant", "calibrate_noise", "central_epsilon", "epsilon_of_history"]
