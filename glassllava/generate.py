"""Answers from a trained model: a saved model folder (or a model in memory) plus images and questions in, text out.

Only plain transformers is used (``AutoModelForImageTextToText`` and ``AutoProcessor``, the chat template
saved with the processor), so what is measured here is what a user of ``data/model`` gets. Batches are
left-padded, use the KV cache, and decode greedily up to ``max_new_tokens`` (the generation config's
EOS ends an answer early). ``blank_image=True`` replaces every image by a uniform grey one of the same
size: the blind baseline, which shows whether the model reads the pixels at all.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class Answer:
    text: str
    new_tokens: int
    seconds: float


def load(model_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None):
    """(model, processor) from a Hugging Face folder, in eval mode, on ``device`` (default: GPU if any), in bf16
    where the device computes it natively (GPUs, CPUs with AVX512-BF16 or AMX), else fp32."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from glassllava.model import inference_dtype

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or inference_dtype(device)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, AutoProcessor.from_pretrained(model_dir)


def _image(item: dict, blank: bool) -> Image.Image:
    image = item["image"]
    image = image if isinstance(image, Image.Image) else Image.open(image)
    image = image.convert("RGB")
    return Image.new("RGB", image.size, (128, 128, 128)) if blank else image


def prompt_text(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def answer_questions(
    model, processor, items: list[dict], *, max_new_tokens: int = 96, batch_size: int = 16, blank_image: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """Greedy answers for ``items`` ({"image": path or PIL image, "question": str}), in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # the same question wording together: similar prompt lengths (less padding) and similar answer lengths (a batch stops early)
    order = sorted(range(len(items)), key=lambda i: (len(items[i]["question"]), items[i]["question"]))
    out: list[Answer | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        tick = time.perf_counter()
        texts = [prompt_text(processor, items[i]["question"]) for i in idx]
        images = [_image(items[i], blank_image) for i in idx]
        enc = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left").to(device)
        enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        new = generated[:, enc["input_ids"].shape[1] :]
        seconds = (time.perf_counter() - tick) / len(idx)
        for row, i in enumerate(idx):
            ids = new[row].tolist()
            eos = model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            n = next((k for k, t in enumerate(ids) if t in eos), len(ids))
            out[i] = Answer(processor.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), n, seconds)
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def stream_answer(model, processor, image, question: str, *, max_new_tokens: int = 256) -> Iterator[str]:
    """Yield the answer's text piece by piece as it is generated (for ``glassllava ask``)."""
    from threading import Thread

    from transformers import TextIteratorStreamer

    device = next(model.parameters()).device
    enc = processor(images=[_image({"image": image}, False)], text=[prompt_text(processor, question)], return_tensors="pt").to(device)
    enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**enc, "max_new_tokens": max_new_tokens, "do_sample": False, "streamer": streamer})
    thread.start()
    yield from streamer
    thread.join()
