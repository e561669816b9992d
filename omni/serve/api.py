"""OpenAI's Chat Completions, the subset μOmni answers: a request's JSON read into turns and settings, the
model's work as events, the reply written back as a completion or as streamed chunks.

    req = read_chat_request(body, chat, transcripts)   # APIError (400, naming the field) on bad input
    for event in reply_events(chat, req): ...          # ("text", piece), ("audio", Tensor[T], sentence), ("done", ...)

Media come inline only: an image as a `data:image/...;base64,` URL, audio as base64 WAV; nothing names a file
or a URL for the server to open. Spoken replies are voiced sentence by sentence as the text is generated, so
the first sentence plays while the rest is still being written. Extensions to OpenAI's fields: `top_k`; `truncation: "auto"` (as in OpenAI's Responses API: a
conversation over the context forgets its oldest exchanges, and the reply's `truncated_messages` says how many
messages were left out); and
`"ocr": true` on an image_url part: the OCR model reads the picture (a line of text) into the message's prompt,
as infer_chat.py --ocr does; with no question beside it, the reading is the reply.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import time
import uuid
from dataclasses import dataclass, field
from itertools import chain
from typing import Iterator

import soundfile as sf
import torch

from omni.audio import to_mono_resampled
from omni.chat import Turn
from omni.errors import UserError
from omni.infer.chat import Chat, forget_oldest, speak, user_turn, voices
from omni.infer.omni import ContextFull

MODEL_ID = "uomni"
MAX_AUDIO_S = 30.0          # per clip: longer questions would not fit the Thinker's context anyway
MAX_NEW_TOKENS = 128        # as infer_chat.py
AUDIO_TTL_S = 3600          # how long a spoken reply's transcript is kept for a later turn that names its id
AUDIO_FORMATS = ("wav", "pcm16")


class APIError(Exception):
    """A request that fails, in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    turns: list[Turn]                   # user turns hold their text as sent (user_turn fills in the prompts)
    max_tokens: int = MAX_NEW_TOKENS
    temperature: float = 0.0            # greedy unless asked: what a tiny model answers best (not OpenAI's 1)
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stream: bool = False
    include_usage: bool = False
    audio: bool = False                 # speak the reply
    voice: str = ""
    audio_format: str = "wav"
    ocr: list[bool] = field(default_factory=list)   # per turn: its picture goes through the OCR model
    truncate: bool = False                           # forget the oldest exchanges rather than fail when too long


class Transcripts:
    """What each spoken reply said, by its audio id, for a later request that sends `{"role": "assistant",
    "audio": {"id": ...}}` instead of the text (as OpenAI's clients do). Kept AUDIO_TTL_S seconds."""

    def __init__(self):
        self.by_id: dict[str, tuple[str, float]] = {}

    def add(self, text: str) -> tuple[str, int]:
        now = time.time()
        self.by_id = {k: v for k, v in self.by_id.items() if v[1] > now}
        audio_id = f"audio_{uuid.uuid4().hex}"
        self.by_id[audio_id] = (text, now + AUDIO_TTL_S)
        return audio_id, int(now + AUDIO_TTL_S)

    def get(self, audio_id: str) -> str | None:
        hit = self.by_id.get(audio_id)
        return hit[0] if hit and hit[1] > time.time() else None


# --- reading a request ------------------------------------------------------------------------------------

def _number(body: dict, key: str, default, kind=float, low=None, high=None):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
        raise APIError(400, f"{key} must be {'an integer' if kind is int else 'a number'}, got {v!r}", key)
    if (low is not None and v < low) or (high is not None and v > high):
        raise APIError(400, f"{key} must be between {low} and {high}, got {v}", key)
    return kind(v)


def _b64(data, param: str) -> bytes:
    if not isinstance(data, str):
        raise APIError(400, f"{param} must be a base64 string", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param} is not valid base64", param) from None


def decode_image(url, param: str):
    """A data:image/...;base64 URL -> PIL image (RGB)."""
    from PIL import Image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise APIError(400, f"{param}: give the picture inline as a data:image/...;base64 URL (the server "
                            f"fetches nothing and reads no path)", param)
    head, _, data = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise APIError(400, f"{param} is a data URL of {head[5:] or 'nothing'}, not a base64 image", param)
    try:
        with Image.open(io.BytesIO(_b64(data, param))) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise APIError(400, f"{param} is not a readable image", param) from None


