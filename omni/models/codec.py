"""The RVQ speech codec: 80 ms blocks of log-mel frames <-> `codebooks` discrete codes per block (12.5 fps).

    codec = MelCodec(CodecConfig())
    codes = codec.encode(mel, lengths)        # normalised log-mel Tensor[B x T x n_mels] -> Long[B x T/8 x K]
    mel_hat = codec.decode(codes)             # -> Tensor[B x T' x n_mels], T' = 8 * blocks

Each block of `block` fine frames (frame_ms / 10 ms) is flattened, encoded with a few convolutions over the
block sequence (so a latent sees its neighbours), quantized by a residual VQ and decoded back to the block's
fine frames. The codebooks train by exponential moving averages (van den Oord et al. 2017, Razavi et al.
2019), start from k-means on the first batch, and restart codes that fall out of use on vectors of the
current batch, so every entry keeps carrying information. Under DDP the EMA statistics are summed over
ranks and restarts come from rank 0, so every rank keeps the same codebooks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

from omni.audio import MelConfig
from omni.models.layers import SeqConv1d


@dataclass
class TalkerFeatures(MelConfig):
    """The mel front end of speech output, which the codec encodes and decodes: raw log power (the codec
    normalises per bin itself; Griffin-Lim and the vocoder invert it), 80 bins. (128 bins keep more harmonics,
    so Griffin-Lim copies of true mels lose less intelligibility, but the codec reconstructs them far worse:
    MSE 0.088 against 0.052 in one test.)"""
    n_mels: int = 80
    normalize: str = "none"


@dataclass
class CodecConfig:
    n_mels: int = 80
    block: int = 8                # fine frames (10 ms each) per code frame: 80 ms, 12.5 code frames per second
    hidden: int = 384
    latent: int = 64
    n_res: int = 2                # residual conv blocks in the encoder and in the decoder
    codebooks: int = 4
    codebook_size: int = 256
    ema_decay: float = 0.98
    restart_below: float = 1.0    # a code whose EMA usage count falls under this is restarted
    commitment: float = 0.25


def _synced_sum(x: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(x)
    return x


def _from_rank0(x: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.broadcast(x, 0)
    return x


def kmeans(x: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """k centroids of x: Tensor[N x D] (Lloyd's algorithm from k random rows; rows drawn with replacement
    when N < k). Draws from torch's global RNG, which checkpoints save."""
    centroids = x[torch.randint(len(x), (k,), device=x.device) if len(x) < k else torch.randperm(len(x), device=x.device)[:k]]
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class EMAQuantizer(nn.Module):
    """One codebook of `size` vectors, trained by EMA of the vectors assigned to each code."""

    def __init__(self, size: int, dim: int, decay: float, restart_below: float):
        super().__init__()
        self.decay, self.restart_below = decay, restart_below
        self.register_buffer("codebook", torch.randn(size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """x: Tensor[N x D] -> nearest code ids Long[N]."""
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def _update(self, x: torch.Tensor, ids: torch.Tensor) -> int:
        """EMA step on the (real, unpadded) vectors x with their codes; returns how many codes restarted."""
        onehot = F.one_hot(ids, len(self.codebook)).to(x.dtype)
        count = _synced_sum(onehot.sum(0))
        total = _synced_sum(onehot.t() @ x)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count_smoothed = (self.ema_count + 1e-5) / (n + len(self.codebook) * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count_smoothed[:, None])
        dead = self.ema_count < self.restart_below
        n_dead = int(dead.sum())
        if n_dead:  # restart on vectors of this batch, with a usage count that protects them for a while
            fresh = _from_rank0(x[torch.randint(len(x), (n_dead,), device=x.device)].clone())
            count = 2.0 * self.restart_below  # a few steps of grace before it may be restarted again
            self.codebook[dead] = fresh
            self.ema_count[dead] = count
            self.ema_sum[dead] = fresh * count  # the sum that makes sum / count the fresh vector
        return n_dead

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """x: Tensor[N x D]; mask: Bool[N] of real rows (padding neither trains nor restarts codes).
        Returns (quantized Tensor[N x D] in fp32, ids Long[N], codes restarted). Always computed in fp32, also
        under bf16 autocast: nearest-code distances and EMA statistics need the precision, and a bf16 vector
        cannot be written into the fp32 codebook (a restart failed so on CUDA)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(x.float(), mask)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None):
        real = x.detach() if mask is None else x.detach()[mask]
        if self.training and not bool(self.initialized):
            self._init(real)
        ids = self.assign(x.detach())
        quantized, restarted = self.codebook[ids], 0   # indexing copies: the update below does not change it
        if self.training:
            restarted = self._update(real, ids if mask is None else ids[mask])
        return quantized, ids, restarted

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        c = _from_rank0(kmeans(x, len(self.codebook)))
        self.codebook.copy_(c)
        self.ema_sum.copy_(c)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)


class ResConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = SeqConv1d(dim, dim, 3, padding=1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # Tensor[B x T x dim]
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.proj(F.gelu(h))


class MelCodec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        flat = cfg.block * cfg.n_mels
        self.enc_in = nn.Linear(flat, cfg.hidden)
        self.enc = nn.Sequential(*[ResConv(cfg.hidden) for _ in range(cfg.n_res)])
        self.enc_out = nn.Linear(cfg.hidden, cfg.latent)
        self.dec_in = nn.Linear(cfg.latent, cfg.hidden)
        self.dec = nn.Sequential(*[ResConv(cfg.hidden) for _ in range(cfg.n_res)])
        self.dec_out = nn.Linear(cfg.hidden, flat)
        self.quantizers = nn.ModuleList(EMAQuantizer(cfg.codebook_size, cfg.latent, cfg.ema_decay,
                                                     cfg.restart_below) for _ in range(cfg.codebooks))
        # per-bin statistics of the training set's log-mel: the codec works on (log-mel - mean) / std
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))

    # ---- shapes -----------------------------------------------------------------------------------
    def blocks(self, n_frames: int) -> int:
        """Code frames for `n_frames` fine frames (the last block is padded)."""
        return -(-n_frames // self.cfg.block)

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        return (logmel - self.mel_mean) / self.mel_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mel_std + self.mel_mean

    def _to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[B x T x F] -> Tensor[B x ceil(T/block) x block*F]; the tail is padded with its last frame."""
        B, T, F_ = x.shape
        n = self.blocks(T)
        if n * self.cfg.block > T:
            x = torch.cat([x, x[:, -1:].expand(B, n * self.cfg.block - T, F_)], dim=1)
        return x.reshape(B, n, self.cfg.block * F_)

    # ---- model ------------------------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc_out(self.enc(self.enc_in(self._to_blocks(x))))

    def quantize(self, z: torch.Tensor, mask: torch.Tensor | None = None):
        """z: Tensor[B x N x latent]; mask: Bool[B x N] of real blocks. Returns (quantized, codes Long[B x N x K],
        codes restarted per codebook)."""
        B, N, D = z.shape
        residual = z.reshape(-1, D)
        m = None if mask is None else mask.reshape(-1)
        total, codes, restarted = torch.zeros_like(residual), [], []
        for q in self.quantizers:
            qv, ids, r = q(residual, m)
            total = total + qv
            residual = residual - qv
            codes.append(ids)
            restarted.append(r)
        return total.view(B, N, D), torch.stack(codes, -1).view(B, N, -1), restarted

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Long[B x N x K] (K may be fewer than `codebooks`: coarser) -> normalised log-mel Tensor[B x N*block x n_mels]."""
        z = sum(self.quantizers[k].codebook[codes[..., k]] for k in range(codes.shape[-1]))
        return self._decode_latent(z)

    def _decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        y = self.dec_out(self.dec(self.dec_in(z)))
        B, N, _ = y.shape
        return y.view(B, N * self.cfg.block, self.cfg.n_mels)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel Tensor[B x T x n_mels] -> codes Long[B x ceil(T/block) x K] (eval: no EMA update)."""
        was = self.training
        self.eval()
        _, codes, _ = self.quantize(self.encode_latent(x))
        self.train(was)
        return codes

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> dict:
        """x: normalised log-mel Tensor[B x T x n_mels]; lengths: Long[B] real frames. Returns losses (MSE and
        L1 over real frames, commitment), codes and the codes restarted per codebook."""
        z = self.encode_latent(x)
        n_blocks = -(-lengths // self.cfg.block)
        bmask = torch.arange(z.shape[1], device=x.device)[None] < n_blocks[:, None]
        q, codes, restarted = self.quantize(z, bmask)
        commit = ((z - q.detach()).pow(2).mean(-1) * bmask).sum() / bmask.sum()
        y = self._decode_latent(z + (q - z).detach())[:, :x.shape[1]]     # straight-through estimator
        fmask = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]).unsqueeze(-1)
        denom = fmask.sum() * x.shape[-1]
        mse = ((y - x).pow(2) * fmask).sum() / denom
        l1 = ((y - x).abs() * fmask).sum() / denom
        return {"recon": y, "mse": mse, "l1": l1, "commit": commit, "codes": codes, "block_mask": bmask,
                "restarted": restarted, "loss": mse + l1 + self.cfg.commitment * commit}


def usage_perplexity(codes: torch.Tensor, size: int) -> list[float]:
    """codes: Long[N x K] -> per codebook exp(entropy of code usage): `size` when all are used evenly."""
    out = []
    for k in range(codes.shape[-1]):
        p = torch.bincount(codes[:, k], minlength=size).float()
        p = p / p.sum()
        out.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
    return out
