"""Final artifacts: the file a stage writes when it finishes, and the one loader that turns any of them into a
ready model.

An artifact is a dict saved with torch.save that loads with `weights_only=True`:
    {"kind": "thinker", "format": 1, "model": state_dict, "model_config": {...}, "config": {...}, ...}
`kind` names what it holds (the stage's name, which is also its file's stem: thinker.pt, audio_enc.pt,
vision.pt, rvq_codec.pt, talker.pt, ocr.pt; two are named otherwise: Stage E's omni is omni_final.pt, the
vocoder's hifigan.pt) and `format` the layout of this file. `KINDS` lists, per kind, the entries it must hold and how it becomes a model. Loading
is strict: an unknown kind or format, a missing entry or weights that do not fit the stored config is an error
naming the file (ArtifactError, an omni.errors.UserError), never a silently random model.

    a = load_artifact("runs/demo/thinker/thinker.pt")            # any kind; kind="thinker" to insist
    a.model, a.tokenizer                                          # Thinker in eval mode, its Tokenizer

Nothing here imports the training engine: inference, export and chat load through this module alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from omni.config import from_dict
from omni.errors import ArtifactError
from omni.export import is_component, read_component

FORMAT = 1  # layout of every artifact written by this code; bump when an entry changes meaning


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint or artifact file as a dict, or an error that names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn, truncated or foreign file
        raise ArtifactError(f"checkpoint {path} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"checkpoint {path} holds a {type(state).__name__}, not a μOmni checkpoint")
    return state


@dataclass
class Artifact:
    """A loaded artifact: its model (on the requested device, in eval mode) and what using it needs."""
    kind: str
    path: Path
    model: torch.nn.Module
    config: dict = field(repr=False)   # the training config it was written with
    tokenizer: object = None           # thinker, vision, omni (and a Thinker-conditioned talker): Tokenizer
    vocab: object = None               # audio_enc, ocr: CharVocab; talker: TextVocab
    decoder: object = None             # audio_enc: its CTC decoding (omni.ctc.Decoder)
    features: object = None            # audio_enc, rvq_codec, talker, omni, vocoder: the MelConfig of their audio
    synthesis: dict = None             # vocoder: how it voices unless told otherwise ({"refine": N})
    voices: list = None                # talker: the voices it speaks in, the default first
    system_prompt: str = None          # omni: the system turn of a conversation without one


@dataclass
class Kind:
    """One kind of artifact: its final file name, the entries beyond COMMON it must hold, and `build(state,
    where) -> (model, extras)`, which makes the model (weights not yet loaded) and the Artifact's other fields."""
    filename: str
    entries: tuple[str, ...]
    build: Callable
    upgrade: Callable | None = None   # state → None: brings an older layout of this format up to date in place


COMMON = ("kind", "format", "model", "model_config", "config")


def _tokenizer(state):
    from omni.tokenizer import Tokenizer
    return Tokenizer(model_proto=state["tokenizer"].numpy().tobytes())


def _mel(state, where):
    from omni.audio import MelConfig
    return from_dict(MelConfig, state["features"], where=where)


def _thinker(state, where):
    from omni.models.thinker import Thinker, ThinkerConfig
    return Thinker(from_dict(ThinkerConfig, state["model_config"], where=where)), {"tokenizer": _tokenizer(state)}


def _audio_enc(state, where):
    from omni.charlm import CharLM
    from omni.ctc import DecodeConfig, Decoder
    from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig
    from omni.vocab import CharVocab
    model = AudioEncoder(from_dict(AudioEncoderConfig, state["model_config"], where=where))
    vocab = CharVocab(state["vocab"])
    decoder = Decoder(vocab)   # written before the character LM: greedy
    if state.get("lm") is not None:
        decoder = Decoder(vocab, CharLM.from_dict(state["lm"]), from_dict(DecodeConfig, state["decode"], where=where))
    return model, {"vocab": vocab, "features": _mel(state, where), "decoder": decoder}


def _vision(state, where):
    from omni.models.thinker import Thinker, ThinkerConfig
    from omni.models.vision import ClipConfig, ClipModel
    thinker = None
    if state["thinker_config"] is not None:  # the frozen Thinker of the text side, saved inside the weights
        thinker = Thinker(from_dict(ThinkerConfig, state["thinker_config"], where=where))
    model = ClipModel(from_dict(ClipConfig, state["model_config"], where=where), thinker)
    return model, {"tokenizer": _tokenizer(state)}


