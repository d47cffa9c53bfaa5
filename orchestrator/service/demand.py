"""What the coordinator asks the cluster's autoscaler for: one bundle per worker its jobs will use.

With `serve --autoscale` (KubeRay's in-tree autoscaler on the worker group) the cluster grows with the
queue: the running jobs and the queued ones that start next (up to `max_running_jobs`, in the order
they start) each want their pool at `resources.workers`, jobs sharing a pool (same model and worker
shape) want it once at the largest of their sizes, and every wanted worker is a bundle of its GPUs
and CPUs. That list goes to Ray's autoscaler (`ray.autoscaler.sdk.request_resources`), which adds
nodes until the bundles fit; it is sent again only when it changes, and emptied when no job is left
(and when the service stops), so nodes whose pools were released go back after the autoscaler's idle
timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from orchestrator.service.pools import pool_key
from orchestrator.spec.job import JobSpec

log = logging.getLogger(__name__)

Bundle = dict[str, float]


def bundles(specs: Iterable[JobSpec]) -> list[Bundle]:
    """A bundle per worker: each pool at the largest `resources.workers` of its jobs, in first-seen order.
    Workers that need neither GPUs nor CPUs (the fake engine) need no node: no bundle."""
    sizes: dict[str, tuple[Bundle, int]] = {}
    for spec in specs:
        r = spec.resources
        shape = {k: v for k, v in (("GPU", r.gpus_per_worker), ("CPU", r.cpus_per_worker)) if v}
        key = pool_key(spec.model, r)
        sizes[key] = (shape, max(r.workers, sizes[key][1] if key in sizes else 0))
    return [dict(shape) for shape, n in sizes.values() if shape for _ in range(n)]


def request_resources(wanted: list[Bundle]) -> None:
    from ray.autoscaler.sdk import request_resources as ray_request

    ray_request(bundles=wanted)


class Demand:
    """The request standing with the autoscaler; `update` replaces it when what is wanted changed."""

    def __init__(self, request: Callable[[list[Bundle]], None] = request_resources):
        self.request = request
        self.standing: list[Bundle] | None = None  # None: nothing sent yet

    def update(self, specs: Iterable[JobSpec]) -> None:
        wanted = bundles(specs)
        if wanted == self.standing or (not wanted and self.standing is None):
            return
        try:
            self.request(wanted)
        except Exception:  # the autoscaler is best effort: scheduling goes on without it
            log.exception("the autoscaler request (%d workers) could not be made", len(wanted))
            return
        log.info("asked the autoscaler for %d workers", len(wanted))
        self.standing = wanted

    def release(self) -> None:
        self.update([])
