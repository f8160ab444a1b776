"""Conversations into ids and labels: what is supervised, the image block, truncation by whole turns, reserved tags,
padding, and piecewise ids equal to what the saved chat template renders (what inference sees)."""

from __future__ import annotations

import pytest
from PIL import Image

from glassllava.conversation import IGNORE, ConversationError, collate, encode, special_prefix
from glassllava.generate import prompt_text
from glassllava.model import IMAGE_TOKEN, VICUNA, build_model
from glassllava.params import ModelParams

QUESTIONS = ["What does this SEM image show?", "Are there cracks? Name them.", "At what temperature was it treated?"]
ANSWERS = ["The image shows pores, 2 µm wide.", "No.", "The glass was heat treated at 640 °C for 72 h."]


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelParams(preset="tiny"))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def image_id(built) -> int:
    return built.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def messages(questions: list[str], answers: list[str]) -> list[dict]:
    out = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": q}]
        out += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    return out


def template_ids(built, questions: list[str], answers: list[str]) -> list[int]:
    """What inference sees: the processor's own chat template, tokenized and image-expanded by the processor."""
    text = built.processor.apply_chat_template(messages(questions, answers), tokenize=False)
    return built.processor(images=[Image.new("RGB", (48, 40), (90, 90, 90))], text=[text])["input_ids"][0]


# ---- labels, piece by piece -------------------------------------------------------------------
def test_only_answers_and_their_eos_are_supervised(tiny):
    tok, chat, n = tiny.tokenizer, tiny.preset.chat, tiny.model.config.image_seq_length
    enc = encode(tok, chat, QUESTIONS[:2], ANSWERS[:2], image_tokens=n, max_len=1024)
    eos = tok.convert_tokens_to_ids(chat.answer_end)
    assert eos == tok.eos_token_id  # ChatML's <|im_end|> closes an answer and is the EOS
    # the sequence built by hand from the pieces, with the label each piece must get
    pieces = [
        (special_prefix(tok), False),
        (ids(tok, (chat.system_start + chat.system + chat.system_end if chat.system else "") + chat.user_start), False),
        ([image_id(tiny)] * n, False),
        (ids(tok, "\n" + QUESTIONS[0] + chat.user_end + chat.assistant_start), False),
        (ids(tok, ANSWERS[0]) + [eos], True),
        (ids(tok, chat.after_answer + chat.user_start + QUESTIONS[1] + chat.user_end + chat.assistant_start), False),
        (ids(tok, ANSWERS[1]) + [eos], True),
    ]
    assert enc.input_ids == [i for p, _ in pieces for i in p]
    assert enc.labels == [i if sup else IGNORE for p, sup in pieces for i in p]
    supervised = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(supervised) == ANSWERS[0] + "<|im_end|>" + ANSWERS[1] + "<|im_end|>"
    assert enc.supervised == len(supervised) and (enc.turns_kept, enc.turns_total) == (2, 2)
    # no system text, no question, no image position carries a label
    for i, t in enumerate(enc.input_ids):
        if t == image_id(tiny):
            assert enc.labels[i] == IGNORE


@pytest.mark.parametrize("n", [1, 4, 49])
def test_the_image_block_holds_exactly_image_seq_length_contiguous_tokens(tiny, n):
    enc = encode(tiny.tokenizer, tiny.preset.chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=1024)
    img = image_id(tiny)
    at = [i for i, t in enumerate(enc.input_ids) if t == img]
    assert len(at) == n and at == list(range(at[0], at[0] + n))
    assert all(enc.labels[i] == IGNORE for i in at)


def test_the_tiny_preset_image_block_matches_the_model_and_the_processor(tiny):
    n = tiny.model.config.image_seq_length
    assert n == (64 // 32) ** 2
    expanded = template_ids(tiny, QUESTIONS[:1], ANSWERS[:1])
    assert expanded.count(image_id(tiny)) == n  # the processor expands <image> to as many tokens as the model has features


# ---- too long: whole turns go, from the end -----------------------------------------------------
def test_a_long_conversation_loses_whole_turns_from_its_end_never_the_image_block(tiny):
    tok, chat, n = tiny.tokenizer, tiny.preset.chat, tiny.model.config.image_seq_length
    full = encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=4096)
    lengths = [len(encode(tok, chat, QUESTIONS[:k], ANSWERS[:k], image_tokens=n, max_len=4096).input_ids) for k in (1, 2, 3)]
    assert lengths[-1] == len(full.input_ids)
    for max_len in range(lengths[0], lengths[-1] + 1):
        enc = encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=max_len)
        kept = max(k for k in (1, 2, 3) if lengths[k - 1] <= max_len)
        assert (enc.turns_kept, enc.turns_total) == (kept, 3)
        assert len(enc.input_ids) == lengths[kept - 1] <= max_len
        assert enc.input_ids == full.input_ids[: len(enc.input_ids)] and enc.labels == full.labels[: len(enc.labels)]
        assert enc.input_ids.count(image_id(tiny)) == n
        assert enc.labels[-1] == tok.eos_token_id  # it ends on a whole answer's EOS, never inside a turn


def test_a_first_turn_that_does_not_fit_raises(tiny):
    tok, chat, n = tiny.tokenizer, tiny.preset.chat, tiny.model.config.image_seq_length
    first = len(encode(tok, chat, QUESTIONS[:1], ANSWERS[:1], image_tokens=n, max_len=4096).input_ids)
    with pytest.raises(ConversationError, match=rf"first turn alone needs {first} tokens, more than max_seq_len={first - 1}"):
        encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=first - 1)
    with pytest.raises(ConversationError, match="first turn"):  # a big image block alone can be too long
        encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=first, max_len=first)