def _codec(state, where):
    from omni.models.codec import CodecConfig, MelCodec
    return MelCodec(from_dict(CodecConfig, state["model_config"], where=where)), {"features": _mel(state, where)}


def _talker(state, where):
    from omni.models.codec import CodecConfig
    from omni.models.talker import DEFAULT_VOICE, Talker, TalkerConfig
    from omni.models.thinker import Thinker, ThinkerConfig
    from omni.vocab import TextVocab, lexicon
    thinker, extras = None, {}
    if state.get("thinker_config") is not None:  # a Thinker-conditioned Talker: the frozen Thinker is inside
        thinker = Thinker(from_dict(ThinkerConfig, state["thinker_config"], where=where))
        extras["tokenizer"] = _tokenizer(state)
    # written before duration_spread: a point estimate of each token's log-duration
    cfg = from_dict(TalkerConfig, {"duration_spread": False, **state["model_config"]}, where=where)
    voices = state.get("voices") or [DEFAULT_VOICE]   # written before voices: its one voice
    if len(voices) != max(1, cfg.n_voices):
        raise ValueError(f"{len(voices)} voice names {voices} for a Talker of {max(1, cfg.n_voices)} voice(s)")
    model = Talker(cfg, from_dict(CodecConfig, state["codec_config"], where=where), thinker)
    phonemes = state.get("phonemes") or ()   # written before the lexicon: letters only
    vocab = TextVocab(state["vocab"], phonemes, lexicon(state.get("lexicon", "")) if phonemes else None)
    return model, {"vocab": vocab, "features": _mel(state, where), "voices": list(voices),
                   **extras}


def _talker_with_codec_copies(state) -> None:
    """Talkers written before they read their codec's config kept copies of four of its fields."""
    if "codec_config" not in state:
        for key in ("codebooks", "codebook_size", "n_mels", "block"):
            state["model_config"].pop(key, None)
        state["codec_config"] = state["config"]["codec"]["model"]


def check_talker_codec(talker_codec: dict, codec: dict, talker_path, codec_path) -> None:
    """A Talker speaks the codes of the codec it was trained with: the codec config a talker artifact records
    (`codec_config`) must be the codec artifact's `model_config`, else an error naming both files."""
    if talker_codec != codec:
        diff = [f"{k} {v} vs {codec.get(k)}" for k, v in talker_codec.items() if codec.get(k) != v]
        raise ArtifactError(f"{talker_path} was trained with another codec than {codec_path}: {', '.join(diff)}")


def _omni(state, where):
    from omni.models.omni import OmniConfig, OmniModel
    model = OmniModel(from_dict(OmniConfig, state["model_config"], where=where))
    model.freeze(thinker=True, vision=True, audio=True)   # loaded to be used: nothing trains
    features = _mel(state, where) if state["features"] is not None else None
    return model, {"tokenizer": _tokenizer(state), "features": features, "system_prompt": state["system_prompt"]}


def _omni_prompt_from_config(state) -> None:
    """Omni artifacts written before the system prompt was an entry of its own had it in the training config."""
    state.setdefault("system_prompt", state["config"].get("system_prompt", ""))


def _ocr(state, where):
    from omni.models.ocr import OCRConfig, OCRModel
    from omni.vocab import CharVocab
    return OCRModel(from_dict(OCRConfig, state["model_config"], where=where)), {"vocab": CharVocab(state["vocab"])}


def _vocoder(state, where):
    from omni.models.vocoder import Generator, VocoderConfig
    features = _mel(state, where)
    model = Generator(from_dict(VocoderConfig, state["model_config"], where=where), features)
    return model, {"features": features, "synthesis": state["synthesis"]}


