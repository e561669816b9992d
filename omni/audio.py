"""The audio front end every speech model shares: reading any audio file and log-mel features (torchaudio).

`load_audio` reads WAV/FLAC/... at any sample rate, mono or multi-channel, and returns 16 kHz mono float32.
`LogMel` turns it into normalised log-mel frames: 25 ms windows every 10 ms (100 frames/s), 128 mel bins by
default. The audio encoder (Stage B), the Talker and the vocoder all build their features here, from the
`MelConfig` stored in their artifacts, so a checkpoint always sees the features it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from omni.errors import UserError


@dataclass
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 400              # 25 ms window at 16 kHz
    hop_length: int = 160         # 10 ms hop: 100 frames per second
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0         # Nyquist at 16 kHz
    log_floor: float = 1e-5       # log(max(power, floor)): silence is a flat floor, not -inf
    # "utterance": subtract the utterance's mean and divide by its std (one scalar each, so the spectral shape
    # survives; it removes loudness and recording gain, which differ between voices and datasets);
    # "utterance_bins": subtract each bin's utterance mean (cepstral mean normalisation: the voice's and the
    # channel's average spectrum goes too), divide by the utterance's std;
    # "none": raw natural-log power, for models that must invert the features (Talker, vocoder).
    normalize: str = "utterance"


def num_frames(num_samples: int, cfg: MelConfig) -> int:
    """Frames `LogMel` produces for `num_samples` samples at cfg.sample_rate (centred STFT)."""
    return num_samples // cfg.hop_length + 1


def resampled_length(num_samples: int, sr: int, target_sr: int) -> int:
    """Samples after torchaudio's resampling from sr to target_sr."""
    return num_samples if sr == target_sr else int(np.ceil(num_samples * target_sr / sr))


def audio_info(path) -> tuple[int, int]:
    """(num_samples, sample_rate) from the file header, without decoding the audio."""
    info = sf.info(str(path))
    return info.frames, info.samplerate


def to_mono_resampled(wav: torch.Tensor, sr: int, target_sr: int) -> torch.Tensor:
    """wav: Tensor[T] or Tensor[T x C] (soundfile's layout) at sr -> Tensor[T'] mono float32 at target_sr."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() == 2:
        wav = wav.mean(dim=1)
    if sr != target_sr:
        wav = torchaudio.functional.resample(wav, sr, target_sr)
    return wav


def load_audio(path, target_sr: int = 16000) -> torch.Tensor:
    """Tensor[T] mono float32 in [-1, 1] at target_sr, from any file soundfile reads (WAV, FLAC, OGG, ...).
    An unreadable file raises an error that names it."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises its own LibsndfileError, RuntimeError or OSError
        raise UserError(f"cannot read audio {path}: {e}") from None
    if data.size == 0:
        raise UserError(f"audio file {path} is empty")
    return to_mono_resampled(torch.from_numpy(data), sr, target_sr)


