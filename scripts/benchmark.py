#!/usr/bin/env python
"""Throughput of each stage's hot paths, printed as a table and written as JSON.

    python scripts/benchmark.py [--only thinker] [--device auto] [--out runs/benchmark.json]

Training rows time full optimizer steps (forward, backward, AdamW) on random data at a config's sizes, with
the engine's AMP and compile settings on GPU; generation rows time KV-cached against uncached decoding.
Later stages add their rows to ROWS.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni.config import load_config  # noqa: E402
from omni.device import resolve_device  # noqa: E402
from omni.infer.generate import generate  # noqa: E402
from omni.models.thinker import Thinker  # noqa: E402
from omni.train.engine import autocast_context  # noqa: E402
from omni.train.optim import build_optimizer  # noqa: E402
from train_text import TextConfig  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int, iters: int) -> float:
    """Seconds per call of fn, after warmup calls (compile, allocator)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def thinker_train(config: str, device, batch_size: int | None = None, steps: int = 5) -> dict:
    cfg = load_config(TextConfig, config)
    torch.manual_seed(0)
    model = Thinker(cfg.model).to(device).train()
    fwd = torch.compile(model) if cfg.use_compile and device.type == "cuda" else model
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    B, T = batch_size or cfg.batch_size, cfg.model.ctx_len
    x = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)

    def step():
        with autocast_context(device, cfg):
            loss = fwd(x[:, :-1], targets=x[:, 1:])["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, device, warmup=2, iters=steps)
    row = {"tokens/s": B * T / sec, "batch": B, "ctx_len": T,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def thinker_generate(config: str, device, new_tokens: int = 128) -> dict:
    cfg = load_config(TextConfig, config)
    torch.manual_seed(0)
    model = Thinker(cfg.model).to(device).eval()
    prompt = torch.randint(0, cfg.model.vocab_size, (1, 16), device=device)
    row = {}
    for name, kw in (("compiled", {"compile": True}), ("cached", {}), ("uncached", {"use_cache": False})):
        sec = timed(lambda: generate(model, prompt, new_tokens, temperature=0, **kw), device, 2, 3)
        row[f"{name} tok/s"] = new_tokens / sec
    row["speed-up"] = row["cached tok/s"] / row["uncached tok/s"]
    row["compiled speed-up"] = row["compiled tok/s"] / row["uncached tok/s"]
    return row


def _audio_enc(config: str):
    from train_audio_enc import AudioEncConfig
    from omni.models.audio_encoder import AudioEncoder
    cfg = load_config(AudioEncConfig, config)
    torch.manual_seed(0)
    return cfg, AudioEncoder(replace(cfg.model, vocab_size=29))  # 28 characters + blank


def audio_enc_train(config: str, device, batch_size: int | None = None, seconds: float = 4.0, steps: int = 3) -> dict:
    """Optimizer steps of CTC training on B utterances of `seconds` (log-mel features given, 13 chars/s)."""
    from omni.models.audio_encoder import ctc_loss
    cfg, model = _audio_enc(config)
    model = model.to(device).train()
    fwd = torch.compile(model) if cfg.use_compile and device.type == "cuda" else model
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    B, T = batch_size or cfg.batch_size, int(seconds * 100)
    x, lengths = torch.randn(B, T, cfg.features.n_mels, device=device), torch.full((B,), T, device=device)
    labels = [[1 + (i + j) % 28 for j in range(int(seconds * 13))] for i in range(B)]  # no repeats: alignable

    def step():
        with autocast_context(device, cfg):
            out = fwd(x, lengths)
        ctc_loss(out["logits"], out["lengths"], labels, reduction="mean").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, device, warmup=2, iters=steps)
    row = {"audio_s/s": B * seconds / sec, "batch": B, "utt_s": seconds,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def asr_transcribe(config: str, device, n: int = 16, seconds: float = 4.0) -> dict:
    """Real-time factor (compute seconds per audio second; < 1 is faster than real time) of
    omni.infer.asr.transcribe on 16 kHz waveforms: features, encoder and greedy decoding, batched and one by one."""
    from omni.infer.asr import transcribe
    from omni.vocab import CharVocab
    from omni.audio import LogMel
    cfg, model = _audio_enc(config)
    model = model.to(device).eval()
    mel, vocab = LogMel(cfg.features), CharVocab(" 'abcdefghijklmnopqrstuvwxyz")
    wavs = [0.1 * torch.randn(int(seconds * cfg.features.sample_rate)) for _ in range(n)]
    batched = timed(lambda: transcribe(model, vocab, mel, wavs, 16, device), device, 1, 2)
    single = timed(lambda: transcribe(model, vocab, mel, wavs[:1], 1, device), device, 1, 3)
    return {"RTF batch 16": batched / (n * seconds), "x realtime batch 16": n * seconds / batched,
            "RTF 1 file": single / seconds, "x realtime 1 file": seconds / single, "utt_s": seconds}


def vision_train(config: str, device, batch_size: int | None = None, caption_tokens: int = 16, steps: int = 3) -> dict:
    """Optimizer steps of Stage C's contrastive training: the ViT plus the text tower on B random images and
    captions. The text tower reads a trainable embedding here (no Thinker checkpoint needed); with the
    frozen Thinker the stage feeds cached hidden states instead, at the same cost."""
    import dataclasses
    from omni.models.vision import ClipModel
    from train_vision import VisionConfig
    cfg = load_config(VisionConfig, config)
    torch.manual_seed(0)
    mcfg = dataclasses.replace(cfg.model, text=dataclasses.replace(cfg.model.text, vocab_size=4096))
    model = ClipModel(mcfg).to(device).train()
    fwd = torch.compile(model) if cfg.use_compile and device.type == "cuda" else model
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    B, S = batch_size or cfg.batch_size, mcfg.vision.image_size
    images = torch.rand(B, 3, S, S, device=device)
    ids = torch.randint(4, 4096, (B, caption_tokens), device=device)
    mask = torch.ones(B, caption_tokens, dtype=torch.bool, device=device)

    def step():
        with autocast_context(device, cfg):
            loss = fwd(images, ids, mask)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, device, warmup=2, iters=steps)
    row = {"images/s": B / sec, "batch": B, "image_size": S, "patch": mcfg.vision.patch_size,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def _talker(config: str, device):
    from omni.models.codec import MelCodec
    from omni.models.talker import Talker
    from train_talker import TalkerTrainConfig
    cfg = load_config(TalkerTrainConfig, config)
    torch.manual_seed(0)
    talker = Talker(replace(cfg.model, vocab_size=30)).to(device)  # 28 characters + 2
    return cfg, talker, MelCodec(cfg.codec.model).to(device)


def talker_train(config: str, device, batch_size: int | None = None, seconds: float = 3.0, steps: int = 3) -> dict:
    """Optimizer steps of the Talker (alignment search included) on B utterances of `seconds` at 15 chars/s,
    and of the codec on the same mel frames."""
    cfg, talker, codec = _talker(config, device)
    B, T = batch_size or cfg.batch_size, int(seconds * 100)
    L, N, K = int(seconds * 15) + 2, -(-T // cfg.model.block), cfg.model.codebooks
    text, text_lens = torch.randint(2, 30, (B, L), device=device), torch.full((B,), L, device=device)
    mel, mel_lens = torch.randn(B, T, cfg.model.n_mels, device=device), torch.full((B,), T, device=device)
    codes = torch.randint(0, cfg.model.codebook_size, (B, N, K), device=device)
    code_lens = torch.full((B,), N, device=device)
    row = {}
    for name, model, loss_fn in (
            ("talker", talker, lambda m: m(text, text_lens, mel, mel_lens, codes, code_lens)["loss"]),
            ("codec", codec, lambda m: m(mel, mel_lens)["loss"])):
        model.train()
        fwd = torch.compile(model) if cfg.use_compile and device.type == "cuda" and name == "talker" else model
        opt = build_optimizer(model, cfg.lr, cfg.wd, device)

        def step():
            with autocast_context(device, cfg):
                loss = loss_fn(fwd)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        row[f"{name} audio_s/s"] = B * seconds / timed(step, device, warmup=2, iters=steps)
    row.update({"batch": B, "utt_s": seconds, "talker_params_M": sum(p.numel() for p in talker.parameters()) / 1e6,
                "codec_params_M": sum(p.numel() for p in codec.parameters()) / 1e6})
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def talker_speak(config: str, device, chars: int = 45) -> dict:
    """Real-time factor of speaking one sentence: KV-cached Talker generation (sampling every codebook of
    every frame), codec decoding and Griffin-Lim; and generation alone, cached against uncached."""
    from omni.audio import GriffinLim
    cfg, talker, codec = _talker(config, device)
    talker.eval()
    torch.nn.init.constant_(talker.end_head.bias, -20.0)  # untrained: never stop, speak `frames` frames
    torch.nn.init.constant_(talker.dur_out.bias, 3.0)     # and predict long durations: no length guard
    frames = int(chars / 15 * 12.5)
    text, lens = torch.randint(2, 30, (1, chars), device=device), torch.tensor([chars], device=device)
    gl = GriffinLim(cfg.features)
    cached = timed(lambda: talker.generate(text, lens, max_frames=frames), device, 1, 2)
    uncached = timed(lambda: talker.generate(text, lens, max_frames=frames, use_cache=False), device, 1, 1)
    codes, _ = talker.generate(text, lens, max_frames=frames)
    full = timed(lambda: gl(codec.denormalize(codec.decode(codes))[0].cpu()), device, 1, 2) + cached
    audio_s = frames * cfg.frame_ms / 1000
    return {"RTF speak (gen + GL)": full / audio_s, "x realtime speak": audio_s / full,
            "frames/s cached": frames / cached, "frames/s uncached": frames / uncached, "audio_s": audio_s}


def _omni(config: str, device):
    """An OmniModel at the sizes of the configs a Stage E config names (random weights), frozen encoders."""
    import sft_omni
    from omni.models.omni import OmniConfig, OmniModel
    from train_audio_enc import AudioEncConfig
    from train_vision import VisionConfig
    cfg = load_config(sft_omni.SFTConfig, config)
    tiny = "tiny" in config
    part = (lambda n: f"configs/{n}_tiny.json") if tiny else (lambda n: f"configs/demo/{n}.json")
    thinker = load_config(TextConfig, part("thinker")).model
    vision = load_config(VisionConfig, part("vision")).model.vision
    audio = replace(load_config(AudioEncConfig, part("audio_enc")).model, vocab_size=30)
    model = OmniModel(OmniConfig(thinker, vision, audio, cfg.projector, cfg.chat_layout)).to(device)
    return cfg, model.freeze(thinker=cfg.freeze.thinker, vision=cfg.freeze.vision, audio=cfg.freeze.audio)


def omni_train(config: str, device, batch_size: int | None = None, text_tokens: int = 24, steps: int = 3,
               answer_tokens: int = 3) -> dict:
    """Stage E optimizer steps on image-question rows: cached (frozen) image features, one image per row, the
    loss on the last `answer_tokens` (an answer and its end marker, as SFT's mask)."""
    from omni.models.omni import IMAGE_ID
    cfg, model = _omni(config, device)
    B, n_img = batch_size or cfg.batch_size, model.image_token_count
    T = n_img + text_tokens
    ids = torch.randint(20, model.cfg.thinker.vocab_size, (B, T), device=device)
    ids[:, 4:4 + n_img] = IMAGE_ID
    feats = torch.randn(B, n_img, model.cfg.vision.d_model, device=device)
    targets = ids.clone()
    targets[:, :-answer_tokens] = -100
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    fwd = torch.compile(model, dynamic=True) if cfg.use_compile and device.type == "cuda" else model

    def step():
        with autocast_context(device, cfg):
            loss = fwd(ids, targets, image_feats=feats, return_logits=False)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = timed(step, device, 2 if device.type == "cuda" else 1, steps)
    return {"tok/s": B * T / dt, "rows/s": B / dt, "batch": B, "seq": T,
            "trained_params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def omni_answer(config: str, device, question_tokens: int = 10, answer_tokens: int = 8) -> dict:
    """Latency of one answer about one picture: the ViT and the projector on the image, the prompt prefilled,
    then `answer_tokens` greedy tokens with the KV cache (an untrained model: no early stop)."""
    from omni.infer.generate import generate_stream
    from omni.models.omni import IMAGE_ID
    _, model = _omni(config, device)
    model.eval()
    S = model.cfg.vision.image_size
    n_img = model.image_token_count
    ids = torch.randint(20, model.cfg.thinker.vocab_size, (1, n_img + question_tokens + 6), device=device)
    ids[:, 4:4 + n_img] = IMAGE_ID
    pixels = torch.rand(1, 3, S, S, device=device)

    def first():
        with torch.no_grad():
            x = model.embed(ids, model.image_features(pixels))
            return next(generate_stream(model.thinker, x, 1, temperature=0.0))

    def full():
        with torch.no_grad():
            x = model.embed(ids, model.image_features(pixels))
            return list(generate_stream(model.thinker, x, answer_tokens, temperature=0.0))
    return {"ms first token": timed(first, device, 2, 10) * 1000,
            f"ms answer ({answer_tokens} tok)": timed(full, device, 2, 10) * 1000, "prompt_tokens": ids.shape[1]}


def spoken_answer(omni_config: str, talker_config: str, device, chars: int = 20) -> dict:
    """Time to first audio of a spoken answer about a picture: the answer (omni answer's 8 tokens), then the
    Talker speaks its `chars` characters (generation, codec, Griffin-Lim). The reply is spoken once it is
    complete, as infer_chat.py --audio_out does today, so the first audio waits for both."""
    answer = next(v for k, v in omni_answer(omni_config, device).items() if k.startswith("ms answer"))
    speak = talker_speak(talker_config, device, chars)
    speech = speak["RTF speak (gen + GL)"] * speak["audio_s"] * 1000
    return {"ms to first audio": answer + speech, "ms answer": answer, "ms speech": speech,
            "speech RTF": speak["RTF speak (gen + GL)"]}


def _ocr(config: str, device):
    from omni.models.ocr import OCRModel
    from train_ocr import OCRTrainConfig
    cfg = load_config(OCRTrainConfig, config)
    torch.manual_seed(0)
    return cfg, OCRModel(replace(cfg.model, vocab_size=97)).to(device)


def ocr_train(config: str, device, batch_size: int | None = None, width: int = 256, chars: int = 20,
              steps: int = 3) -> dict:
    """OCR optimizer steps on random lines of `width` columns (about a 20-character line at height 32) with
    `chars`-character labels: decoder cross-entropy + CTC."""
    import torch.nn.functional as F
    from omni.models.audio_encoder import ctc_loss
    cfg, model = _ocr(config, device)
    model.train()
    B, H = batch_size or cfg.batch_size, cfg.model.image_height
    pixels, widths = torch.rand(B, 1, H, width, device=device) * 2 - 1, torch.full((B,), width, device=device)
    labels = torch.randint(1, 95, (B, chars), device=device)
    targets = torch.cat([torch.full((B, 1), 95, device=device), labels, torch.full((B, 1), 96, device=device)], 1)
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    fwd = torch.compile(model, dynamic=True) if cfg.use_compile and device.type == "cuda" else model

    def step():
        with autocast_context(device, cfg):
            out = fwd(pixels, widths, targets)
            loss = F.cross_entropy(out["logits"].flatten(0, 1).float(), targets[:, 1:].flatten()) + \
                cfg.ctc_weight * ctc_loss(out["ctc_logits"], out["frames"], labels.tolist(), reduction="mean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = timed(step, device, 2 if device.type == "cuda" else 1, steps)
    return {"lines/s": B / dt, "batch": B, "width": width, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def ocr_read(config: str, device, n: int = 64, width: int = 256, chars: int = 20) -> dict:
    """Recognition throughput: batched greedy decoding with the KV cache of `chars` characters per line
    (an untrained model: no early EOS), against the same without the cache."""
    _, model = _ocr(config, device)
    model.eval()
    pixels = torch.rand(n, 1, model.cfg.image_height, width, device=device) * 2 - 1
    widths = torch.full((n,), width, device=device)
    out = {}
    for name, cache in (("lines/s", True), ("uncached lines/s", False)):
        dt = timed(lambda: model.generate(pixels, widths, max_chars=chars, use_cache=cache), device, 1, 2)
        out[name] = n / dt
    return {**out, "chars": chars}


def _vocoder(config: str, device):
    from train_vocoder import VocoderGAN, VocoderTrainConfig
    cfg = load_config(VocoderTrainConfig, config)
    torch.manual_seed(0)
    lam = {"mel": cfg.lambda_mel, "fm": cfg.lambda_fm, "stft": cfg.lambda_stft}
    return cfg, VocoderGAN(cfg.model, cfg.features, lam).to(device)


def vocoder_train(config: str, device, batch_size: int | None = None, steps: int = 3) -> dict:
    """One GAN step (discriminators, then the generator with every loss) on random segments."""
    cfg, model = _vocoder(config, device)
    model.train()
    B, T, hop = batch_size or cfg.batch_size, cfg.segment_frames, cfg.features.hop_length
    mel = torch.randn(B, T, cfg.features.n_mels, device=device) - 5
    wav = torch.randn(B, (T - 1) * hop, device=device) * 0.1
    opt_g = build_optimizer(model.generator, cfg.lr, 0.0, device)
    opt_d = build_optimizer(model.discriminators, cfg.lr, 0.0, device)

    def step():
        for part, opt in (("discriminator", opt_d), ("generator", opt_g)):
            with autocast_context(device, cfg):
                loss, _ = model(mel, wav, part, True)
            loss.backward()
            opt.step()
            model.zero_grad(set_to_none=True)
    dt = timed(step, device, 1, steps)
    return {"segments/s": B / dt, "audio_s/s": B * (T - 1) * hop / cfg.features.sample_rate / dt, "batch": B,
            "gen_params_M": sum(p.numel() for p in model.generator.parameters()) / 1e6,
            "disc_params_M": sum(p.numel() for p in model.discriminators.parameters()) / 1e6}


def vocoder_synthesis(config: str, device, seconds: float = 4.0) -> dict:
    """Real-time factor of voicing `seconds` of mel frames (one utterance): the generator, the generator and its
    `refine` mel-consistency rounds (what the artifact voices), and Griffin-Lim (32 iterations)."""
    from omni.audio import GriffinLim, mel_refine
    cfg, model = _vocoder(config, device)
    gen = model.generator.eval()
    frames = int(seconds * cfg.features.sample_rate / cfg.features.hop_length) + 1
    mel = torch.randn(frames, cfg.features.n_mels, device=device) - 5
    gl = GriffinLim(cfg.features).to(device)
    with torch.no_grad():
        t_gen = timed(lambda: gen(mel), device, 1, 3)
        t_ref = timed(lambda: mel_refine(gen(mel), mel, cfg.features, cfg.refine), device, 1, 3)
        t_gl = timed(lambda: gl(mel), device, 1, 3)
    return {"rtf": t_gen / seconds, f"rtf refined ({cfg.refine})": t_ref / seconds,
            "griffin_lim_rtf": t_gl / seconds, "audio_s": seconds}


ROWS = {
    "thinker train (demo)": lambda d: thinker_train("configs/demo/thinker.json", d),
    "thinker train (tiny)": lambda d: thinker_train("configs/thinker_tiny.json", d,
                                                    batch_size=None if d.type == "cuda" else 4, steps=3),
    "thinker generate (demo)": lambda d: thinker_generate("configs/demo/thinker.json", d),
    "thinker generate (tiny)": lambda d: thinker_generate("configs/thinker_tiny.json", d),
    "audio_enc train (demo)": lambda d: audio_enc_train("configs/demo/audio_enc.json", d),
    "audio_enc train (tiny)": lambda d: audio_enc_train("configs/audio_enc_tiny.json", d,
                                                        batch_size=None if d.type == "cuda" else 8),
    "asr transcribe (demo)": lambda d: asr_transcribe("configs/demo/audio_enc.json", d),
    "asr transcribe (tiny)": lambda d: asr_transcribe("configs/audio_enc_tiny.json", d),
    "vision train (demo)": lambda d: vision_train("configs/demo/vision.json", d),
    "vision train (tiny)": lambda d: vision_train("configs/vision_tiny.json", d,
                                                  batch_size=None if d.type == "cuda" else 16),
    "talker+codec train (demo)": lambda d: talker_train("configs/demo/talker.json", d),
    "talker+codec train (tiny)": lambda d: talker_train("configs/talker_tiny.json", d,
                                                        batch_size=None if d.type == "cuda" else 8),
    "talker speak (demo)": lambda d: talker_speak("configs/demo/talker.json", d),
    "talker speak (tiny)": lambda d: talker_speak("configs/talker_tiny.json", d),
    "omni sft train (demo)": lambda d: omni_train("configs/demo/omni_sft.json", d),
    "omni sft train (tiny)": lambda d: omni_train("configs/omni_sft_tiny.json", d,
                                                  batch_size=None if d.type == "cuda" else 8),
    "omni answer (demo)": lambda d: omni_answer("configs/demo/omni_sft.json", d),
    "omni answer (tiny)": lambda d: omni_answer("configs/omni_sft_tiny.json", d),
    "spoken answer (demo)": lambda d: spoken_answer("configs/demo/omni_sft.json", "configs/demo/talker.json", d),
    "spoken answer (tiny)": lambda d: spoken_answer("configs/omni_sft_tiny.json", "configs/talker_tiny.json", d),
    "vocoder train (demo)": lambda d: vocoder_train("configs/demo/vocoder.json", d),
    "vocoder train (tiny)": lambda d: vocoder_train("configs/vocoder_tiny.json", d,
                                                    batch_size=None if d.type == "cuda" else 2, steps=1),
    "vocoder synthesis (demo)": lambda d: vocoder_synthesis("configs/demo/vocoder.json", d),
    "vocoder synthesis (tiny)": lambda d: vocoder_synthesis("configs/vocoder_tiny.json", d),
    "ocr train (demo)": lambda d: ocr_train("configs/demo/ocr.json", d),
    "ocr train (tiny)": lambda d: ocr_train("configs/ocr_tiny.json", d, batch_size=None if d.type == "cuda" else 16),
    "ocr read (demo)": lambda d: ocr_read("configs/demo/ocr.json", d),
    "ocr read (tiny)": lambda d: ocr_read("configs/ocr_tiny.json", d),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run rows whose name contains this")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/benchmark.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {}
    for name, fn in ROWS.items():
        if args.only and args.only not in name:
            continue
        results[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in fn(device).items()}
        print(f"{name:<28} " + "  ".join(f"{k} {v:,}" for k, v in results[name].items()), flush=True)
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": info, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
