"""Time-limited template checks: what a template reads, and running any check under a time limit.

Analysing a template parses it, and parsing a hostile template could take long; every check here
runs in a daemon thread and gives up with TemplateTimeout past its limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from jinja2 import meta

from orchestrator import defaults
from workers.sandbox import TemplateTimeout, environment

T = TypeVar("T")


def within(seconds: float, what: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread, or TemplateTimeout naming `what` when it takes over `seconds`.

    Python cannot stop a thread: a runaway one is left behind (as a daemon it never blocks exit); the
    sandbox's step and size bounds are what make that not happen.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            failure.append(e)

    worker = threading.Thread(target=run, name="template-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TemplateTimeout(f"{what} took longer than {seconds:g} s")
    if failure:
        raise failure[0]
    return result[0]


def _analyse(text: str) -> set[str]:
    return meta.find_undeclared_variables(environment().parse(text))


def undeclared_variables(text: str, *, seconds: float = defaults.TEMPLATE_CHECK_S) -> set[str]:
    """Variables a template reads; jinja2.TemplateSyntaxError on bad syntax, TemplateTimeout past `seconds`."""
    return within(seconds, "analysing the template", _analyse, text)
