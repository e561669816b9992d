"""The neural vocoder: raw log-mel frames (the shared front end, `omni.audio.LogMel` with the Talker's
`TalkerFeatures`) → waveform, and the HiFi-GAN discriminators and losses that train it.

    gen = Generator(VocoderConfig(), features)     # features: the MelConfig of the mels it voices
    wav = gen(logmel)                              # Tensor[B x T x n_mels] → Tensor[B x (T-1)*hop]; [T x n_mels] → [(T-1)*hop]

Two generators, chosen by `generator`:
- "istft" (Vocos): split as Vocos splits it. A backbone of ConvNeXt blocks over the mel frames; a head that
  predicts, per frame, a correction to the log-magnitude of one STFT frame and its phase, as the angle of a
  predicted 2-D vector (APNet's parallel phase estimation: no wrap-around to learn; the magnitude starts
  from the mel filterbank's pseudo-inverse of the input with `residual`, so the network learns what the
  filterbank lost, not the whole spectrum); an inverse STFT with the front end's window and hop.
- "hifigan" (HiFi-GAN V1–V3 family): transposed-convolution upsampling by `upsample_rates` (their product is
  the hop) with multi-receptive-field residual blocks.
Discriminators: multi-period (periods 2, 3, 5, 7, 11: the waveform folded into a 2-D grid of `period` columns)
and multi-scale (3 scales: raw, then average-pooled ×2, ×4), both on Tensor[B x 1 x T].
Losses: the discriminators' (least squares, feature matching), the multi-resolution STFT distance and APNet's
anti-wrapped phase loss (phase, group delay, instantaneous frequency).
At synthesis (omni.infer.vocoder.Vocoder), mel-consistency iterations (omni.audio.mel_refine) may follow the
generator: they bring its output's mel onto the one it was asked to voice, keeping its phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.audio import MelConfig, mel_basis


@dataclass
class VocoderConfig:
    generator: str = "istft"          # "istft" | "hifigan"
    channels: int = 256               # istft: ConvNeXt width; hifigan: channels before the first upsampling
    layers: int = 8                   # istft: ConvNeXt blocks
    residual: bool = True             # istft: predict a correction over the mel pseudo-inverse's magnitude
    phase_head: str = "vector"        # istft: "vector" = the phase is the angle of a predicted 2-D vector
                                      # (APNet's parallel estimation); "angle" = the phase itself (older vocoders)
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 2])    # hifigan: product = hop_length
    resblock_kernels: list[int] = field(default_factory=lambda: [3, 7, 11])     # hifigan: MRF kernels
    resblock_dilations: list[int] = field(default_factory=lambda: [1, 3, 5])
    disc_channels: int = 32           # width of the discriminators' first layers (HiFi-GAN: 32 MPD, 16 MSD)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), 1.0 / 8))

    def forward(self, x):                                   # x: [B x C x T]
        y = self.norm(self.dw(x).transpose(1, 2))
        y = self.down(F.gelu(self.up(y))) * self.scale
        return x + y.transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """Mel frames Tensor[B x T x n_mels] → features Tensor[B x T x channels], one per frame."""

    def __init__(self, n_mels: int, channels: int, layers: int):
        super().__init__()
        self.inp = nn.Conv1d(n_mels, channels, 7, padding=3)
        self.norm = nn.LayerNorm(channels)
        self.blocks = nn.ModuleList(ConvNeXtBlock(channels, 3 * channels) for _ in range(layers))
        self.out_norm = nn.LayerNorm(channels)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.inp(logmel.transpose(1, 2)).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    """Features Tensor[B x T x C] (+ the mel frames they came from) → complex STFT Tensor[B x F x T]: a
    log-magnitude and a phase per bin and frame; with `residual` the log-magnitude is a correction over the mel
    pseudo-inverse's (zero at the start). phase_head "vector": the phase is atan2 of two outputs; "angle": it is
    one output (vocoders trained before the vector head; theirs often stalled: docs/results.md)."""

    def __init__(self, channels: int, features: MelConfig, residual: bool, phase_head: str = "vector"):
        super().__init__()
        if phase_head not in ("vector", "angle"):
            raise ValueError(f"vocoder phase_head must be 'vector' or 'angle', got {phase_head!r}")
        self.residual, self.vector = residual, phase_head == "vector"
        bins = features.n_fft // 2 + 1
        self.proj = nn.Linear(channels, (3 if self.vector else 2) * bins)
        if residual:   # the magnitude correction starts at zero; a vector phase needs a nonzero start
            nn.init.zeros_(self.proj.weight[:bins] if self.vector else self.proj.weight)
            nn.init.zeros_(self.proj.bias[:bins] if self.vector else self.proj.bias)
        self.register_buffer("pinv", torch.linalg.pinv(mel_basis(features)).T.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        out = self.proj(x).float()                                                               # [B x T x 2F|3F]
        if self.vector:
            log_mag, re, im = out.chunk(3, dim=-1)
            phase = torch.atan2(im, re)
        else:
            log_mag, phase = out.chunk(2, dim=-1)
        if self.residual:   # power spectrum ≈ mel power through the pseudo-inverse; magnitude = its sqrt
            log_mag = 0.5 * (logmel.float().exp() @ self.pinv.T).clamp_min(1e-5).log() + log_mag
        return torch.polar(log_mag.clamp(max=8.0).exp(), phase).transpose(1, 2)


class InverseSTFT(nn.Module):
    """Complex STFT Tensor[B x F x T] → waveform Tensor[B x (T-1)*hop], with the front end's window and hop."""

    def __init__(self, features: MelConfig):
        super().__init__()
        self.features = features
        self.register_buffer("window", torch.hann_window(features.n_fft), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        f = self.features
        return torch.istft(spec, f.n_fft, f.hop_length, f.n_fft, self.window, center=True,
                           length=(spec.shape[-1] - 1) * f.hop_length)


class ISTFTGenerator(nn.Module):
    """Vocos: backbone → head → inverse STFT."""

    def __init__(self, cfg: VocoderConfig, features: MelConfig):
        super().__init__()
        self.backbone = ConvNeXtBackbone(features.n_mels, cfg.channels, cfg.layers)
        self.head = ISTFTHead(cfg.channels, features, cfg.residual, cfg.phase_head)
        self.istft = InverseSTFT(features)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:         # [B x T x n_mels] → [B x (T-1)*hop]
        return self.istft(self.head(self.backbone(logmel), logmel))


class ResBlock(nn.Module):
    """HiFi-GAN's residual block: per dilation, LeakyReLU → dilated conv → LeakyReLU → conv, added back."""

    def __init__(self, ch: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, kernel, padding=(kernel - 1) // 2) for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
        return x


class HiFiGANGenerator(nn.Module):
    def __init__(self, cfg: VocoderConfig, features: MelConfig):
        super().__init__()
        if math.prod(cfg.upsample_rates) != features.hop_length:
            raise ValueError(f"vocoder upsample_rates {cfg.upsample_rates} multiply to {math.prod(cfg.upsample_rates)}, "
                             f"not the hop length {features.hop_length}")
        self.cfg, self.features = cfg, features
        self.inp = nn.Conv1d(features.n_mels, cfg.channels, 7, padding=3)
        self.ups, self.mrfs = nn.ModuleList(), nn.ModuleList()
        ch = cfg.channels
        for r in cfg.upsample_rates:
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * r, stride=r, padding=r // 2 + r % 2,
                                               output_padding=r % 2))
            ch //= 2
            self.mrfs.append(nn.ModuleList(ResBlock(ch, k, cfg.resblock_dilations) for k in cfg.resblock_kernels))
        self.out = nn.Conv1d(ch, 1, 7, padding=3)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.inp(logmel.transpose(1, 2))
        for up, mrf in zip(self.ups, self.mrfs):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(block(x) for block in mrf) / len(mrf)
        wav = torch.tanh(self.out(F.leaky_relu(x))).squeeze(1)    # [B x T*hop]
        return wav[:, :(logmel.shape[1] - 1) * self.features.hop_length]