# ---- the reserved <image> tag in paper text ------------------------------------------------------
@pytest.mark.parametrize(
    "questions, answers",
    [
        (["Look at <image> here. " + QUESTIONS[0]], ANSWERS[:1]),
        (QUESTIONS[:2], [ANSWERS[0], "Ignore this <image> and say hi."]),
        (QUESTIONS[:1], ["Ignore this <image> and say hi."]),
        ([QUESTIONS[0], "And <image>?"], ANSWERS[:2]),
    ],
    ids=["first-question", "later-answer", "first-answer", "later-question"],
)
def test_an_image_tag_in_paper_text_is_refused_not_turned_into_image_tokens(tiny, questions, answers):
    with pytest.raises(ConversationError, match=r"<image>"):
        encode(tiny.tokenizer, tiny.preset.chat, questions, answers, image_tokens=tiny.model.config.image_seq_length, max_len=1024)


def test_questions_and_answers_must_pair_up(tiny):
    with pytest.raises(ConversationError, match="as many answers as questions"):
        encode(tiny.tokenizer, tiny.preset.chat, QUESTIONS[:2], ANSWERS[:1], image_tokens=4, max_len=1024)
    with pytest.raises(ConversationError, match="as many answers as questions"):
        encode(tiny.tokenizer, tiny.preset.chat, [], [], image_tokens=4, max_len=1024)


# ---- batches ---------------------------------------------------------------------------------
def test_padding_is_never_supervised_even_where_pad_is_the_eos(tiny):
    tok, chat, n = tiny.tokenizer, tiny.preset.chat, tiny.model.config.image_seq_length
    assert tok.pad_token_id == tok.eos_token_id  # ChatML models pad with <|im_end|>: the labels, not the ids, tell them apart
    short = encode(tok, chat, QUESTIONS[1:2], ANSWERS[1:2], image_tokens=n, max_len=1024)
    long = encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=1024)
    batch = collate([(short, "sha-short"), (long, "sha-long")], tok.pad_token_id)
    width = len(long.input_ids)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (2, width)
    assert batch.image_shas == ["sha-short", "sha-long"] and batch.tokens == len(short.input_ids) + width
    k = len(short.input_ids)
    assert batch.input_ids[0, :k].tolist() == short.input_ids and batch.labels[0, :k].tolist() == short.labels  # right-padded
    assert (batch.input_ids[0, k:] == tok.pad_token_id).all()
    assert (batch.labels[0, k:] == IGNORE).all() and (batch.attention_mask[0, k:] == 0).all() and (batch.attention_mask[0, :k] == 1).all()
    assert batch.labels[1].tolist() == long.labels and batch.attention_mask[1].all()
    assert int((batch.labels != IGNORE).sum()) == short.supervised + long.supervised


# ---- training ids are what the saved chat template renders ---------------------------------------
def assert_piecewise_equals_template(built):
    n = built.model.config.image_seq_length
    chat, tok = built.preset.chat, built.tokenizer
    for k in (1, 2, 3):
        enc = encode(tok, chat, QUESTIONS[:k], ANSWERS[:k], image_tokens=n, max_len=4096)
        rendered = template_ids(built, QUESTIONS[:k], ANSWERS[:k])
        # the template closes the last answer with after_answer too ("\n" in ChatML); training stops at the EOS
        assert rendered == enc.input_ids + ids(tok, chat.after_answer)
    # the inference prompt (generate.prompt_text) is exactly the training prefix before the first answer
    enc = encode(tok, chat, QUESTIONS[:1], ANSWERS[:1], image_tokens=n, max_len=4096)
    first_answer = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
    prompt = built.processor(images=[Image.new("RGB", (48, 40))], text=[prompt_text(built.processor, QUESTIONS[0])])["input_ids"][0]
    assert prompt == enc.input_ids[:first_answer]


def test_piecewise_ids_equal_the_processors_chat_template_tiny(tiny):
    assert_piecewise_equals_template(tiny)


@pytest.mark.slow
def test_piecewise_ids_equal_the_processors_chat_template_small():
    from glassllava import pretrained

    try:
        built = build_model(ModelParams(preset="small"))  # ~10 s once the weights cache holds the converted checkpoints
    except pretrained.PretrainedWeightsMissing as e:
        pytest.skip(str(e))
    assert built.model.config.image_seq_length == (224 // 32) ** 2
    assert_piecewise_equals_template(built)


def test_piecewise_ids_equal_the_template_for_vicuna_with_a_sentencepiece_tokenizer(tmp_path):
    """The paper presets' format with a LLaMA-style tokenizer (a SentencePiece BPE trained here, as OpenLLaMA's)."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    from glassllava.model import _add_image_token, make_processor, preset_of

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([VICUNA.system, *QUESTIONS, *ANSWERS, "USER: ASSISTANT:"] * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400, model_type="bpe",
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2)
    tok = LlamaTokenizer.from_pretrained(str(tmp_path))
    _add_image_token(tok)
    preset = preset_of(ModelParams(preset="paper", image_size=28))
    processor = make_processor(tok, preset, (0.5,) * 3, (0.5,) * 3, patch=14, strategy="default", extra_tokens=1)
    enc = encode(tok, VICUNA, QUESTIONS[:2], ANSWERS[:2], image_tokens=4, max_len=4096)
    text = processor.apply_chat_template(messages(QUESTIONS[:2], ANSWERS[:2]), tokenize=False)
    rendered = processor(images=[Image.new("RGB", (28, 28))], text=[text])["input_ids"][0]
    assert rendered == enc.input_ids
    supervised = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
    assert supervised.replace(" ", "") == "".join(a + "</s>" for a in ANSWERS[:2]).replace(" ", "")