def pad_frames(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[Tensor[T_i x n_mels]] -> (Tensor[B x max T x n_mels] zero-padded, lengths Tensor[B])."""
    lengths = torch.tensor([f.shape[0] for f in feats])
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, :f.shape[0]] = f
    return out, lengths


NORMALIZE = ("utterance", "utterance_bins", "none")


class LogMel(torch.nn.Module):
    """Tensor[T_samples] (16 kHz mono) -> Tensor[frames x n_mels] normalised log-mel, frames = T // hop + 1."""

    def __init__(self, cfg: MelConfig = MelConfig()):
        super().__init__()
        self.cfg = cfg
        if cfg.normalize not in NORMALIZE:
            raise ValueError(f"MelConfig.normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.n_fft, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=True, norm="slaney",
            mel_scale="slaney")

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.mel(wav.float()).clamp_min(self.cfg.log_floor).log().transpose(-1, -2)  # [frames x n_mels]
        if self.cfg.normalize == "utterance":
            x = (x - x.mean()) / (x.std() + 1e-5)
        elif self.cfg.normalize == "utterance_bins":
            x = (x - x.mean(dim=0)) / (x.std() + 1e-5)
        return x.contiguous()

    def mel_frequencies(self) -> torch.Tensor:
        """Centre frequency in Hz of each mel bin: Tensor[n_mels]."""
        fb = self.mel.mel_scale.fb  # [n_freqs x n_mels]
        freqs = torch.linspace(0, self.cfg.sample_rate / 2, fb.shape[0])
        return freqs[fb.argmax(dim=0)]


def freq_warp(x: torch.Tensor, rng: np.random.Generator, max_warp: float = 0.1) -> torch.Tensor:
    """Vocal tract length perturbation in the mel domain (after Jaitly & Hinton 2013): stretch the frequency
    axis by a factor in [1 - max_warp, 1 + max_warp], as a longer or shorter vocal tract shifts every formant.
    It makes new voices out of the training voices, which is what recognising unseen voices needs.
    x: Tensor[frames x n_mels]; draws only from `rng`."""
    alpha = float(rng.uniform(1 - max_warp, 1 + max_warp))
    F = x.shape[1]
    src = (torch.arange(F, dtype=torch.float32) / alpha).clamp(max=F - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=F - 1)
    frac = src - lo
    return x[:, lo] * (1 - frac) + x[:, hi] * frac


def time_stretch(x: torch.Tensor, rng: np.random.Generator, max_stretch: float = 0.1) -> torch.Tensor:
    """Tempo perturbation in the feature domain (after Ko et al. 2015's speed perturbation): the time axis
    resampled by a factor in [1 - max_stretch, 1 + max_stretch], as a faster or slower speaker would say it.
    x: Tensor[frames x n_mels]; draws only from `rng`."""
    rate = float(rng.uniform(1 - max_stretch, 1 + max_stretch))
    T = max(1, round(x.shape[0] * rate))
    return F.interpolate(x.t()[None].float(), size=T, mode="linear", align_corners=False)[0].t().to(x.dtype)


def spec_augment(x: torch.Tensor, rng: np.random.Generator, freq_masks: int = 2, freq_width: int = 27,
                 time_masks: int = 2, time_width: int = 40, time_frac: float = 0.1) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: zero `freq_masks` bands of up to `freq_width` mel
    bins and `time_masks` spans of up to min(time_width, time_frac * frames) frames. x: Tensor[frames x n_mels]
    (normalised, so zero is the utterance mean). Draws only from `rng`, so a resumed run masks identically."""
    x = x.clone()
    T, F = x.shape
    for _ in range(freq_masks):
        w = int(rng.integers(0, min(freq_width, F) + 1))
        f0 = int(rng.integers(0, F - w + 1))
        x[:, f0:f0 + w] = 0
    max_t = min(time_width, int(time_frac * T))
    for _ in range(time_masks):
        w = int(rng.integers(0, max_t + 1))
        t0 = int(rng.integers(0, T - w + 1))
        x[t0:t0 + w] = 0
    return x


def mel_basis(cfg: MelConfig) -> torch.Tensor:
    """The front end's mel filterbank Tensor[n_freq x n_mels] (torchaudio, slaney, as LogMel)."""
    return torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max or cfg.sample_rate / 2,
                                                 cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney")


@torch.no_grad()
def mel_refine(wav: torch.Tensor, logmel: torch.Tensor, cfg: MelConfig, n_iter: int) -> torch.Tensor:
    """Brings a waveform's mel onto the raw log-mel it was made from (Tensor[frames x n_mels], normalize "none"),
    keeping its phase and the detail within each band: `n_iter` times, every STFT bin's magnitude is scaled by
    the filterbank-weighted mean of the mel bands' power ratios (asked / present), and the STFT inverted. Like
    Griffin-Lim's iterations, but from a vocoder's spectrum instead of the filterbank's smooth inverse and a
    random phase. wav: Tensor[(frames - 1) * hop] (or [B x ...] with logmel [B x frames x n_mels]) → the same
    shape."""
    if n_iter <= 0:
        return wav
    basis = mel_basis(cfg).to(wav.device)                                   # [F x M]
    weight = basis.sum(1, keepdim=True)
    window = torch.hann_window(cfg.n_fft, device=wav.device)
    target = logmel.float().to(wav.device).exp().clamp_min(cfg.log_floor).transpose(-1, -2)  # [.. M x T]
    y = wav.float()
    for _ in range(n_iter):
        spec = torch.stft(y, cfg.n_fft, cfg.hop_length, cfg.n_fft, window, center=True, return_complex=True)
        n = min(spec.shape[-1], target.shape[-1])
        present = (basis.T @ spec[..., :n].abs().square()).clamp_min(cfg.log_floor)
        gain = (basis @ (target[..., :n] / present)) / weight.clamp_min(1e-8)
        gain = torch.where(weight > 0, gain, torch.ones_like(gain)).clamp(1e-3, 1e3)
        y = torch.istft(spec[..., :n] * gain.sqrt(), cfg.n_fft, cfg.hop_length, cfg.n_fft, window, center=True,
                        length=y.shape[-1])
    return y


def peak_limit(wav: torch.Tensor, peak: float = 0.95) -> torch.Tensor:
    """The waveform scaled down to `peak` where it goes over it (every voice's last step, so none clips)."""
    top = wav.abs().max()
    return wav * (peak / top) if top > peak else wav


class GriffinLim(torch.nn.Module):
    """Natural-log mel power frames (LogMel with normalize "none") -> waveform: the mel filterbank inverted by
    least squares (torchaudio InverseMelScale), then Griffin-Lim phase recovery (torchaudio) from random phases
    drawn with a fixed seed (the global RNG left as it was), so a figure through it repeats exactly. The default
    waveform path of the Talker; a trained vocoder replaces it when one exists."""

    def __init__(self, cfg: MelConfig, n_iter: int = 32):
        super().__init__()
        if cfg.normalize != "none":
            raise ValueError("Griffin-Lim inverts raw log-mel: MelConfig.normalize must be 'none'")
        self.cfg = cfg
        self.inv_mel = torchaudio.transforms.InverseMelScale(
            n_stft=cfg.n_fft // 2 + 1, n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, f_min=cfg.f_min,
            f_max=cfg.f_max, norm="slaney", mel_scale="slaney", driver="gelsd")  # gelsd: rank-deficient banks too
        self.gl = torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, win_length=cfg.n_fft, hop_length=cfg.hop_length,
                                                   power=2.0, n_iter=n_iter)

    @torch.no_grad()
    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Tensor[frames x n_mels] -> Tensor[(frames - 1) * hop] in [-1, 1]."""
        power = self.inv_mel(logmel.float().exp().transpose(0, 1)).clamp_min(0)   # [freq x frames]
        with torch.random.fork_rng():   # the random start phases from a fixed seed: the same mels, the same wave
            torch.manual_seed(0)
            wav = self.gl(power)
        peak = wav.abs().max()
        if not torch.isfinite(peak) or peak == 0:
            raise UserError(f"Griffin-Lim produced no signal from {tuple(logmel.shape)} mel frames")
        return peak_limit(wav)
