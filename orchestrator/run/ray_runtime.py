"""Ray start-up: join a cluster, or start a local one that ends with this process; no secrets reach workers."""

from __future__ import annotations

import logging
import os

import ray

from orchestrator import defaults
from orchestrator.run import interrupts, reaper

WORKER_ENV = ("VLLM_LOGGING_LEVEL", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")



def _no_auth_opt_out(record: logging.LogRecord) -> bool:
    return "RAY_AUTH_MODE=disabled" not in record.getMessage()


def ensure_ray(address: str | None = None, *, worker_logs: bool = True) -> None:
    """Join the cluster at `address`, or start a local Ray runtime in this process.

    A local cluster's processes copy this process's environment, and every Ray worker and vLLM engine
    inherits theirs: the secrets in `defaults.SECRET_ENV` are taken out while Ray starts (and put back
    for this process afterwards), so no worker ever holds the API token.
    """
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    secrets = {k: os.environ.pop(k) for k in defaults.SECRET_ENV if k in os.environ}
    # A new local cluster has Ray's token auth on; Ray's notice of it invites users to turn it off.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_no_auth_opt_out)
    try:
        with interrupts.keep_handlers():
            if address is None and "RAY_ADDRESS" not in os.environ:
                # Ray's own default would join a cluster `ray start` recorded in its temp folder (or
                # time out on a dead one left there): the embedded default is always a new local cluster.
                address = "local"
                reaper.start()  # a local cluster is ended with this process, however it ends
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=worker_logs, runtime_env={"env_vars": env})
    finally:
        os.environ.update(secrets)
