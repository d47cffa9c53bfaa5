"""The self judge's follow-up turn: the conversation as the engine saw and wrote it, then the turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workers.engine import FollowUps


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_the_follow_up_is_the_chat_template_of_the_whole_conversation(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Name a prime."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    reply_ids = tokenizer.encode("Seven is prime.", add_special_tokens=False)
    ids = FollowUps(tokenizer).ids(prompt_ids, reply_ids, None, "Rate it.")
    assert ids[: len(prompt_ids) + len(reply_ids)] == prompt_ids + reply_ids  # the cached prefix, untouched
    whole = messages + [{"role": "assistant", "content": "Seven is prime."}, {"role": "user", "content": "Rate it."}]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(whole, tokenize=False, add_generation_prompt=True)


def test_a_reply_ending_in_eos_gives_way_to_the_templates_end_of_turn(tokenizer: Any) -> None:
    follow = FollowUps(tokenizer)
    reply_ids = tokenizer.encode("Seven.", add_special_tokens=False)
    with_eos = follow.ids([5], [*reply_ids, tokenizer.eos_token_id], None, "Rate it.")
    assert with_eos == follow.ids([5], reply_ids, None, "Rate it.")
    assert tokenizer.eos_token_id not in with_eos


def test_a_reply_cut_by_a_stop_string_is_read_as_stored(tokenizer: Any) -> None:
    follow = FollowUps(tokenizer)
    generated = tokenizer.encode("Seven.###junk", add_special_tokens=False)
    ids = follow.ids([5], generated, "Seven.", "Rate it.")
    assert tokenizer.decode(ids[1:]).startswith("Seven.<|end|>") and "junk" not in tokenizer.decode(ids)


def test_a_model_without_a_chat_template_gets_the_turn_as_a_paragraph(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = None
    assert tokenizer.decode(FollowUps(tokenizer).turn("Rate it.")) == "\n\nRate it.\n"
