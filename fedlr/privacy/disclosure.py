"""What a run releases beside the ε it reports, said where ε is printed (the summary).

- **Example counts.** Under ``federation.weighting = "examples"`` each client sends its exact
  number of training examples n_k (and its loss and accuracy) with its update. n_k would be public
  only under substitution adjacency (replace one example: neighbouring datasets have the same
  size). fedlr's sample-level ε is for add/remove of one example (what Poisson subsampling
  needs), and its client-level ε for replacing one client's whole dataset (possibly of another
  size): under both, n_k tells neighbouring datasets apart and the ε does not cover it.
  ``weighting = "uniform"`` sends nothing but the update.
- **The cohort.** Under ``client_central`` the ε is amplified by sampling m of N clients, which
  assumes the cohort is secret; the ledger lists each round's cohort (``clients_sampled``), so for
  anyone who reads the ledger that amplification does not hold.
"""

from __future__ import annotations

from fedlr.config import Experiment
from fedlr.privacy.modes import ClientCentral, configured_mode
from fedlr.privacy.planning import PrivacyPlan


def released_beside_epsilon(exp: Experiment, plan: PrivacyPlan | None) -> list[str]:
    """One line per release the run's ε does not cover (none without DP)."""
    if plan is None:
        return []
    notes = []
    if exp.federation.weighting == "examples":
        notes.append("each client's exact example count n_k (and its loss and accuracy) travels with its update "
                     "(federation.weighting = 'examples'); under this epsilon's adjacency n_k tells neighbouring "
                     "datasets apart and is not covered: set federation.weighting = 'uniform' to send nothing but "
                     "the update")
    if isinstance(configured_mode(exp.privacy), ClientCentral):
        notes.append("the ledger lists every round's cohort (clients_sampled): this epsilon assumes the cohort is "
                     "secret (amplification by sampling m of N), which does not hold for whoever reads the ledger")
    return notes
