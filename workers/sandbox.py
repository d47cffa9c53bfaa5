"""The bounded Jinja sandbox prompt templates render in: no template can hang or exhaust memory.

Jinja's sandbox stops escapes (`''.__class__`), not resource bombs: `9**(9**9)` hangs even the
parser (constant folding), and `'a' * 10**9`, `'a'.center(10**9)`, `'{:1000000000}'.format(1)` or
a `join` build a gigabyte. Here every operation that grows a value checks the size it would make
before making it: no value over MAX_PROMPT_CHARS characters (or elements), no integer over
MAX_TEMPLATE_INT_BITS. A row's render also stops at MAX_PROMPT_CHARS of output, at
TEMPLATE_MAX_STEPS loop iterations and calls (a macro call counting TEMPLATE_MACRO_STEPS), and at TEMPLATE_WORK_CHARS built in all, so its cost
is bounded whatever the template. Bounded operators are intercepted, which also keeps Jinja from
folding them while parsing; template analysis runs under a time limit besides.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import update_wrapper
from typing import Any, TypeVar

from jinja2 import StrictUndefined, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, Macro
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    SecurityError,
)
from jinja2.utils import _PassArg, generate_lorem_ipsum
from markupsafe import Markup

from orchestrator import defaults

T = TypeVar("T")
MAX_CHARS = defaults.MAX_PROMPT_CHARS
_DIGITS = re.compile(r"\d+")
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")
_SEQUENCES = (str, bytes, list, tuple)


class TemplateLimitError(SecurityError):
    """A template went past one of the sandbox's bounds (a Jinja SecurityError, so a TemplateError)."""


class TemplateTimeout(TemplateLimitError):
    """Analysing or rendering a template took longer than its time limit."""


class RenderError(Exception):
    """Text `index` of a row's templates failed; str() is the cause as `Type: message`."""

    def __init__(self, index: int, cause: BaseException):
        self.index, self.cause = index, cause
        super().__init__(f"{type(cause).__name__}: {cause}")


@dataclass
class _Budget:
    steps: int = 0
    chars: int = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _spend(*, steps: int = 0, chars: int = 0) -> None:
    """Charge the current render (none while parsing) and stop it past its bounds."""
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.steps, budget.chars = budget.steps + steps, budget.chars + chars
    if budget.steps > defaults.TEMPLATE_MAX_STEPS:
        raise TemplateLimitError(f"the template ran more than {defaults.TEMPLATE_MAX_STEPS:,} loop iterations "
                                 "and calls for one row (TEMPLATE_MAX_STEPS)")
    if budget.chars > defaults.TEMPLATE_WORK_CHARS:
        raise TemplateLimitError(f"the template built more than {defaults.TEMPLATE_WORK_CHARS:,} characters "
                                 "for one row (TEMPLATE_WORK_CHARS)")


def _grow(size: int, what: str) -> None:
    """Allow a value of `size` characters or elements to be built, or raise saying what would have been."""
    if size > MAX_CHARS:
        raise TemplateLimitError(f"{what} would build {size:,} characters or items; a template may build at "
                                 f"most {MAX_CHARS:,} (MAX_PROMPT_CHARS)")
    _spend(chars=size)


def size_of(value: Any, limit: int = MAX_CHARS) -> int:
    """Characters and elements in `value`, nested levels included, counted until past `limit`.

    Shared references count every time ([x] * n holds x n times once printed); integers count
    their digits, other scalars a few characters.
    """
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, Mapping):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 8
    return total


