"""The bounded template sandbox: no template can hang analysis or rendering, or build a huge prompt."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jinja2.sandbox import SecurityError

from orchestrator import defaults
from orchestrator.errors import RowErrorCode
from orchestrator.plan.planner import make_plan
from tests.unit.specs import template_spec
from workers import sandbox, template_checks
from workers.prompts import shard_rows

FAST_S = 2.0  # every bomb below is refused well within this on these 2-core machines


def render(text: str, **values: Any) -> str:
    return sandbox.render_all([text], values)[0]


def refusal(text: str, **values: Any) -> BaseException:
    """The cause a bomb's render fails with, checked to come fast."""
    started = time.perf_counter()
    with pytest.raises(sandbox.RenderError) as e:
        render(text, **values)
    assert time.perf_counter() - started < FAST_S
    return e.value.cause


BOMBS = [
    "{{ 9**(9**9) }}",
    "{{ 'a' * 1000000000 }}",
    "{{ 1000000000 * 'a' }}",
    "{{ [0] * 1000000000 }}",
    "{{ [[0] * 1000000] * 1000000 }}",
    "{{ 'a'.center(10**9) }}",
    "{{ 'a'.ljust(10**9) }}",
    "{{ 'a'.rjust(10**9) }}",
    "{{ 'a'.zfill(10**9) }}",
    "{{ ('\t' * 1000).expandtabs(10**6) }}",
    "{{ ('a' * 1000).replace('a', 'b' * 100000) }}",
    "{{ 'ab'.translate({97: 'x' * 1000000}) }}",
    "{{ ('x' * 100000).join(['a'] * 100000) }}",
    "{{ '{:1000000000}'.format(1) }}",
    "{{ '{:.1000000000f}'.format(1.0) }}",
    "{{ '{:{w}}'.format(1, w=10**9) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ '%1000000000d'|format(1) }}",
    "{{ 'a'|center(10**9) }}",
    "{{ 'a\nb'|indent(10**9) }}",
    "{{ range(100000)|join('x' * 100000) }}",
    "{{ ([[0]] * 500000)|sum(start=[]) }}",
    "{{ [1, 2]|tojson(indent=10**9) }}",
    "{{ range(10)|slice(10**9)|list }}",
    "{{ ('a b ' * 100000)|wordwrap(1, wrapstring='x' * 1000) }}",
    "{{ lipsum(10**9) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set x %}{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}{% endset %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
]


@pytest.mark.parametrize("text", BOMBS)
def test_a_resource_bomb_is_refused_quickly_with_a_security_error(text: str) -> None:
    assert isinstance(refusal(text), SecurityError)


@pytest.mark.parametrize("text", BOMBS)
def test_analysing_a_bomb_neither_hangs_nor_builds_it(text: str) -> None:
    started = time.perf_counter()
    template_checks.undeclared_variables(text)  # Jinja's constant folding would evaluate `9**(9**9)` here
    assert time.perf_counter() - started < FAST_S


def test_a_huge_power_names_the_integer_bound() -> None:
    assert "MAX_TEMPLATE_INT_BITS" in str(refusal("{{ 9**(9**9) }}"))


def test_a_huge_repetition_names_the_size_bound() -> None:
    assert "MAX_PROMPT_CHARS" in str(refusal("{{ 'a' * 1000000000 }}"))


def test_an_endless_loop_names_the_step_bound() -> None:
    assert "TEMPLATE_MAX_STEPS" in str(refusal("{% for i in range(100000) %}{% for j in range(100000) %}"
                                               "{% endfor %}{% endfor %}"))


def test_range_stays_within_jinjas_max_range() -> None:
    cause = refusal("{% for i in range(10**9) %}x{% endfor %}")
    assert isinstance(cause, OverflowError) and "MAX_RANGE" in str(cause)


def test_a_render_longer_than_the_prompt_bound_is_refused() -> None:
    cause = refusal("{% for i in range(2000) %}{{ w }}{% endfor %}", w="x" * 1000)
    assert isinstance(cause, sandbox.TemplateLimitError) and "rendered prompt" in str(cause)


def test_a_render_just_within_the_prompt_bound_is_kept() -> None:
    assert len(render("{{ w }}{{ w }}", w="x" * (defaults.MAX_PROMPT_CHARS // 2))) == defaults.MAX_PROMPT_CHARS


def test_a_rows_messages_share_one_prompt_bound() -> None:
    half = "x" * (defaults.MAX_PROMPT_CHARS // 2 + 1)
    with pytest.raises(sandbox.RenderError) as e:
        sandbox.render_all(["{{ w }}", "{{ w }}"], {"w": half})
    assert e.value.index == 1


def test_sandbox_escapes_are_still_refused() -> None:
    assert isinstance(refusal("{{ ''.__class__ }}"), SecurityError)


@pytest.mark.parametrize("text,expected", [
    ("{{ 'ab' * 3 }}|{{ 2**100 }}|{{ [1] * 3 }}", "ababab|1267650600228229401496703205376|[1, 1, 1]"),
    ("{{ '%05d' % 3 }}|{{ '{:>4}'.format('x') }}|{{ '%s-%s'|format(1, 2) }}", "00003|   x|1-2"),
    ("{{ range(4)|join(',') }}|{{ [1, 2]|sum }}|{{ [[1], [2]]|sum(start=[]) }}", "0,1,2,3|3|[1, 2]"),
    ("{{ 'x'|center(5) }}|{{ 'a\nb'|indent(2) }}|{{ {'a': 1}|tojson }}", "  x  |a\n  b|{\"a\": 1}"),
    ("{{ range(6)|slice(2)|list }}|{{ 'a b c'|wordwrap(2) }}", "[[0, 1, 2], [3, 4, 5]]|a\nb\nc"),
    ("{% for x in xs if x > 1 %}{{ loop.index }}{{ x }}{% else %}none{% endfor %}|{{ 'a' ~ 1 }}", "1223|a1"),
    ("{% set s %}{% for x in xs %}{{ x }}{% endfor %}{% endset %}{{ s }}|{{ ', '.join(['a', 'b']) }}", "123|a, b"),
])
def test_ordinary_templates_render_as_in_plain_jinja(text: str, expected: str) -> None:
    assert render(text, xs=[1, 2, 3]) == expected


def test_a_template_analysis_past_its_time_limit_is_a_timeout() -> None:
    with pytest.raises(sandbox.TemplateTimeout, match="took longer than 0.1 s"):
        template_checks.within(0.1, "sleeping", time.sleep, 5)


def test_an_oversized_prompt_is_its_rows_template_error() -> None:
    spec = template_spec({"n": [10, 2000]}, text="{% for i in range(n) %}{{ '.' * 1000 }}{% endfor %}")
    plan = make_plan(spec)
    small, big = [row for shard in plan.shards() for row in shard_rows(spec, plan, shard)]
    assert small.prompt == "." * 10_000 and small.failure is None
    assert big.failure is not None and big.failure.code == RowErrorCode.TEMPLATE_ERROR
    assert "MAX_PROMPT_CHARS" in big.failure.message