def decode_wav(data, param: str, sample_rate: int) -> torch.Tensor:
    """Base64 WAV (or a data:audio/wav;base64 URL) -> Tensor[T] mono at sample_rate; at most MAX_AUDIO_S."""
    if isinstance(data, str) and data.startswith("data:"):
        data = data.partition(",")[2]
    raw = _b64(data, param)
    try:
        info = sf.info(io.BytesIO(raw))
        wav, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=False)
    except Exception:   # soundfile raises its own LibsndfileError, RuntimeError or OSError
        raise APIError(400, f"{param} is not a WAV file", param) from None
    if info.format != "WAV":
        raise APIError(400, f"{param} is {info.format}, not WAV", param)
    if wav.size == 0:
        raise APIError(400, f"{param} holds no samples", param)
    if len(wav) / sr > MAX_AUDIO_S:
        raise APIError(400, f"{param}: the audio is {len(wav) / sr:.1f} s long; the limit is {MAX_AUDIO_S:g} s",
                       param, code="audio_too_long")
    return to_mono_resampled(torch.from_numpy(wav), sr, sample_rate)


def _message(i: int, m, chat: Chat, transcripts: Transcripts) -> tuple[Turn, bool]:
    """The message as a turn (media decoded) and whether its picture is to be read by the OCR model."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise APIError(400, f"{where} must be an object with a role and a content", where)
    role = {"developer": "system"}.get(m.get("role"), m.get("role"))
    if role not in ("system", "user", "assistant"):
        raise APIError(400, f"{where}.role must be system, user or assistant, got {m.get('role')!r}",
                       f"{where}.role")
    content = m.get("content")
    if role == "assistant" and content is None and isinstance(m.get("audio"), dict):
        said = transcripts.get(m["audio"].get("id"))
        if said is None:
            raise APIError(400, f"{where}.audio.id: no spoken reply with that id (or it expired): send its text "
                                f"as content", f"{where}.audio.id")
        return Turn("assistant", said), False
    if isinstance(content, str):
        return Turn(role, content.strip()), False
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of parts", f"{where}.content")
    texts, images, audio, ocr = [], [], [], False
    for j, part in enumerate(content):
        p = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].strip())
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(decode_image(url.get("url") if isinstance(url, dict) else url, f"{p}.image_url.url"))
            ocr = ocr or part.get("ocr") is True
        elif kind == "input_audio":
            a = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            if a.get("format", "wav") != "wav":
                raise APIError(400, f"{p}.input_audio.format must be wav, got {a.get('format')!r}",
                               f"{p}.input_audio.format")
            audio.append(decode_wav(a.get("data"), f"{p}.input_audio.data", chat.omni.mel.sample_rate))
        elif kind == "text":
            raise APIError(400, f"{p}.text must be a string", f"{p}.text")
        else:
            raise APIError(400, f"{p}.type must be text, image_url or input_audio, got {kind!r}", f"{p}.type")
    if role != "user" and (images or audio):
        raise APIError(400, f"{where}: only user messages may carry pictures or audio", f"{where}.content")
    if ocr and chat.ocr is None:
        raise APIError(400, f"{where}: this model has no OCR part to read the picture (export with --ocr_ckpt)",
                       f"{where}.content")
    if ocr and len(images) != 1:
        raise APIError(400, f"{where}: OCR reads one picture per message, got {len(images)}", f"{where}.content")
    return Turn(role, " ".join(t for t in texts if t), images, audio), ocr


def read_chat_request(body, chat: Chat, transcripts: Transcripts) -> ChatRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "messages must be a non-empty list", "messages")
    read = [_message(i, m, chat, transcripts) for i, m in enumerate(msgs)]
    system = " ".join(t.content for t, _ in read if t.role == "system" and t.content)
    read = ([(Turn("system", system), False)] if system else []) + [(t, o) for t, o in read if t.role != "system"]
    turns = [t for t, _ in read]
    req = ChatRequest(turns, ocr=[o for _, o in read])
    for t in turns:   # an empty message is named here, before it waits in the queue
        if t.role == "user" and not (t.content or t.audio or t.images):
            raise APIError(400, "a user message is empty: give text, a picture or input_audio", "messages")
    if body.get("n", 1) != 1:
        raise APIError(400, "n: one choice per request", "n")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    req.max_tokens = _number(body, limit, MAX_NEW_TOKENS, int, 1, 100_000)
    req.temperature = _number(body, "temperature", 0.0, float, 0, 2)
    req.top_p = _number(body, "top_p", 1.0, float, 0, 1) or 1.0
    req.top_k = _number(body, "top_k", 0, int, 0, 100_000)
    req.seed = _number(body, "seed", 0, int)
    req.stream = body.get("stream") is True
    if body.get("truncation", "disabled") not in ("auto", "disabled"):
        raise APIError(400, f"truncation must be auto or disabled, got {body['truncation']!r}", "truncation")
    req.truncate = body.get("truncation") == "auto"
    req.include_usage = req.stream and (body.get("stream_options") or {}).get("include_usage") is True
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"}:
        raise APIError(400, f"modalities must be [\"text\"] or [\"text\", \"audio\"], got {modalities!r}",
                       "modalities")
    req.audio = "audio" in modalities
    if req.audio:
        names = voices(chat)
        if not names:
            raise APIError(400, "modalities: this model has no Talker, so it cannot speak (export with "
                                "--talker_ckpt)", "modalities")
        a = body.get("audio") or {}
        try:
            req.voice = chat.speaker.voice_name(a.get("voice"))   # none or "default": the first
        except UserError as e:
            raise APIError(400, f"audio.voice: {e}", "audio.voice") from None
        req.audio_format = a.get("format") or "wav"
        if req.audio_format not in AUDIO_FORMATS:
            raise APIError(400, f"audio.format must be one of {', '.join(AUDIO_FORMATS)}, got "
                                f"{req.audio_format!r}", "audio.format")
    return req


# --- the model's work -----------------------------------------------------------------------------------------

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def reply_events(chat: Chat, req: ChatRequest) -> Iterator[tuple]:
    """The worker's part of a request: ("text", piece) as the reply is generated; with audio, ("audio",
    Tensor[T], sentence) as each sentence is complete and spoken; last ("done", usage, finish_reason,
    messages left out by truncation)."""
    turns, given = [], None
    for t, ocr in zip(req.turns, req.ocr or [False] * len(req.turns)):
        if t.role == "user":
            t, extra = user_turn(chat, t.content, t.images, t.audio, ocr)
            given = extra.get("reply")   # the last turn's counts: a reading asked for alone is the reply
        turns.append(t)
    stats = {"prompt_tokens": 0, "tokens": 0, "stopped": True}
    pieces, dropped = ([given], 0) if given is not None else _generate(chat, turns, req, stats)
    pending = ""
    for piece in pieces:
        yield "text", piece
        if req.audio:
            *sentences, pending = SENTENCE_END.split(pending + piece)
            for s in sentences:
                yield from _spoken(chat, s, req)
    if req.audio:
        yield from _spoken(chat, pending, req)
    usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["tokens"],
             "total_tokens": stats["prompt_tokens"] + stats["tokens"]}
    yield "done", usage, "stop" if stats["stopped"] else "length", dropped


def _generate(chat: Chat, turns: list[Turn], req: ChatRequest, stats: dict) -> tuple[Iterator[str], int]:
    """The reply's pieces, and how many messages were forgotten (truncation) to fit the context."""
    history, dropped = turns[:-1], 0
    while True:
        gen = torch.Generator(device=chat.omni.device).manual_seed(req.seed)
        pieces = chat.omni.stream(history + turns[-1:], req.max_tokens, req.temperature, req.top_k, req.top_p,
                                  gen, stats=stats)
        try:
            first = next(pieces, None)   # the prompt is built here: this is where a conversation is too long
        except ContextFull:
            if not (req.truncate and forget_oldest(history)):
                raise
            dropped += 2
            continue
        return chain([] if first is None else [first], pieces), dropped


