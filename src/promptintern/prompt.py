"""Prompt anatomy: ``(template, examples, query) -> answer``.

PromptIntern shrinks the prompt part by part, so a prompt keeps its parts apart until it is
rendered: the template's *instruction* and *documentation* (both compressible), the retrieved
*examples* (absorbed stage by stage) and the *query* (always kept). Rendering puts everything
in one user turn of the tokenizer's chat template; the answer is the assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
PARTS = ("instruction", "documentation", "examples", "query")


@dataclass(frozen=True)
class Template:
    """The recurring part of a prompt: an instruction block and a documentation block."""

    instruction: str
    documentation: str = ""


EMPTY_TEMPLATE = Template("", "")


@dataclass(frozen=True)
class Example:
    """A solved demonstration (a training instance's query and answer)."""

    query: str
    answer: str


@dataclass(frozen=True)
class PromptFormat:
    """How a task lays out the parts of its prompt as text."""

    system: str = "You are a helpful assistant."
    examples_header: str = "Examples:"
    example_format: str = "Request: {query}\nAnswer: {answer}"
    query_format: str = "Request: {query}"
    answer_format: str = "{answer}"

    def render_answer(self, answer: str) -> str:
        return self.answer_format.format(answer=answer)


@dataclass(frozen=True)
class Prompt:
    """One prompt: a (possibly compressed) template, retrieved examples and the query."""

    template: Template
    query: str
    examples: tuple[Example, ...] = field(default_factory=tuple)


def render_parts(prompt: Prompt, fmt: PromptFormat) -> dict[str, str]:
    """The text of each part, as it appears in the user turn ('' when absent)."""
    examples = ""
    if prompt.examples:
        shots = [
            fmt.example_format.format(query=e.query, answer=fmt.render_answer(e.answer))
            for e in prompt.examples
        ]
        examples = fmt.examples_header + "\n\n" + "\n\n".join(shots)
    return {
        "instruction": prompt.template.instruction.strip(),
        "documentation": prompt.template.documentation.strip(),
        "examples": examples,
        "query": fmt.query_format.format(query=prompt.query),
    }


def render_user(prompt: Prompt, fmt: PromptFormat) -> str:
    """The user turn: the non-empty parts joined by blank lines, query last."""
    return "\n\n".join(t for t in render_parts(prompt, fmt).values() if t)


def to_messages(prompt: Prompt, fmt: PromptFormat, answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages for ``prompt``; with ``answer``, the assistant turn is appended."""
    msgs = [{"role": "system", "content": fmt.system}] if fmt.system else []
    msgs.append({"role": "user", "content": render_user(prompt, fmt)})
    if answer is not None:
        msgs.append({"role": "assistant", "content": fmt.render_answer(answer)})
    return msgs


def chat_prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The chat-templated text of ``messages`` ending with the assistant header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], answer_text: str) -> dict[str, list[int]]:
    """Token ids for prompt + answer, with labels masked (-100) everywhere but the answer.

    The answer's span is taken from the chat template itself (full conversation minus the
    generation prompt), so the end-of-turn token is learned and the model stops by itself.
    """
    prompt_text = chat_prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer_text}], tokenize=False
    )
    if not full.startswith(prompt_text):  # templates that rewrite earlier turns
        raise ValueError("chat template is not prefix-stable; cannot mask the prompt")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt_text):].rstrip("\n"), add_special_tokens=False)["input_ids"]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def count_tokens(tokenizer: Any, prompt: Prompt, fmt: PromptFormat, answer: str | None = None) -> dict[str, int]:
    """Tokens per part, plus ``total`` (the chat-templated prompt) and ``answer``.

    ``overhead`` is what the chat template and separators add: total minus the parts.
    """

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    counts = {name: n(text) for name, text in render_parts(prompt, fmt).items()}
    counts["total"] = n(chat_prompt_text(tokenizer, to_messages(prompt, fmt)))
    counts["overhead"] = counts["total"] - sum(counts[p] for p in PARTS)
    if answer is not None:
        counts["answer"] = n(fmt.render_answer(answer))
    return counts
