"""Conversations into token ids and labels, piece by piece; batches for training.

A conversation (one image, one or more question-answer turns) becomes

    [bos] system user_start <image>*N "\\n" question user_end  assistant_start | answer answer_end | after_answer user_start ...

where only the answers and their end-of-turn token (the EOS) are supervised: every other position
has label -100. The conversation is built piece by piece from the chat format's segments (prompt,
answer, prompt, answer ...), tokenized once as the processor tokenizes the text its chat template
renders, and each token's label comes from the segment its first character falls in (the tokenizer's
offsets). No mask length is ever derived by re-tokenizing a prefix, which is LLaVA's "tokenization
mismatch → loss 0" bug, and the ids are those inference sees, for ChatML and SentencePiece tokenizers alike.

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
    """(text, supervised) segments of a conversation, exactly as the chat template renders it; the first question carries the image tag."""
    segments: list[tuple[str, bool]] = []
    head = chat.system_start + chat.system + chat.system_end if chat.system else ""
    for i, (q, a) in enumerate(zip(questions, answers)):
        lead = (IMAGE_TOKEN + "\n") if i == 0 else ""
        prompt = (head if i == 0 else chat.after_answer) + chat.user_start + lead + q + chat.user_end + chat.assistant_start
        segments.append((prompt, False))
        segments.append((chat.answer_start + a + chat.answer_end, True))
    return segments


def encode(
    tokenizer, chat: ChatFormat, questions: list[str], answers: list[str], *, image_tokens: int, max_len: int
) -> Encoded:
    """Token ids and labels of one conversation (see the module docstring)."""
    if not questions or len(questions) != len(answers):
        raise ConversationError(f"a conversation needs as many answers as questions (got {len(questions)} and {len(answers)})")
    for turn, text in enumerate(questions + answers):
        if IMAGE_TOKEN in text:
            raise ConversationError(f"paper text contains the reserved tag {IMAGE_TOKEN} (turn text {turn + 1})")
    segments = prompt_segments(chat, questions, answers)
    text = "".join(t for t, _ in segments)
    spans, at = [], 0  # character span of each segment
    for seg, supervised in segments:
        spans.append((at, at + len(seg), supervised))
        at += len(seg)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if enc["input_ids"].count(image_id) != 1:
        raise ConversationError(f"the conversation must hold one {IMAGE_TOKEN} tag, found {enc['input_ids'].count(image_id)}")
    ids: list[int] = []
    labels: list[int] = []
    turn_ends: list[int] = []  # token count at the end of each turn's answer
    seg = 0
    for token, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"]):
        if stop == start and token != image_id and start == 0 and not ids:  # BOS and other added specials before the text
            ids.append(token)
            labels.append(IGNORE)
            continue
        while seg < len(spans) - 1 and start >= spans[seg][1]:
            if spans[seg][2]:
                turn_ends.append(len(ids))
            seg += 1
        if token == image_id:
            ids += [image_id] * image_tokens
            labels += [IGNORE] * image_tokens
            continue
        ids.append(token)
        labels.append(token if spans[seg][2] else IGNORE)  # a token is supervised when it starts inside an answer segment
    turn_ends.append(len(ids))
    kept = len(turn_ends)
    while kept and turn_ends[kept - 1] > max_len:
        kept -= 1  # drop whole turns from the end; never cut through a turn or the image block
    if kept == 0:
        raise ConversationError(f"the first turn alone needs {turn_ends[0]} tokens, more than max_seq_len={max_len}")
    cut = turn_ends[kept - 1]
    out = Encoded(ids[:cut], labels[:cut], kept, len(questions))
    if out.input_ids.count(image_id) != image_tokens:
        raise ConversationError(f"{out.input_ids.count(image_id)} image tokens for {image_tokens} image features")
    if out.supervised == 0:
        raise ConversationError("no supervised token (empty answers)")
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded, or (1, T) packed
    attention_mask: torch.Tensor | None  # (B, T); None for a packed row (position_ids say where conversations start)
    labels: torch.Tensor  # (B, T), -100 on prompt, image and padding
    image_shas: list[str]
    tokens: int  # non-padding tokens (text + image placeholders)
    position_ids: torch.Tensor | None = None  # (1, T) packed: 0, 1, ... restarting at every conversation

    def to(self, device) -> "Batch":
        def move(t):
            return None if t is None else t.to(device)

        return Batch(self.input_ids.to(device), move(self.attention_mask), self.labels.to(device), self.image_shas, self.tokens,
                     move(self.position_ids))


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


def pack(samples: list[tuple[Encoded, str]], pad_id: int, row_tokens: int) -> Batch:
    """Conversations packed into rows of at most ``row_tokens`` tokens: the same tokens, labels and loss as
    ``collate``, with padding only at the end of the shorter rows.

    Positions restart at 0 for every conversation. With no attention mask, transformers reads those
    restarts as packed sequences and keeps attention inside each conversation (its packed-sequence
    mask for SDPA and FlexAttention, variable-length kernels for flash attention). A conversation's
    first token is never supervised (it is prompt), so the shifted loss never reaches across a
    boundary; a row's padding comes after its last conversation and, attention being causal, changes
    nothing before it. Rows are filled first-fit in the given order (image features follow the same
    order); a conversation longer than ``row_tokens`` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index, (e, _) in enumerate(samples):
        if e.labels[0] != IGNORE:
            raise ValueError("a packed conversation must start with an unsupervised token")
        n = len(e.input_ids)
        fit = next((r for r, left in enumerate(room) if left >= n), None)
        if fit is None:
            rows.append([])
            room.append(row_tokens)
            fit = len(rows) - 1
        rows[fit].append(index)
        room[fit] -= n
    width = max(sum(len(samples[i][0].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    order: list[int] = []
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            e = samples[i][0]
            n = len(e.input_ids)
            ids[r, col : col + n] = torch.tensor(e.input_ids)
            labels[r, col : col + n] = torch.tensor(e.labels)
            positions[r, col : col + n] = torch.arange(n)
            col += n
        if col < width:  # padding continues the row's last conversation (never attended to by real tokens)
            start = positions[r, col - 1] + 1
            positions[r, col:] = torch.arange(start, start + width - col)
        order += row
    tokens = sum(len(e.input_ids) for e, _ in samples)
    return Batch(ids, None, labels, [samples[i][1] for i in order], tokens, positions)
