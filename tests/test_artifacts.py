"""The one loader: artifacts name their kind and format; loading is strict and names the file; models and
inference never import the training engine; every shipped config loads and builds its model."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT

from omni.artifacts import FORMAT, KINDS, load_artifact
from omni.config import load_config, to_dict
from omni.models.thinker import Thinker, ThinkerConfig


@pytest.fixture(scope="module")
def tokenizer_bytes(text_data):
    return torch.frombuffer(bytearray((text_data / "tokenizer.model").read_bytes()), dtype=torch.uint8)


def thinker_artifact(path: Path, tokenizer_bytes: torch.Tensor, **changes) -> dict:
    torch.manual_seed(0)
    cfg = ThinkerConfig(vocab_size=320, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, ctx_len=16)
    art = {"kind": "thinker", "format": FORMAT, "model": Thinker(cfg).state_dict(), "model_config": to_dict(cfg),
           "config": {}, "tokenizer": tokenizer_bytes}
    art.update(changes)
    art = {k: v for k, v in art.items() if v is not None}
    torch.save(art, path)
    return art


@pytest.mark.parametrize("changes,error,match", [
    ({"kind": "spaceship"}, ValueError, "unknown artifact kind 'spaceship'"),
    ({"format": FORMAT + 1}, ValueError, f"artifact format {FORMAT + 1}"),
    ({"kind": None}, ValueError, "no 'kind' entry"),
    ({"tokenizer": None}, ValueError, r"lacks the entries \['tokenizer'\]"),
    ({"optimizers": {}}, ValueError, "is a step checkpoint"),
    ({"model_config": {"vocab_size": 320, "n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1,
                       "d_ff": 128, "ctx_len": 16}}, RuntimeError, "weights do not match"),
    ({"model_config": {"d_modle": 32}}, ValueError, "d_modle"),
    ({"tokenizer": torch.zeros(3, dtype=torch.uint8)}, ValueError, "not a SentencePiece model"),
], ids=["unknown-kind", "newer-format", "no-kind", "missing-entry", "step-checkpoint", "mismatch", "bad-config",
        "bad-tokenizer"])
def test_strict_loading_names_the_file(tmp_path, tokenizer_bytes, changes, error, match):
    path = tmp_path / "odd.pt"
    thinker_artifact(path, tokenizer_bytes, **changes)
    with pytest.raises(error, match=match) as e:
        load_artifact(path)
    assert "odd.pt" in str(e.value)


def test_missing_corrupt_and_wrong_kind(tmp_path, tokenizer_bytes):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_artifact(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_artifact(tmp_path / "bad.pt")
    thinker_artifact(tmp_path / "thinker.pt", tokenizer_bytes)
    with pytest.raises(ValueError, match="thinker.pt is a thinker artifact, but a vision"):
        load_artifact(tmp_path / "thinker.pt", "vision")


def test_a_folder_and_a_kind_find_the_file(tmp_path, tokenizer_bytes):
    art = thinker_artifact(tmp_path / "thinker.pt", tokenizer_bytes)
    a = load_artifact(tmp_path, "thinker")
    assert a.kind == "thinker" and isinstance(a.model, Thinker) and not a.model.training
    assert a.tokenizer.vocab_size == 320
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, art["model"][k]), k


def test_models_and_inference_do_not_import_the_training_engine():
    pattern = re.compile(r"^\s*(from|import)\s+omni\.train\b|omni\.train\.", re.M)
    files = [*(ROOT / "omni" / "models").glob("*.py"), *(ROOT / "omni" / "infer").glob("*.py"),
             *(ROOT / "omni" / n for n in ("artifacts.py", "asr.py", "tts.py", "ocr.py", "vocode.py"))]
    assert len(files) > 10
    offenders = [str(f.relative_to(ROOT)) for f in files if pattern.search(f.read_text())]
    assert offenders == []


def build_models(path: Path) -> list[torch.nn.Module]:
    """The models a shipped config describes, built from it (vocabularies that come from data are stubbed)."""
    import train_audio_enc
    import train_talker
    import train_text
    import train_vision
    from omni.models.audio_encoder import AudioEncoder
    from omni.models.codec import MelCodec
    from omni.models.talker import Talker
    from omni.models.vision import ClipModel

    name = path.stem.removesuffix("_tiny")
    if name == "thinker":
        cfg = load_config(train_text.TextConfig, path)
        return [Thinker(cfg.model)]
    if name == "audio_enc":
        cfg = train_audio_enc.AudioEncStage.configure(load_config(train_audio_enc.AudioEncConfig, path))
        return [AudioEncoder(dataclasses.replace(cfg.model, vocab_size=30))]
    if name == "vision":
        cfg = load_config(train_vision.VisionConfig, path)
        thinker = Thinker(ThinkerConfig(vocab_size=64, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64))
        text, caption = (dataclasses.replace(c, vocab_size=64) for c in (cfg.model.text, cfg.model.caption))
        return [ClipModel(dataclasses.replace(cfg.model, text=text, caption=caption),
                          thinker if cfg.use_thinker_for_text else None)]
    if name == "talker":
        cfg = train_talker.TalkerStage.configure(load_config(train_talker.TalkerTrainConfig, path))
        return [MelCodec(cfg.codec.model), Talker(dataclasses.replace(cfg.model, vocab_size=30), cfg.codec.model)]
    if name == "omni_sft":  # the parts' sizes come from their artifacts: stubbed here
        import sft_omni
        from omni.models.audio_encoder import AudioEncoderConfig
        from omni.models.omni import OmniConfig, OmniModel
        cfg = load_config(sft_omni.SFTConfig, path)
        vision = path.parent / ("vision.json" if path.parent.name == "demo" else "vision_tiny.json")  # its ViT
        thinker = ThinkerConfig(vocab_size=64, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64)
        return [OmniModel(OmniConfig(thinker, load_config(train_vision.VisionConfig, vision).model.vision,
                                     AudioEncoderConfig(vocab_size=30), cfg.projector))]
    if name == "ocr":
        import train_ocr
        from omni.models.ocr import OCRModel
        cfg = load_config(train_ocr.OCRTrainConfig, path)
        return [OCRModel(dataclasses.replace(cfg.model, vocab_size=97))]
    if name == "vocoder":
        import train_vocoder
        cfg = load_config(train_vocoder.VocoderTrainConfig, path)
        model = train_vocoder.VocoderGAN(cfg.model, cfg.features, {"mel": 45.0, "fm": 2.0, "stft": 1.0})
        return [model.generator, model.discriminators]
    raise AssertionError(f"no model builder for {path}: add one here")


SHIPPED = sorted([*(ROOT / "configs").glob("*.json"), *(ROOT / "configs" / "demo").glob("*.json")])


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "configs")) for p in SHIPPED])
def test_every_shipped_config_loads_and_builds_its_model(path):
    json.loads(path.read_text())
    models = build_models(path)
    assert models and all(sum(p.numel() for p in m.parameters()) > 0 for m in models)


def test_every_kind_has_a_final_file_name_of_its_own():
    assert len({k.filename for k in KINDS.values()}) == len(KINDS)
    assert all(k.filename == f"{name}.pt" for name, k in KINDS.items() if name not in ("omni", "vocoder"))
    assert KINDS["omni"].filename == "omni_final.pt"   # the two names that are not the kind's
    assert KINDS["vocoder"].filename == "hifigan.pt"
