"""One Ray cluster and one pool of client workers for every simulation of a sweep (Flower 1.39.0).

For each ``run_simulation`` Flower's simulation engine makes a ``RayBackend``: it starts Ray
(unless Ray is running), builds a pool of ``ClientAppActor`` workers (one per ``num_cpus`` of the
cluster) and, when the run ends, terminates the workers and shuts Ray down
(``RayBackend.terminate``). A sweep of tiny runs paid that for every run: Ray's start, the workers'
start and imports, and each worker's first model build.

Inside ``shared_engine()`` the backend of every simulation in this process is a
``SharedRayBackend``: Ray starts with the first run and stays up; the workers stay up between runs
and keep their process-wide caches (``fedlr.workbench``). A worker holds no per-run state: the
client's persistent state (accountant, error feedback, once-sent tensors, compression memory)
lives in the ``Context`` the engine hands it with every message, made new for every run, and a
worker builds a new workbench (adapters, rank, privacy plan) for every run, even one of an
experiment it has served (``get_workbench``'s ``run_id``). What is kept is therefore what a run
cannot change: the split, tokenized data and, with ``keep_base_model``, the pristine base model.
A run that asks for another Ray (``backend_config``'s ``init_args``: ``federation.ray_num_cpus``,
a GPU count) restarts Ray for itself; one that asks other resources per worker
(``federation.num_cpus``, ``num_gpus``) gets a new pool. A pool that did not get all its workers
back at the end of a run, or with a worker that no longer answers, is replaced. Leaving the
context terminates the workers and shuts Ray down.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import flwr
from flwr.server.superlink.fleet.vce.backend import raybackend

from fedlr.run.engine_poll import FLOWER_VERSION
from fedlr.workbench import KEEP_BASE_MODEL

log = logging.getLogger("fedlr")
PING_TIMEOUT_S = 30  # a kept worker that does not answer within this is replaced


class _Engine:
    """What outlives one simulation: the init arguments Ray runs with, the worker pool and the
    client resources it was built for."""

    def __init__(self) -> None:
        self.init_args: str | None = None
        self.pool: Any = None
        self.resources: dict | None = None

    def drop_pool(self) -> None:
        """End every worker of the pool, idle or not (a busy one would hold its CPUs from the next pool)."""
        import ray

        if self.pool is not None:
            for actor in [*self.pool.pool, *self.pool._future_to_actor.values()]:
                ray.kill(actor)
        self.pool, self.resources = None, None

    def close(self) -> None:
        import ray

        self.drop_pool()
        ray.shutdown()  # also the processes of a start that failed half-way
        self.init_args = None


_ENGINE = _Engine()


def _pool_answers(pool) -> bool:
    """Whether every worker of ``pool`` is idle in it and answers."""
    import ray

    if len(pool.pool) != pool.num_actors:
        return False
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=PING_TIMEOUT_S)
    except Exception:  # a dead worker (RayActorError) or one that does not answer (GetTimeoutError)
        return False
    return True


class SharedRayBackend(raybackend.RayBackend):
    """Flower's ``RayBackend`` that keeps Ray and its worker pool in ``_ENGINE`` between runs."""

    def init_ray(self, backend_config: dict) -> None:
        import ray

        wanted = json.dumps(backend_config.get(self.init_args_key) or {}, sort_keys=True)
        if ray.is_initialized() and _ENGINE.init_args != wanted:
            _ENGINE.close()  # this run asks for another Ray (e.g. federation.ray_num_cpus)
        if not ray.is_initialized():
            super().init_ray(backend_config)
            _ENGINE.init_args = wanted

    def build(self, app_fn) -> None:
        pool = _ENGINE.pool
        if pool is not None and _ENGINE.resources == self.client_resources and _pool_answers(pool):
            self.pool = pool
            self.app_fn = app_fn
            return
        _ENGINE.drop_pool()
        super().build(app_fn)
        _ENGINE.pool, _ENGINE.resources = self.pool, dict(self.client_resources)

    def terminate(self) -> None:
        """Keep the workers and Ray for the next run; a pool short of workers is not kept."""
        if self.pool is not None and len(self.pool.pool) != self.pool.num_actors:
            _ENGINE.drop_pool()


@contextmanager
def shared_engine(keep_base_model: bool = False) -> Iterator[None]:
    """Every simulation this process runs inside shares one Ray cluster and its workers; on leaving,
    the workers end and Ray shuts down. ``keep_base_model``: this process and the workers (started
    inside, they inherit its environment) keep the pristine base model between runs
    (``fedlr.workbench.KEEP_BASE_MODEL``). With another Flower than the one this was written
    against each simulation keeps its own engine (with a warning): the backend's internals may differ."""
    previous = os.environ.pop(KEEP_BASE_MODEL, None)
    if keep_base_model:
        os.environ[KEEP_BASE_MODEL] = "1"
    original = raybackend.RayBackend
    if flwr.__version__ == FLOWER_VERSION:
        raybackend.RayBackend = SharedRayBackend
    else:
        log.warning("Flower %s is not %s: every run of the sweep starts its own Ray", flwr.__version__,
                    FLOWER_VERSION)
    try:
        yield
    finally:
        raybackend.RayBackend = original
        _ENGINE.close()
        os.environ.pop(KEEP_BASE_MODEL, None)
        if previous is not None:
            os.environ[KEEP_BASE_MODEL] = previous