def _int_bits(left: Any, right: Any, operator: str) -> int:
    """Bits of an integer `left op right` (0 when not integers), estimated without computing it."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 0
    if operator == "*":
        return left.bit_length() + right.bit_length()
    return left.bit_length() * right if right > 0 and abs(left) > 1 else 0


def _format_width(spec: str) -> int:
    """The largest number in a format spec (width or precision): what it may pad the value to."""
    runs = _DIGITS.findall(spec)
    return max((MAX_CHARS + 1 if len(r) > 7 else int(r) for r in runs), default=0)


def _percent_size(text: str, args: Any) -> int:
    """An upper bound of `text % args` in characters, from its widths and its arguments' sizes."""
    directives = _PERCENT.findall(text)
    star = any("*" in (w, p) for w, p in directives)
    values = args if isinstance(args, tuple) else (args,)
    widths = [int(n) for w, p in directives for n in (w, p) if n.isdigit() and len(n) <= 7]
    if any(len(n) > 7 for w, p in directives for n in (w, p)):
        return MAX_CHARS + 1
    if star:
        widths += [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return len(text) + len(directives) * (max(widths, default=0) + size_of(values))


class _WidthBound:
    """Formatter mixin: refuse a field whose width or precision, or whose value, is too large."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        _grow(max(_format_width(format_spec), size_of(value)), f"the format {format_spec!r}")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _BoundedFormatter(_WidthBound, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_WidthBound, SandboxedEscapeFormatter):
    pass


def _str_method_size(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """What a str method that can grow its string would build, or None for the others."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(text), first if isinstance(first, int) else 0)
    if name == "expandtabs":
        tab = first if isinstance(first, int) else 8
        return len(text) + text.count("\t") * max(tab, 0)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = len(text) + 1 if not args[0] else text.count(args[0])
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            hits = min(hits, args[2])
        return len(text) + hits * max(0, len(args[1]) - len(args[0]))
    if name == "translate" and isinstance(first, Mapping):
        return len(text) * max([size_of(v) for v in first.values()] + [1])
    return None


def _join_size(separator: Any, items: Sequence[Any]) -> int:
    return size_of(list(items)) + size_of(separator) * max(0, len(items) - 1)


def _bounded_join(pieces: Iterable[Any], limit: int = MAX_CHARS, what: str = "joining strings") -> str:
    """`"".join(map(str, pieces))`, stopping as soon as the result would pass `limit` characters."""
    parts, total = [], 0
    for piece in pieces:
        _grow(size_of(piece), what)
        text = piece if isinstance(piece, str) else str(piece)
        total += len(text)
        if total > limit:
            raise TemplateLimitError(f"{what} makes more than {limit:,} characters (MAX_PROMPT_CHARS)")
        parts.append(text)
    return "".join(parts)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` passes here before it is made a string: refuse one too large to print."""
    _grow(size_of(value), "printing a value")
    return value


@pass_context
def _counted(context: Context, iterable: Any) -> Iterator[Any]:
    """What every `{% for %}` iterates: its iterable, each item charged as one step (never folded)."""
    for item in iterable:
        _spend(steps=1)
        yield item


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - Jinja's names
    _grow(n * max * 12, "lipsum")
    return str(generate_lorem_ipsum(n, html, min, max))


def _filter_size(name: str, arguments: Mapping[str, Any]) -> int:
    """An upper bound of what filter `name` builds from its bound arguments (0: nothing to bound)."""
    a = arguments
    if name == "center":
        return max(size_of(a["value"]), a.get("width", 80) if isinstance(a.get("width", 80), int) else 0)
    if name == "indent":
        width = a.get("width", 4)
        pad = width if isinstance(width, int) else size_of(width)
        return size_of(a["value"]) + (str(a["value"]).count("\n") + 1) * max(pad, 0)
    if name == "replace":
        return _str_method_size(str(a["value"]), "replace", (str(a["old"]), str(a["new"])), {}) or 0
    if name == "format":
        return _percent_size(str(a["value"]), tuple(a.get("args", ())) or dict(a.get("kwargs", {})))
    if name == "join":
        return _join_size(a.get("d", ""), a["value"])
    if name == "sum":  # summing sequences builds every partial sum: quadratic
        total, start = size_of(a["value"]) + size_of(a.get("start", 0)), a.get("start", 0)
        return total * (1 + len(a["value"]) // 2) if isinstance(start, _SEQUENCES) else total
    if name == "slice":  # builds one list per slice
        return a["slices"] * 8 if isinstance(a.get("slices"), int) else 0
    if name == "tojson":
        return size_of(a["value"]) * (2 + (a.get("indent") or 0))
    if name == "wordwrap":
        lines = size_of(a["value"]) // max(a.get("width", 79), 1) + 1
        return size_of(a["value"]) + lines * size_of(a.get("wrapstring") or "\n")
    if name in ("pprint", "string", "list"):
        return size_of(a["value"])
    return 0


_MATERIALISED = ("join", "sum")  # iterables measured first, so read into a list


def _bounded_filter(name: str, fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` that first checks the size of what it would build (keeps Jinja's pass_* marker).

    The arguments are bound to the filter's own parameters, its subject (the filtered value) as "value".
    """
    passes = _PassArg.from_obj(fn) is not None
    params = list(inspect.signature(fn).parameters.values())
    if passes and params and params[0].name in ("eval_ctx", "environment", "context"):
        params = params[1:]  # an async variant's wrapper passes it but does not declare it
    signature, subject = inspect.Signature(params), params[0].name

    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> T:
        lead, rest = (args[:1], args[1:]) if passes else ((), args)
        if len(rest) == 1 and not kwargs and name not in _MATERIALISED:  # the common case, without binding
            _grow(_filter_size(name, {subject: rest[0], "value": rest[0]}), f"the {name} filter")
            return fn(*args)
        bound = signature.bind(*rest, **kwargs)
        if name in _MATERIALISED and not isinstance(bound.arguments[subject], (str, list, tuple)):
            bound.arguments[subject] = list(bound.arguments[subject])
        _grow(_filter_size(name, {**bound.arguments, "value": bound.arguments[subject]}), f"the {name} filter")
        return fn(*lead, *bound.args, **bound.kwargs)

    return bounded


_GROWING_FILTERS = ("center", "indent", "replace", "format", "join", "sum", "slice", "tojson", "wordwrap",
                    "pprint", "string", "list")


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` joined by the environment's bounded join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_strings((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every growing operation bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(_bounded_join)  # block captures (`{% set %}...`), macro bodies, whole renders

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        self.globals["lipsum"] = _lipsum
        self.filters["_counted"] = _counted
        for name in _GROWING_FILTERS:
            self.filters[name] = _bounded_filter(name, self.filters[name])

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree, with every loop's iterable passed through `_counted`."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_counted", [], [], None, None, lineno=loop.iter.lineno)
        return tree

    def join_strings(self, parts: Iterable[Any]) -> str:
        return _bounded_join(parts, what="'~'")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        bits = _int_bits(left, right, operator)
        if bits > defaults.MAX_TEMPLATE_INT_BITS:
            raise TemplateLimitError(f"'{operator}' would compute an integer of about {bits:,} bits; a template "
                                     f"may compute at most {defaults.MAX_TEMPLATE_INT_BITS:,} (MAX_TEMPLATE_INT_BITS)")
        _grow(_binop_size(operator, left, right), f"'{operator}'")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's
        """A call from a template: one step, and a str method that grows its string is measured first."""
        _spend(steps=defaults.TEMPLATE_MACRO_STEPS if isinstance(__obj, Macro) else 1)
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name == "join" and args:
            items = list(args[0])
            _grow(_join_size(owner, items), "str.join")
            args = (items, *args[1:])
        elif isinstance(owner, str):
            size = _str_method_size(owner, name, args, kwargs)
            if size is not None:
                _grow(size, f"str.{name}")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map through a formatter that bounds every field's width and value."""
        if super().wrap_str_format(value) is None:
            return None
        text, is_map = value.__self__, value.__name__ == "format_map"
        escape = _BoundedEscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) else None
        vformat = (escape or _BoundedFormatter(self)).vformat

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(text)(vformat(text, args, kwargs))

        return update_wrapper(bounded, value)


def _binop_size(operator: str, left: Any, right: Any) -> int:
    """Characters or items `left op right` would hold when it builds a sequence (0 otherwise)."""
    if operator == "*" and isinstance(right, _SEQUENCES) and isinstance(left, int):
        left, right = right, left
    if operator == "*" and isinstance(left, _SEQUENCES) and isinstance(right, int):
        return size_of(left) * max(right, 0) if right > 1 else 0
    if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        return size_of(left) + size_of(right)
    if operator == "%" and isinstance(left, str):
        return _percent_size(left, right)
    return 0


@functools.lru_cache(maxsize=1)
def environment() -> BoundedEnvironment:
    return BoundedEnvironment()


@functools.lru_cache(maxsize=256)
def compile_template(text: str):  # type: ignore[no-untyped-def]
    return environment().from_string(text)


def render_all(texts: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """Each of a row's templates rendered with `values`, sharing one row's bounds (MAX_PROMPT_CHARS of
    output in all); RenderError says which text failed and why."""
    token = _BUDGET.set(_Budget())
    try:
        rendered: list[str] = []
        left = MAX_CHARS
        for index, text in enumerate(texts):
            try:
                out = _bounded_join(compile_template(text).generate(**values), left, "the rendered prompt")
            except Exception as e:  # TemplateError, a bound, or anything a filter or operator raises
                raise RenderError(index, e) from e
            rendered.append(out)
            left -= len(out)
        return rendered
    finally:
        _BUDGET.reset(token)