def _vocoder_before_the_split(state) -> None:
    """A vocoder written before its iSTFT generator was split into backbone, head and inverse STFT, before
    `refine` left the model config for `synthesis`, or before the vector phase head (its head predicts the
    angle itself): read in place as it is written now."""
    config = state["model_config"]
    state.setdefault("synthesis", {"refine": config.pop("refine", 0)})
    if config.pop("phase", "absolute") != "absolute":
        raise ArtifactError("its phase 'integrated' is no longer supported: train the vocoder again")
    config.setdefault("phase_head", "angle")    # written before the vector phase head
    renamed = {"net.head.": "net.head.proj.", **{f"net.{k}.": f"net.backbone.{k}." for k in
                                                 ("inp", "norm", "blocks", "out_norm")}}
    if config.get("generator") == "istft" and "net.inp.weight" in state["model"]:
        state["model"] = {next((new + k[len(old):] for old, new in renamed.items() if k.startswith(old)), k): v
                          for k, v in state["model"].items()}


KINDS: dict[str, Kind] = {
    "thinker": Kind("thinker.pt", ("tokenizer",), _thinker),
    "audio_enc": Kind("audio_enc.pt", ("vocab", "features"), _audio_enc),
    "vision": Kind("vision.pt", ("thinker_config", "tokenizer"), _vision),
    "rvq_codec": Kind("rvq_codec.pt", ("features",), _codec),
    "talker": Kind("talker.pt", ("vocab", "features", "codec_config"), _talker, _talker_with_codec_copies),
    "omni": Kind("omni_final.pt", ("tokenizer", "features", "sources", "system_prompt"), _omni,
                 _omni_prompt_from_config),
    "ocr": Kind("ocr.pt", ("vocab",), _ocr),
    "vocoder": Kind("hifigan.pt", ("features", "synthesis"), _vocoder, _vocoder_before_the_split),
}


def check_entries(state: dict, path: str | Path) -> Kind:
    """The Kind of an artifact dict, or an error naming the file and what is wrong with it. An older layout of
    this format is brought up to date in place first (Kind.upgrade)."""
    if "optimizer" in state or "optimizers" in state:
        raise ArtifactError(f"{path} is a step checkpoint (training state), not a final artifact; the stage writes "
                         f"its final artifact ({', '.join(k.filename for k in KINDS.values())}) when it "
                         f"finishes, and that is what loads here")
    if "kind" not in state:
        raise ArtifactError(f"{path} has no 'kind' entry: not a μOmni artifact of format {FORMAT} (artifacts "
                         f"written before kinds existed must be trained again: rerun the stage with --fresh)")
    kind = KINDS.get(state["kind"])
    if kind is None:
        raise ArtifactError(f"{path}: unknown artifact kind {state['kind']!r}; this code loads {', '.join(KINDS)}")
    if state.get("format") != FORMAT:
        raise ArtifactError(f"{path}: artifact format {state.get('format')!r}, but this code reads format {FORMAT}; "
                         f"use the μOmni version that wrote it, or train the stage again")
    if kind.upgrade is not None and all(k in state for k in COMMON):
        kind.upgrade(state)
    missing = [k for k in COMMON + kind.entries if k not in state]
    if missing:
        raise ArtifactError(f"{path}: {state['kind']} artifact lacks the entries {missing}")
    return kind


def load_artifact(path: str | Path, kind: str | None = None, device="cpu") -> Artifact:
    """Any final artifact as a ready model in eval mode on `device`: a .pt file, a stage's save_dir (with
    `kind`), an exported component folder or an export folder (with `kind`; omni.export). `kind` insists on
    one kind (an artifact of another kind is an error naming the file)."""
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(KINDS)}")
    if kind is not None and path.is_dir() and not is_component(path):
        path = path / kind if is_component(path / kind) else path / KINDS[kind].filename
    state = read_component(path) if path.is_dir() and is_component(path) else read_checkpoint(path)
    spec = check_entries(state, path)
    if kind is not None and state["kind"] != kind:
        raise ArtifactError(f"{path} is a {state['kind']} artifact, but a {kind} ({KINDS[kind].filename}) is "
                         f"needed here")
    try:
        model, extras = spec.build(state, str(path))
    except ValueError as e:  # a stored config this code does not know (ConfigError), a broken vocabulary
        raise ArtifactError(f"{path}: cannot rebuild its {state['kind']} model: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not match the stored model config: {e}") from None
    return Artifact(state["kind"], path, model.to(device).eval(), state["config"], **extras)
