"""The self judge's follow-up turn: the conversation as the engine saw and wrote it, then the turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec.job import Sampling
from workers.engine import SAME_TURN, FollowUps
from workers.prompts import PromptRow


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


def test_the_same_turn_gives_the_conversation_as_it_stands(tokenizer: Any) -> None:
    reply_ids = tokenizer.encode("Seven.", add_special_tokens=False)
    ids = FollowUps(tokenizer).ids([5, 6], [*reply_ids, tokenizer.eos_token_id], None, SAME_TURN)
    assert ids == [5, 6, *reply_ids]  # no turn added; the EOS gives way, as it would to a turn


def test_a_row_of_token_ids_goes_on_with_its_user_turns_or_its_text(tokenizer: Any) -> None:
    follow = FollowUps(tokenizer)
    turn = PromptRow(index=-1, row_id="r", seed=1, sampling=Sampling(), prompt_token_ids=[5],
                     messages=[{"role": "user", "content": "Rate it."}])
    assert follow.after(turn) == follow.turn("Rate it.")
    same = PromptRow(index=-1, row_id="r", seed=1, sampling=Sampling(), prompt_token_ids=[5], prompt='","score":')
    assert follow.after(same) == tokenizer.encode('","score":', add_special_tokens=False)


def test_turns_holding_row_data_are_not_kept(tokenizer: Any) -> None:
    follow = FollowUps(tokenizer)
    for i in range(FollowUps.CACHED_TURNS + 10):
        follow.turn(f"Rate it against reference {i}.")
    assert len(follow.turns) == FollowUps.CACHED_TURNS
    assert follow.turn("Rate it against reference 99.") == follow.turn("Rate it against reference 99.")
