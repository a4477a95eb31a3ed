"""Conversations rendered with a chat template, learned on the assistant turns only (see `distill.llm.data`).

Which tokens are learned. A template only turns messages into text; most have no `{% generation %}`
tags marking the assistant's part, so the part is found from the template's own renderings of the
conversation's prefixes, then mapped onto tokens by their character offsets:

  * for assistant message i, `head` = the messages before it rendered with the generation prompt
    (`add_generation_prompt=True`): the text a model is given before it answers. Where the whole
    conversation's rendering starts with `head`, the answer's content is searched from there on (else
    from the end of the previous answer), so a prompt that quotes the answer does not mislead it;
  * the end-of-turn text is what the template writes after the content when the conversation ends with
    that message (messages up to i rendered alone), trailing whitespace left out: e.g. `<|im_end|>` or
    the eos token. It is learned where the whole rendering has it right after the content: the model
    must emit it to stop;
  * a token is learned (its label is its id; every other label -100) when its character span overlaps
    the content or the end-of-turn text. A token straddling the boundary (rare: a header merged with
    the content's first characters) is learned too.

This needs no cooperation from the template and no second tokenization: the labelled tokens are those
of the one tokenization of the whole rendering, the same ids the model sees. A template that rewrites
an answer's content (so it cannot be found in the rendering) is refused, naming the message.

Roles: system, user and assistant are always allowed (a template that cannot take one says so with
`raise_exception`, reported as one line); any other role only where the template's source names it as
a quoted string (e.g. `message['role'] == 'tool'`), since a template that never mentions a role has no
considered way to render it. A message whose content the template leaves out of the rendering is
refused too: the data would be silently lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distill.errors import DistillError
from distill.fingerprint import digest_text
from distill.llm.data.sources import Conversation, TextSettings

KNOWN_ROLES = ("system", "user", "assistant")
# Marker-like strings of a template's text (`<|im_start|>`, `<|user|>`): special tokens of a trained BPE.
MARKER = re.compile(r"<\|[^|<>\s]{1,40}\|>")
IGNORE_INDEX = -100


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())[:300]


class ChatTemplate:
    """A Jinja chat template rendered as `tokenizer.apply_chat_template(..., tokenize=False)` does (the same
    sandboxed environment, the tokenizer's special tokens as variables), with the spans it learns."""

    def __init__(self, source: str, special_tokens: Mapping[str, Any]) -> None:
        self.source = source
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        self.digest = digest_text(["chat-template", source])

    def markers(self) -> list[str]:
        """The `<|...|>` strings of the template's source, in order of first appearance."""
        return list(dict.fromkeys(MARKER.findall(self.source)))

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, where: str = ""
    ) -> str:
        """The template's text for `messages` (may be empty: the generation prompt alone); errors in one line."""
        import jinja2  # noqa: PLC0415  (with transformers: only chat data need them)
        from transformers.utils.chat_template_utils import render_jinja_template  # noqa: PLC0415

        try:
            rendered, _ = render_jinja_template(
                conversations=[list(messages)],
                chat_template=self.source,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateSyntaxError as err:
            raise DistillError(
                f"the chat template is not valid Jinja: {_one_line(err.message or err)} (template line {err.lineno}); "
                "check lm_data.chat_template"
            ) from None
        except jinja2.TemplateError as err:  # raise_exception(...), an undefined variable used, the sandbox
            raise DistillError(f"{where}: the chat template refused the conversation: {_one_line(err)}") from None
        except Exception as err:  # noqa: BLE001  (a template can fail in any way: report it as one line)
            raise DistillError(
                f"{where}: the chat template failed on the conversation ({type(err).__name__}: {_one_line(err)})"
            ) from None
        return rendered[0]

    def check_roles(self, conversation: Conversation) -> None:
        for number, message in enumerate(conversation.messages, start=1):
            role = message["role"]
            if role not in KNOWN_ROLES and not re.search(r"(['\"])" + re.escape(role) + r"\1", self.source):
                raise DistillError(
                    f"{conversation.name}: message {number} has role '{role}', which the chat template does not name "
                    "(system, user and assistant are always allowed, other roles where the template's source "
                    "names them)"
                )

    def render_conversation(self, conversation: Conversation) -> Conversation:
        """Set `conversation.text` (the whole rendering) and `.spans` (the character ranges learned)."""
        self.check_roles(conversation)
        messages, where = conversation.messages, conversation.name
        full = self.render(messages, where=where)
        for number, message in enumerate(messages, start=1):
            content = message["content"].strip()
            if content and content not in full:
                raise DistillError(
                    f"{where}: message {number} ({message['role']}): the chat template leaves its content out "
                    "of the rendered text"
                )
        spans, cursor = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = self._assistant_span(messages, i, full, cursor, where)
            cursor = span[1]
            if i >= conversation.learn_from:
                spans.append(span)
        conversation.text, conversation.spans = full, spans
        return conversation

    def _assistant_span(
        self, messages: list[dict[str, Any]], i: int, full: str, cursor: int, where: str
    ) -> tuple[int, int]:
        content = messages[i]["content"]
        head = self.render(messages[:i], add_generation_prompt=True, where=where)
        begin = len(head) if len(head) >= cursor and full.startswith(head) else cursor
        found = content
        start = full.find(found, begin)
        if start < 0 and content.strip() != content:  # a template that trims the content
            found = content.strip()
            start = full.find(found, begin)
        if start < 0:
            raise DistillError(
                f"{where}: message {i + 1} (assistant): the chat template does not write its content after the "
                "conversation before it, so its tokens cannot be found"
            )
        content_end = start + len(found)
        alone = self.render(messages[: i + 1], where=where)  # the conversation ending with this answer
        if alone.startswith(head):
            tail = alone[len(head) :]
            at = tail.find(found)
        else:
            tail = alone
            at = tail.rfind(found)
        end_of_turn = tail[at + len(found) :].rstrip() if at >= 0 else ""
        if end_of_turn and full.startswith(end_of_turn, content_end):
            return start, content_end + len(end_of_turn)
        return start, content_end

    def prompt(self, conversation: Conversation) -> tuple[str, str]:
        """The text a model answers from (the conversation up to its last assistant message, with the generation
        prompt) and the reference answer (that message's content)."""
        last = conversation.last_assistant
        text = self.render(conversation.messages[:last], add_generation_prompt=True, where=conversation.name)
        return text, conversation.messages[last]["content"]


def span_labels(ids: Sequence[int], offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Each token's id where its character range (`offsets`) overlaps one of `spans`, else -100.

    A token of no width (some byte-level pieces of a character) counts where its position lies in a span.
    """
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (token, (lo, hi)) in enumerate(zip(ids, offsets, strict=True)):
        while k < len(spans) and spans[k][1] <= lo:  # spans are sorted and apart
            k += 1
        if k == len(spans):
            break
        a, b = spans[k]
        if (max(lo, a) < min(hi, b)) or (lo == hi and a <= lo < b):
            labels[t] = int(token)
    return labels


class ChatMixin(TextSettings):
    """`TextDataModule`'s chat rendering: its template, the rendered conversations and their token labels."""

    chat_template: str | None
    tokenizer_name: str
    _tokenizer: Any
    _template: ChatTemplate | None
    _ready: Callable[[Any], Any]  # TokenizerMixin
    _load_tokenizer: Callable[[list], Any]  # TokenizerMixin

    def _chat(self) -> ChatTemplate:
        """The chat template in use: `chat_template` from the config, else the tokenizer's own."""
        if self._template is not None:
            return self._template
        from distill.llm.data.tokenizer import EOS_TOKEN, PAD_TOKEN  # noqa: PLC0415  (tokenizer imports this module)

        if self.tokenizer_name == "bpe":  # the BPE's special tokens are known before it is trained
            source, special = self.chat_template, {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        else:
            if self._tokenizer is None:  # a local pretrained tokenizer: loaded before the data are read
                self._tokenizer = self._ready(self._load_tokenizer([]))
            source, special = self.chat_template, self._tokenizer.special_tokens_map
            own = getattr(self._tokenizer, "chat_template", None)
            if source is None and isinstance(own, dict):
                own = own.get("default")
            source = source if source is not None else own
        if not source:
            raise DistillError(
                f"lm_data.chat=true but tokenizer '{self.tokenizer_name}' has no chat template: "
                "set lm_data.chat_template to a Jinja template (configs/lm_data/chat.yaml has one)"
            )
        self._template = ChatTemplate(source, special)
        return self._template

    def _rendered(self, conversation: Conversation) -> Conversation:
        return conversation if conversation.text is not None else self._chat().render_conversation(conversation)

    def _render_all(self, splits: Mapping[str, list]) -> None:
        """Render every conversation: a bad one is refused here, while the data are read."""
        for items in splits.values():
            for item in items:
                if isinstance(item, Conversation):
                    self._rendered(item)

    def _chat_units(self, conversations: list[Conversation]) -> list[tuple[list[int], list[int]]]:
        """Each conversation's token ids (its whole rendering) and labels (-100 outside the learned spans)."""
        if not conversations:
            return []
        texts = [self._rendered(c).text for c in conversations]
        try:
            encoded = self._tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        except (NotImplementedError, ValueError, TypeError) as err:
            raise DistillError(
                f"chat data need a fast tokenizer (character offsets of its tokens); '{self.tokenizer_name}' gave: "
                f"{_one_line(err)}"
            ) from None
        return [
            (list(ids), span_labels(ids, offsets, c.spans))
            for c, ids, offsets in zip(conversations, encoded["input_ids"], encoded["offset_mapping"], strict=True)
        ]