def _spoken(chat: Chat, sentence: str, req: ChatRequest) -> Iterator[tuple]:
    if re.search(r"\w", sentence):   # punctuation or symbols alone have nothing to say
        yield "audio", speak(chat, sentence.strip(), req.temperature, req.top_k or 20, req.seed, req.voice), sentence


# --- writing the reply ----------------------------------------------------------------------------------------

def encode_audio(wav: torch.Tensor, sample_rate: int, fmt: str) -> str:
    """Base64 of a waveform as 16-bit PCM: a whole WAV file ("wav") or raw little-endian samples ("pcm16")."""
    if fmt == "pcm16":
        raw = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    else:
        buf = io.BytesIO()
        sf.write(buf, wav.numpy(), sample_rate, format="WAV", subtype="PCM_16")
        raw = buf.getvalue()
    return base64.b64encode(raw).decode("ascii")


@dataclass
class Reply:
    """One completion's identity, shared by its chunks."""
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": MODEL_ID}

    def completion(self, text: str, audio: dict | None, usage: dict, finish: str, dropped: int = 0) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        if audio is not None:
            message["audio"] = audio
        return {**self._head("chat.completion"), "usage": usage, "truncated_messages": dropped,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]}

    def chunk(self, delta: dict, finish: str | None = None, dropped: int | None = None) -> dict:
        return {**self._head("chat.completion.chunk"), **({} if dropped is None else {"truncated_messages": dropped}),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}


def model_card(chat: Chat) -> dict:
    """GET /v1/models' entry: OpenAI's fields, and what this model can do (the page builds its menus on it)."""
    return {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "μOmni", "voices": voices(chat),
            "input": ["text"] + (["image"] if chat.omni.model.vision is not None else [])
                     + (["audio"] if chat.omni.model.audio is not None else []),
            "output": ["text"] + (["audio"] if chat.speaker is not None else []), "ocr": chat.ocr is not None,
            "context_tokens": chat.omni.model.thinker.cfg.ctx_len, "system_prompt": chat.omni.system,
            "max_audio_s": MAX_AUDIO_S, "sample_rate": chat.speaker.sample_rate if chat.speaker else None}
