"""The voice classifier behind `evaluate.py tts`'s voice identity."""
import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import MelConfig
from omni.errors import UserError
from omni.infer.voice_id import VoiceID, fit_on_manifest

SR = 16000


def voiced(f0: float, rng: np.random.Generator) -> torch.Tensor:
    """A buzzy 'utterance' on pitch f0 (jittered), its harmonics shaped by a formant, with silence around it."""
    n = int(SR * rng.uniform(0.6, 1.2))
    t = np.arange(n) / SR
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    wave = sum(np.sin(k * phase) / k * np.exp(-((k * f0 - 700) / 900) ** 2) for k in range(1, 20))
    wave = wave * rng.uniform(0.1, 0.5) / np.abs(wave).max() + 0.002 * rng.standard_normal(n)
    silence = np.zeros(SR // 5)
    return torch.tensor(np.concatenate([silence, wave, silence]), dtype=torch.float32)


def test_names_the_voice_of_unseen_utterances():
    rng = np.random.default_rng(0)
    voices = {"low": 110.0, "high": 230.0, "mid": 160.0}
    clf = VoiceID.fit({v: [voiced(f0, rng) for _ in range(12)] for v, f0 in voices.items()}, MelConfig(n_mels=80))
    assert clf.voices == ["low", "high", "mid"]
    for v, f0 in voices.items():
        assert clf.name([voiced(f0, rng) for _ in range(6)]) == [v] * 6


def test_needs_two_voices_and_names_the_file_missing_one(tmp_path):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="two voices or more"):
        VoiceID.fit({"only": [voiced(120, rng)]}, MelConfig())
    sf.write(tmp_path / "a.wav", voiced(120, rng).numpy(), SR)
    (tmp_path / "m.csv").write_text("wav,text,speaker\na.wav,hello,one\n")
    with pytest.raises(UserError, match=r"m.csv: no recordings of voice\(s\) two"):
        fit_on_manifest(tmp_path / "m.csv", ["one", "two"], MelConfig())
