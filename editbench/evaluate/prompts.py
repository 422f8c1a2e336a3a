"""Prompt formats: how every prompt of a run is presented to the model.

``raw`` (the LocFT-BF paper's protocol and the default) feeds the released text as is.
``qa`` wraps it as ``Question: <prompt>\\nAnswer:``, and ``chat`` renders it as one user turn
with the tokenizer's chat template and its generation prompt: instruct models given raw
questions often answer nothing at all. A format applies to every prompt alike (edit,
paraphrase, locality, portability and generation prompts), before and after editing and
for the editors too, and is part of a run's protocol.
"""

from __future__ import annotations

import dataclasses

from editbench.api import EditRequest
from editbench.errors import EditbenchError

PROMPT_FORMATS = {
    "raw": "the released prompt text, no template",
    "qa": "'Question: {prompt}\\nAnswer:'",
    "chat": "the tokenizer's chat template: one user turn with the prompt, generation prompt added",
}


def format_prompt(prompt: str, fmt: str, tokenizer=None) -> str:
    check_prompt_format(fmt)
    if fmt == "raw":
        return prompt
    if fmt == "qa":
        return f"Question: {prompt.strip()}\nAnswer:"
    if not getattr(tokenizer, "chat_template", None):
        raise EditbenchError("--prompt-format chat: this tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.strip()}], tokenize=False, add_generation_prompt=True
    )


def check_prompt_format(fmt: str) -> None:
    """One line naming the known formats when ``fmt`` is not one of them."""
    if fmt not in PROMPT_FORMATS:
        raise EditbenchError(f"--prompt-format {fmt!r}: expected one of {sorted(PROMPT_FORMATS)}")


def format_request(request: EditRequest, fmt: str, tokenizer=None) -> EditRequest:
    """The request with every prompt in ``fmt`` (answers and the subject unchanged)."""
    if fmt == "raw":
        return request

    def f(text: str) -> str:
        return format_prompt(text, fmt, tokenizer)

    return dataclasses.replace(
        request,
        prompt=f(request.prompt),
        rephrase_prompts=tuple(f(p) for p in request.rephrase_prompts),
        locality=tuple(dataclasses.replace(loc, prompt=f(loc.prompt)) for loc in request.locality),
        portability=tuple(dataclasses.replace(p, prompt=f(p.prompt)) for p in request.portability),
        generation_prompts=tuple(f(p) for p in request.generation_prompts),
    )
