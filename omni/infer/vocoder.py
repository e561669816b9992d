"""Voicing log-mel frames: a trained vocoder (hifigan.pt) or Griffin-Lim, the figures that compare them, and
copy synthesis for users checking a vocoder:

    python -m omni.vocode --ckpt hifigan.pt a.wav b.wav --out_dir D [--griffin_lim] [--codec DIR] [--refine N]

(wav → the shared log-mel → vocoder → D/<same file name>; `--griffin_lim` voices the same mels with Griffin-Lim;
`--codec DIR` (a folder with rvq_codec.pt, or the file) sends the mels through the codec's round trip first;
`--refine N` sets the mel-consistency iterations after the generator, 0 for the generator alone.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

from omni.artifacts import load_artifact
from omni.audio import GriffinLim, LogMel, MelConfig, load_audio, mel_refine, peak_limit
from omni.config import to_dict
from omni.errors import ArtifactError, UserError, exit_on_user_error

VOCODER_FILE = "hifigan.pt"


class Vocoder:
    """A loaded hifigan.pt: callable on raw log-mel Tensor[T x n_mels] → waveform Tensor[(T-1) * hop]: the
    generator, then `refine` mel-consistency iterations (0: none)."""

    def __init__(self, generator, features: MelConfig, path: Path, device="cpu", config: dict | None = None,
                 refine: int = 0):
        self.generator, self.features, self.path, self.device = generator, features, path, torch.device(device)
        self.config = config or {}   # its training config (codec_ckpt, train_on, ...)
        self.refine = refine

    def check_features(self, features: MelConfig) -> None:
        """An error naming the file when the mels to voice have other settings than the vocoder was trained on."""
        if to_dict(self.features) != to_dict(features):
            raise ArtifactError(f"{self.path} voices mels of other settings than these ({to_dict(self.features)} "
                             f"against {to_dict(features)}): train it on this codec's features (codec_ckpt)")

    @torch.no_grad()
    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        logmel = logmel.float().to(self.device)
        wav = self.generator(logmel)
        if not torch.isfinite(wav).all() or wav.abs().max() == 0:
            raise UserError(f"the vocoder {self.path} produced no signal from {tuple(logmel.shape)} mel frames")
        return peak_limit(mel_refine(wav, logmel, self.features, self.refine).cpu())   # on the generator's device

    def describe(self) -> str:
        refine = f" + {self.refine} mel-consistency iterations" if self.refine else ""
        return f"{self.path} ({self.generator.cfg.generator} generator{refine})"


def load_vocoder(path, features: MelConfig | None = None, device="cpu", refine: int | None = None) -> Vocoder:
    """hifigan.pt (or its folder) as a Vocoder. With `features` (the mels it will voice: the codec's), other
    mel settings are an error naming the file. `refine`: the mel-consistency iterations after the generator
    (default: the artifact's `synthesis` setting)."""
    a = load_artifact(path, "vocoder", device)
    refine = a.synthesis.get("refine", 0) if refine is None else refine
    vocoder = Vocoder(a.model, a.features, a.path, device, a.config, refine)
    if features is not None:
        vocoder.check_features(features)
    return vocoder


@torch.no_grad()
def codec_round_trip(codec, logmel: torch.Tensor) -> torch.Tensor:
    """Raw log-mel Tensor[T x n_mels] → the codec's reconstruction of it (encode, quantize, decode), T frames."""
    device = codec.mel_mean.device
    x = codec.normalize(logmel.float().to(device))[None]
    return codec.denormalize(codec.decode(codec.encode(x)))[0, :logmel.shape[0]].cpu()


@torch.no_grad()
def voice_metrics(voice, utterances: list, features: MelConfig, codec=None, perceptual: bool = False,
                  keep: dict | None = None) -> dict:
    """How well `voice` (a Vocoder, GriffinLim or a generator: log-mel → waveform) voices (wav, true log-mel)
    pairs: log-mel L1 of its output against the mel it was given, multi-resolution STFT distance against the
    original audio, and the real-time factor; with `perceptual`, wideband PESQ and STOI against the original
    audio (omni.perceptual); with a codec, the same from the codec's reconstruction of each mel (codec_*: the
    mel L1 against that reconstruction, what the vocoder was asked to say). `keep`: a dict that receives the
    voiced audio, {"": [waveform per utterance], "codec_": [...]}, for scoring it further without voicing it
    again."""
    from omni.models.vocoder import mr_stft_loss
    from omni.perceptual import perceptual_scores
    mel = LogMel(features)
    out = {}
    for prefix, use_codec in (("", False), ("codec_", True)):
        if use_codec and codec is None:
            continue
        l1 = stft = seconds = audio = 0.0
        heard = {"pesq_wb": 0.0, "stoi": 0.0}
        for wav, true_mel in utterances:
            source = codec_round_trip(codec, true_mel) if use_codec else true_mel
            t0 = time.perf_counter()
            y = voice(source).float().cpu()
            seconds += time.perf_counter() - t0
            if keep is not None:
                keep.setdefault(prefix, []).append(y)
            audio += y.numel() / features.sample_rate
            m = mel(y)
            n = min(m.shape[0], source.shape[0])
            l1 += float((m[:n] - source[:n].float()).abs().mean())
            k = min(y.numel(), wav.numel())
            stft += float(mr_stft_loss(y[None, :k], wav[None, :k].float()))
            if perceptual:
                for name, v in perceptual_scores(wav, y, features.sample_rate).items():
                    heard[name] += v
        out.update({f"{prefix}mel_l1": l1 / len(utterances), f"{prefix}mr_stft": stft / len(utterances),
                    f"{prefix}rtf": seconds / max(audio, 1e-9)})
        if perceptual:
            out.update({f"{prefix}{name}": v / len(utterances) for name, v in heard.items()})
    return out


class RefinedGriffinLim:
    """Griffin-Lim followed by the vocoder's mel-consistency iterations: the fair baseline for a vocoder that
    refines its own output so."""

    def __init__(self, features: MelConfig, refine: int, n_iter: int = 32):
        self.gl, self.features, self.refine = GriffinLim(features, n_iter), features, refine

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        return peak_limit(mel_refine(self.gl(logmel), logmel, self.features, self.refine))


def compare_voices(ckpt, codec_path: str, wavs: list[str], device="cpu", perceptual: bool = False,
                   threads: int = 0) -> tuple[str, dict, dict]:
    """The vocoder of `ckpt` beside Griffin-Lim (32 iterations) on the utterances `wavs`, and when it refines its
    output, the generator alone and Griffin-Lim followed by the same rounds: → (the vocoder described,
    {voice: voice_metrics}, {voice: its voiced audio, as voice_metrics keeps it}). `codec_path`: the mels also
    go through this codec's round trip (codec_* figures). `threads`: torch threads for this process (0: as is)."""
    if threads:
        torch.set_num_threads(threads)
    vocoder = load_vocoder(ckpt, device=device)
    codec = load_artifact(codec_path, "rvq_codec") if codec_path else None   # the file, or a folder holding it
    if codec is not None:
        vocoder.check_features(codec.features)
    features, mel = vocoder.features, LogMel(vocoder.features)
    pairs = [(w, mel(w)) for w in (load_audio(path, features.sample_rate) for path in wavs)]
    voices = [("vocoder", vocoder), ("griffinlim", GriffinLim(features))]
    if vocoder.refine:
        voices.insert(1, ("vocoder_raw", load_vocoder(ckpt, device=device, refine=0)))
        voices.append(("griffinlim_refined", RefinedGriffinLim(features, vocoder.refine)))
    voiced = {name: {} for name, _ in voices}
    metrics = {name: voice_metrics(voice, pairs, features, codec.model if codec else None, perceptual,
                                   keep=voiced[name]) for name, voice in voices}
    return vocoder.describe(), metrics, voiced


def _compare_part(job: tuple) -> tuple[str, dict, dict]:
    describe, metrics, voiced = compare_voices(*job)   # audio as arrays: no tensor sharing between processes
    return describe, metrics, {name: {k: [y.numpy() for y in v] for k, v in d.items()} for name, d in voiced.items()}


def compare_voices_split(ckpt, codec_path: str, wavs: list[str], device="cpu", perceptual: bool = False,
                         workers: int = 1) -> tuple[str, dict, dict]:
    """compare_voices over `workers` processes of one torch thread each, each voicing a contiguous part of
    `wavs` (on the CPU, Griffin-Lim and the perceptual measures gain little from a second thread; processes
    gain nearly twice). The figures are those of one process: means over utterances, real-time factors over
    the voiced seconds, the voiced audio in the order of `wavs`."""
    workers = min(workers, len(wavs) // 4)
    if workers <= 1 or torch.device(device).type != "cpu":
        return compare_voices(ckpt, codec_path, wavs, device, perceptual)
    import multiprocessing
    bounds = [len(wavs) * i // workers for i in range(workers + 1)]
    jobs = [(ckpt, codec_path, wavs[a:b], device, perceptual, 1) for a, b in zip(bounds, bounds[1:])]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_compare_part, jobs)
    describe, metrics, voiced = parts[0][0], {}, {}
    for name in parts[0][1]:
        voiced[name] = {prefix: [torch.from_numpy(y) for _, _, v in parts for y in v[name][prefix]]
                        for prefix in parts[0][2][name]}
        metrics[name] = {}
        for key in parts[0][1][name]:
            prefix = "codec_" if key.startswith("codec_") else ""
            weights = [sum(y.size for y in v[name][prefix]) if key.endswith("rtf") else len(job[2])
                       for (_, _, v), job in zip(parts, jobs)]
            metrics[name][key] = sum(w * m[name][key] for w, (_, m, _) in zip(weights, parts)) / sum(weights)
    return describe, metrics, voiced


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Copy synthesis: audio → the shared log-mel → a vocoder → audio.")
    p.add_argument("--ckpt", help="hifigan.pt (or its folder)")
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--griffin_lim", action="store_true", help="voice with Griffin-Lim instead of the vocoder")
    p.add_argument("--codec", help="rvq_codec.pt or its folder: the mels go through the codec's round trip first")
    p.add_argument("--refine", type=int, help="mel-consistency iterations after the generator (default: the "
                                              "vocoder's own setting; 0: none)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not args.ckpt and not args.griffin_lim:
        p.error("give --ckpt (a vocoder), or --griffin_lim")
    with exit_on_user_error():
        codec = None
        if args.codec:
            c = Path(args.codec)
            codec = load_artifact(c / "rvq_codec.pt" if c.is_dir() else c, "rvq_codec", args.device)
        if args.ckpt:
            vocoder = load_vocoder(args.ckpt, codec.features if codec else None, args.device, args.refine)
            features = vocoder.features
        else:
            features = codec.features if codec else None
            if features is None:
                from omni.models.codec import TalkerFeatures
                features = TalkerFeatures()
        voice = GriffinLim(features) if args.griffin_lim else vocoder
        print("vocoder: Griffin-Lim (asked for)" if args.griffin_lim else f"vocoder: {vocoder.describe()}",
              file=sys.stderr)
        mel = LogMel(features)
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in args.audio:
            logmel = mel(load_audio(path, features.sample_rate))
            if codec is not None:
                logmel = codec_round_trip(codec.model, logmel)
            wav = voice(logmel)
            out = out_dir / Path(path).name
            sf.write(str(out.with_suffix(".wav")), wav.numpy(), features.sample_rate)
            print(f"{path}\t{out.with_suffix('.wav')}\t{wav.numel() / features.sample_rate:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
