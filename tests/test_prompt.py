"""Prompt anatomy: parts render in order, token accounting adds up, the answer mask is exact."""

from __future__ import annotations

from promptintern.prompt import (
    IGNORE_INDEX,
    PARTS,
    Example,
    Prompt,
    PromptFormat,
    Template,
    chat_prompt_text,
    count_tokens,
    encode_chat,
    render_user,
    to_messages,
)

FMT = PromptFormat()
FULL = Prompt(
    template=Template("Answer with one bash command.", "ls: -l long, -a all\nwc: -l lines"),
    query="count lines in a.txt",
    examples=(Example("list all files", "ls -a"), Example("long listing", "ls -l")),
)


def test_parts_render_in_order_and_empty_parts_vanish():
    text = render_user(FULL, FMT)
    order = [text.index(s) for s in ("Answer with", "ls: -l", "Examples:", "Request: count")]
    assert order == sorted(order)
    bare = render_user(Prompt(Template("", ""), "count lines in a.txt"), FMT)
    assert bare == "Request: count lines in a.txt"


def test_token_parts_sum_to_total_within_chat_overhead(tiny_model):
    _, tok = tiny_model
    counts = count_tokens(tok, FULL, FMT, answer="wc -l a.txt")
    assert counts["total"] == sum(counts[p] for p in PARTS) + counts["overhead"]
    bare = count_tokens(tok, Prompt(Template("", ""), FULL.query), FMT)
    # the chat template + separators cost the same few tokens whatever the parts
    assert 0 < bare["overhead"] <= 30
    assert abs(counts["overhead"] - bare["overhead"]) <= 8  # blank-line separators between parts


def test_encode_chat_masks_everything_but_the_answer(tiny_model):
    _, tok = tiny_model
    msgs = to_messages(FULL, FMT)
    enc = encode_chat(tok, msgs, "wc -l a.txt")
    n_prompt = len(tok(chat_prompt_text(tok, msgs), add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer_ids = enc["input_ids"][n_prompt:]
    assert enc["labels"][n_prompt:] == answer_ids
    decoded = tok.decode(answer_ids)
    assert decoded.startswith("wc -l a.txt") and decoded.rstrip().endswith(tok.eos_token or "<|im_end|>")
