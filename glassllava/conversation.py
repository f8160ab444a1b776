"""Conversations into token ids and labels, piece by piece; batches for training.

A conversation (one image, one or more question-answer turns) becomes

    [bos] system user_start <image>*N "\\n" question user_end  assistant_start | answer answer_end | after_answer user_start ...

where only the answers and their end-of-turn token (the EOS) are supervised: every other position
has label -100. Each text segment between two supervision boundaries is tokenized on its own and the
ids are concatenated, never re-derived by re-tokenizing the whole prompt (LLaVA's "tokenization
mismatch → loss 0" bug). The segments are exactly the text that the processor's chat template renders,
so inference through plain transformers sees the ids training saw (tested).

Invariants, checked here rather than discovered in a forward pass: the image block holds exactly
``image_tokens`` copies of the image token; a conversation too long for ``max_len`` loses whole turns
from its end, never part of the image block or of a turn; every sample has supervised tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glassllava.model import IMAGE_TOKEN, ChatFormat

IGNORE = -100


class ConversationError(ValueError):
    """A conversation cannot become a training sample (the message says why)."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    turns_kept: int
    turns_total: int

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text by itself (Llama's <s>; nothing for ChatML models)."""
    plain, full = _ids(tokenizer, "a"), tokenizer("a")["input_ids"]
    return full[: full.index(plain[0])] if plain and plain[0] in full else []


def prompt_segments(chat: ChatFormat, questions: list[str], answers: list[str]) -> list[tuple[str, bool]]:
    """(text, supervised) segments of a conversation; the first question carries the image tag."""
    segments: list[tuple[str, bool]] = []
    head = chat.system_start + chat.system + chat.system_end if chat.system else ""
    for i, (q, a) in enumerate(zip(questions, answers)):
        lead = (IMAGE_TOKEN + "\n") if i == 0 else ""
        prompt = (head if i == 0 else chat.after_answer) + chat.user_start + lead + q + chat.user_end + chat.assistant_start
        segments.append((prompt, False))
        segments.append((a + chat.answer_end, True))
    return segments


def encode(
    tokenizer, chat: ChatFormat, questions: list[str], answers: list[str], *, image_tokens: int, max_len: int
) -> Encoded:
    """Token ids and labels of one conversation (see the module docstring)."""
    if not questions or len(questions) != len(answers):
        raise ConversationError(f"a conversation needs as many answers as questions (got {len(questions)} and {len(answers)})")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = special_prefix(tokenizer)
    labels: list[int] = [IGNORE] * len(ids)
    kept = 0
    for turn, ((prompt, _), (answer, _)) in enumerate(zip(*[iter(prompt_segments(chat, questions, answers))] * 2)):
        p = _ids(tokenizer, prompt)
        if turn == 0:
            if p.count(image_id) != 1:
                raise ConversationError(f"the first prompt must hold one {IMAGE_TOKEN} tag, found {p.count(image_id)}")
            at = p.index(image_id)
            p = p[:at] + [image_id] * image_tokens + p[at + 1 :]
        elif image_id in p:
            raise ConversationError(f"paper text contains the reserved tag {IMAGE_TOKEN} in turn {turn + 1}")
        a = _ids(tokenizer, answer)
        if len(ids) + len(p) + len(a) > max_len:
            if turn == 0:
                raise ConversationError(f"the first turn alone needs {len(p) + len(a)} tokens, more than max_seq_len={max_len}")
            break  # drop whole turns from the end; never cut through a turn or the image block
        ids += p + a
        labels += [IGNORE] * len(p) + a
        kept += 1
    enc = Encoded(ids, labels, kept, len(questions))
    if ids.count(image_id) != image_tokens:
        raise ConversationError(f"{ids.count(image_id)} image tokens for {image_tokens} image features (paper text holds {IMAGE_TOKEN}?)")
    if enc.supervised == 0:
        raise ConversationError("no supervised token (empty answers)")
    return enc


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), -100 on prompt, image and padding
    image_shas: list[str]
    tokens: int  # non-padding tokens (text + image placeholders)

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.image_shas, self.tokens)


def collate(samples: list[tuple[Encoded, str]], pad_id: int) -> Batch:
    """Right-pad a list of (encoded conversation, image sha) into one batch."""
    width = max(len(e.input_ids) for e, _ in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (e, _) in enumerate(samples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return Batch(ids, mask, labels, [sha for _, sha in samples], int(mask.sum()))