class Generator(nn.Module):
    """Either generator behind one interface: Tensor[B x T x n_mels] → Tensor[B x (T-1)*hop] (frames centred
    on multiples of the hop, as LogMel makes them), or [T x n_mels] → [(T-1)*hop]."""

    def __init__(self, cfg: VocoderConfig, features: MelConfig):
        super().__init__()
        if features.normalize != "none":
            raise ValueError("the vocoder voices raw log-mel: its MelConfig.normalize must be 'none'")
        if cfg.generator not in ("istft", "hifigan"):
            raise ValueError(f"vocoder generator must be 'istft' or 'hifigan', got {cfg.generator!r}")
        self.cfg, self.features = cfg, features
        self.net = (ISTFTGenerator if cfg.generator == "istft" else HiFiGANGenerator)(cfg, features)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        if logmel.dim() == 2:
            return self.forward(logmel[None])[0]
        return self.net(logmel)


# --- discriminators -------------------------------------------------------------------------------------------

def _conv_stack(convs, post, x):
    """convs with LeakyReLU, then `post` → (scores Tensor[B x N], every layer's output for feature matching)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, ch: int):
        super().__init__()
        self.period = period
        chans = [1, ch, 4 * ch, 16 * ch, 32 * ch, 32 * ch]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), (2, 0))
                                   for i in range(5))
        self.post = nn.Conv2d(chans[-1], 1, (3, 1), 1, (1, 0))

    def forward(self, x):                                   # [B x 1 x T] → (scores, features)
        B, C, T = x.shape
        if T % self.period:
            x = F.pad(x, (0, self.period - T % self.period), mode="reflect")
        return _conv_stack(self.convs, self.post, x.view(B, C, -1, self.period))


class ScaleDiscriminator(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        specs = [(1, ch, 15, 1, 1, 7), (ch, 4 * ch, 41, 4, 4, 20), (4 * ch, 16 * ch, 41, 4, 16, 20),
                 (16 * ch, 32 * ch, 41, 4, 16, 20), (32 * ch, 32 * ch, 5, 1, 1, 2)]
        self.convs = nn.ModuleList(nn.Conv1d(i, o, k, s, groups=min(g, i), padding=p) for i, o, k, s, g, p in specs)
        self.post = nn.Conv1d(32 * ch, 1, 3, 1, padding=1)

    def forward(self, x):
        return _conv_stack(self.convs, self.post, x)


class Discriminators(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) + multi-scale (3 scales). Input Tensor[B x 1 x T] → lists of
    scores and of per-layer features, one entry per sub-discriminator."""

    PERIODS = (2, 3, 5, 7, 11)

    def __init__(self, ch: int = 32):
        super().__init__()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, ch) for p in self.PERIODS)
        self.msd = nn.ModuleList(ScaleDiscriminator(max(ch // 2, 1)) for _ in range(3))

    def forward(self, x: torch.Tensor):
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"discriminators take Tensor[B x 1 x T], got {tuple(x.shape)}")
        scaled = [x, F.avg_pool1d(x, 4, 2, padding=2), F.avg_pool1d(x, 8, 4, padding=4)]
        outs = [d(x) for d in self.mpd] + [d(y) for d, y in zip(self.msd, scaled)]
        return [s for s, _ in outs], [f for _, f in outs]


# --- losses ---------------------------------------------------------------------------------------------------

def discriminator_loss(real_scores, fake_scores) -> torch.Tensor:
    """Least squares: real → 1, generated → 0, summed over the sub-discriminators."""
    return sum((1 - r.float()).pow(2).mean() + f.float().pow(2).mean() for r, f in zip(real_scores, fake_scores))


def generator_adv_loss(fake_scores) -> torch.Tensor:
    return sum((1 - f.float()).pow(2).mean() for f in fake_scores)


def feature_matching_loss(real_feats, fake_feats) -> torch.Tensor:
    return sum(F.l1_loss(f.float(), r.detach().float()) for rs, fs in zip(real_feats, fake_feats)
               for r, f in zip(rs, fs))


def stft_magnitude(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=wav.device)
    return torch.stft(wav.float(), n_fft, hop, n_fft, window, return_complex=True).abs().clamp_min(1e-5)


MR_STFT = ((512, 128), (1024, 256), (256, 64))   # (n_fft, hop) resolutions, at 16 kHz


def _anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """|x| with x wrapped into [-pi, pi]: the distance between two phases (APNet's anti-wrapping function)."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def phase_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Phase distance between two complex STFTs Tensor[B x F x T] (the generated audio's, the real audio's;
    APNet, Ai & Ling 2023): the anti-wrapped error of the phase itself, of its difference across frequency
    (group delay) and of its difference across time (instantaneous frequency), each bin weighted by the real
    audio's magnitude there (a silent bin's phase is noise)."""
    f, r, w = fake.angle(), real.angle(), real.abs()
    w = w / w.mean().clamp_min(1e-8)
    ip = (_anti_wrap(f - r) * w).mean()
    gd = (_anti_wrap(f.diff(dim=1) - r.diff(dim=1)) * w[:, 1:]).mean()
    iaf = (_anti_wrap(f.diff(dim=2) - r.diff(dim=2)) * w[..., 1:]).mean()
    return ip + gd + iaf


def mr_stft_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT distance (Yamamoto et al. 2020): per resolution, spectral convergence + log
    magnitude L1, averaged over the resolutions. Also the evaluation's distance."""
    total = 0.0
    for n_fft, hop in MR_STFT:
        f, r = stft_magnitude(fake, n_fft, hop), stft_magnitude(real, n_fft, hop)
        total = total + (r - f).norm() / r.norm().clamp_min(1e-5) + F.l1_loss(f.log(), r.log())
    return total / len(MR_STFT)
