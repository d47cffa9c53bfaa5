"""Real English prose available on every machine: the docstrings of Python's standard library.

Paragraphs are taken from the docstrings of the standard library's modules, classes and functions
(in sorted module order, so every run and machine gets the same list for the same Python), with
code-like and very short paragraphs left out. No download is needed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import warnings

MIN_WORDS = 12
CODE = re.compile(r">>>|::|\{|\}|^\s*[-=*]{3,}|\w+\(\w*\)\s*->", re.MULTILINE)
SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "venv")


def _modules() -> list[str]:
    names = sorted(sys.stdlib_module_names)
    return [n for n in names if not n.startswith("_") and not n.startswith(SKIP)]


def _docstrings(module: object) -> list[str]:
    """The module's docstring and those of its own classes, functions and methods."""
    docs = [inspect.getdoc(module) or ""]
    for _, member in sorted(vars(module).items()):
        if getattr(member, "__module__", None) != getattr(module, "__name__", None):
            continue
        if inspect.isfunction(member):
            docs.append(inspect.getdoc(member) or "")
        elif inspect.isclass(member):
            docs.append(inspect.getdoc(member) or "")
            docs += [m.__doc__ or "" for _, m in sorted(vars(member).items()) if inspect.isfunction(m)]
    return docs


@functools.lru_cache(maxsize=1)
def paragraphs() -> tuple[str, ...]:
    """Distinct prose paragraphs (whitespace folded), in a fixed order; several thousand on CPython 3.11."""
    seen: dict[str, None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _modules():
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that cannot load here (no GUI, no platform support)
                continue
            for doc in _docstrings(module):
                for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
                    text = " ".join(para.split())
                    if len(text.split()) >= MIN_WORDS and not CODE.search(para):
                        seen.setdefault(text, None)
    return tuple(seen)


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The distinct lowercase words of the paragraphs, sorted."""
    return tuple(sorted({w for p in paragraphs() for w in re.findall(r"[a-z]+", p.lower())}))



@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """The distinct sentences of the paragraphs with at least 6 words, in order."""
    seen: dict[str, None] = {}
    for p in paragraphs():
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p):
            if len(s.split()) >= 6:
                seen.setdefault(s, None)
    return tuple(seen)


if __name__ == "__main__":
    ps = paragraphs()
    words = sum(len(p.split()) for p in ps)
    print(f"{len(ps)} paragraphs, {len(sentences())} sentences, {words} words, {len(vocabulary())} distinct words")
