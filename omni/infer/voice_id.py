"""Voice identity: which of a Talker's voices an utterance sounds like, for `evaluate.py tts`.

A linear classifier (multinomial logistic regression) on one vector per utterance: the mean and the standard
deviation of each log-mel bin over the utterance's louder half of frames (the spectral envelope and pitch region
of a voice, its range over speech; silence left out), the log-mel normalised per utterance so that loudness does
not count. It is fitted on recordings of the voices (the Talker's training manifest), and names a voice for any
waveform: the Talker's speech, or the original recordings of held-out sentences (the ceiling).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from omni.audio import LogMel, MelConfig, load_audio


def voice_features(logmel: torch.Tensor) -> torch.Tensor:
    """Tensor[frames x n_mels] -> Tensor[2 * n_mels]: each bin's mean and std over the louder half of frames."""
    energy = logmel.mean(dim=1)
    loud = logmel[energy >= energy.median()]
    return torch.cat([loud.mean(dim=0), loud.std(dim=0, unbiased=False)])


@dataclass
class VoiceID:
    voices: list[str]
    features: MelConfig
    shift: torch.Tensor      # feature standardisation, fitted on the training recordings
    scale: torch.Tensor
    weight: torch.Tensor     # [n_voices x dim]
    bias: torch.Tensor

    def embed(self, audio: list) -> torch.Tensor:
        """Standardised features of waveforms (Tensor[T] at the features' rate) or audio files."""
        mel = LogMel(self.features)
        rows = [voice_features(mel(a if isinstance(a, torch.Tensor) else load_audio(a, self.features.sample_rate)))
                for a in audio]
        return (torch.stack(rows) - self.shift) / self.scale

    def name(self, audio: list) -> list[str]:
        """The voice each waveform or file sounds like."""
        logits = self.embed(audio) @ self.weight.T + self.bias
        return [self.voices[int(i)] for i in logits.argmax(dim=1)]

    @classmethod
    def fit(cls, recordings: dict[str, list], features: MelConfig, weight_decay: float = 1e-3) -> "VoiceID":
        """Fit on {voice: [audio files or waveforms]} (two voices or more)."""
        voices = list(recordings)
        if len(voices) < 2 or any(not r for r in recordings.values()):
            raise ValueError(f"a voice classifier needs recordings of two voices or more, got "
                             f"{ {v: len(r) for v, r in recordings.items()} }")
        clf = cls(voices, replace(features, normalize="utterance"), torch.tensor(0.0), torch.tensor(1.0),
                  torch.empty(0), torch.empty(0))
        x = clf.embed([a for v in voices for a in recordings[v]])
        clf.shift, clf.scale = x.mean(dim=0), x.std(dim=0) + 1e-5
        x = (x - clf.shift) / clf.scale
        y = torch.tensor([i for i, v in enumerate(voices) for _ in recordings[v]])
        w = torch.zeros(len(voices), x.shape[1], requires_grad=True)
        b = torch.zeros(len(voices), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + weight_decay * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        clf.weight, clf.bias = w.detach(), b.detach()
        return clf


def fit_on_manifest(path, voices: list[str], features: MelConfig, per_voice: int = 200) -> VoiceID:
    """A VoiceID fitted on the first `per_voice` recordings of each voice in a speech manifest (its `speaker`
    column names the voices); a voice without recordings there is an error naming the file."""
    from omni.data.speech import read_manifest
    from omni.errors import UserError
    utts = read_manifest(path)
    recordings = {v: [u.wav for u in utts if u.speaker == v][:per_voice] for v in voices}
    missing = [v for v, r in recordings.items() if not r]
    if missing:
        raise UserError(f"{path}: no recordings of voice(s) {', '.join(missing)} to fit the voice classifier on")
    return VoiceID.fit(recordings, features)
