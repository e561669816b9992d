#!/usr/bin/env python
"""Throughput of each stage's hot paths, printed as a table and written as JSON.

    python scripts/benchmark.py [--only thinker] [--device auto] [--out runs/benchmark.json]
    python scripts/benchmark.py --only serve [--demo runs/demo]    # time to first token / audio through the API

Training rows time what training runs: the stage's own optimizer steps (its data stream, loss, optimizers,
AMP and compile settings) through the engine (`Trainer.benchmark`), at the demo's sizes on the built-in data
(`make data`; the stages that read other stages' artifacts need `make demo`'s runs/demo, else their row says
what is missing). Inference rows time generation, recognition and synthesis on random weights: KV-cached
against uncached decoding, real-time factors. Training throughput at the seed (_tiny) sizes on a GPU:
`scripts/gpu_check.sh`.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
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


def stage_train(script: str, stage: str, config: str, device, *overrides: str, steps: int = 5,
                warmup: int = 2) -> dict:
    """Optimizer steps of `stage` (a Stage class of `script`) with `config`, timed by the engine after `warmup`
    steps; its save_dir is runs/benchmark/<stage> (caches kept between runs; nothing is saved there)."""
    import importlib
    from omni.train.engine import Trainer
    stage_cls = getattr(importlib.import_module(script), stage)
    save = Path("runs/benchmark") / stage_cls.name
    if stage == "TalkerStage":   # the Talker trains on the codes of the codec beside it
        codec = Path(load_config(stage_cls.config_cls, config).save_dir) / "rvq_codec.pt"
        if not codec.exists():
            return {"skipped": f"needs {codec} (make demo)"}
        save.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(codec, save / "rvq_codec.pt")
    argv = ["--config", config, "--set", f"save_dir={save}", f"device={device}", *overrides]
    try:
        return Trainer(stage_cls, argv).benchmark(steps, warmup)
    except FileNotFoundError as e:   # an artifact of an earlier stage, or the built-in data
        return {"skipped": f"{e} (make data; make demo for the artifacts)"}


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


def _talker(config: str, device):
    from omni.models.codec import MelCodec
    from omni.models.talker import Talker
    from train_talker import TalkerTrainConfig
    cfg = load_config(TalkerTrainConfig, config)
    torch.manual_seed(0)
    talker = Talker(replace(cfg.model, vocab_size=30), cfg.codec.model).to(device)  # 28 characters + 2
    return cfg, talker, MelCodec(cfg.codec.model).to(device)


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


DEMO = Path("runs/demo")   # --demo: where make demo left its runs (the serve rows talk to its export)


def _first_times(url: str, body: dict) -> tuple[float, float | None, str]:
    """Seconds to the first streamed text and the first audio of one request, and the reply's text."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    first = audio = None
    text = []
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {})
        if delta.get("content"):
            first = first or time.perf_counter() - t0
            text.append(delta["content"])
        if delta.get("audio") and audio is None:
            audio = time.perf_counter() - t0
    conn.close()
    return first, audio, "".join(text).strip()


def serve_api(device, n: int = 5) -> dict:
    """Time to first token and to first audio through serve.py's API (its server in this process, a streaming
    HTTP client), on the demo model: a question answered in text, the same answered aloud (a one-sentence
    reply: the audio comes when the sentence is spoken), a picture question answered aloud. Medians of n."""
    import base64
    import io
    import statistics
    import threading
    from PIL import Image, ImageDraw
    from omni.infer.chat import load_chat
    from omni.serve.server import App, make_server
    ckpt = DEMO / "export" if (DEMO / "export").exists() else DEMO
    if not (ckpt / "omni").exists() and not (ckpt / "omni_sft").exists():
        return {"skipped": f"needs {DEMO}/export (make demo)"}
    server = make_server(App(load_chat(ckpt, str(device)), log=False), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://localhost:{server.server_address[1]}"
    im = Image.new("RGB", (64, 64), (120, 120, 120))
    ImageDraw.Draw(im).ellipse((20, 20, 44, 44), fill=(220, 30, 30))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}
    spoken = {"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "wav"}}
    asks = {"text": {"messages": [{"role": "user", "content": "what does mugwort mean?"}]},
            "spoken": {**spoken, "messages": [{"role": "user", "content": "what does mugwort mean?"}]},
            "picture spoken": {**spoken, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what colour is the circle?"}, picture]}]}}
    row = {}
    try:
        for name, body in asks.items():
            runs = [_first_times(url, {"model": "uomni", **body}) for _ in range(n + 1)][1:]   # the first: warm-up
            row[f"ms first token ({name})"] = statistics.median(r[0] for r in runs) * 1000
            if name != "text":
                row[f"ms first audio ({name})"] = statistics.median(r[1] for r in runs) * 1000
                row[f"reply ({name})"] = runs[0][2]
    finally:
        server.shutdown()
        server.server_close()
    return row


ROWS = {
    "thinker train (demo)": lambda d: stage_train("train_text", "TextStage", "configs/demo/thinker.json", d),
    "thinker generate (demo)": lambda d: thinker_generate("configs/demo/thinker.json", d),
    "thinker generate (tiny)": lambda d: thinker_generate("configs/thinker_tiny.json", d),
    "audio_enc train (demo)": lambda d: stage_train("train_audio_enc", "AudioEncStage", "configs/demo/audio_enc.json",
                                                    d),
    "asr transcribe (demo)": lambda d: asr_transcribe("configs/demo/audio_enc.json", d),
    "asr transcribe (tiny)": lambda d: asr_transcribe("configs/audio_enc_tiny.json", d),
    "vision train (demo)": lambda d: stage_train("train_vision", "VisionStage", "configs/demo/vision.json", d),
    "codec train (demo)": lambda d: stage_train("train_talker", "CodecStage", "configs/demo/talker.json", d),
    "talker train (demo)": lambda d: stage_train("train_talker", "TalkerStage", "configs/demo/talker.json", d,
                                                 "roundtrip=0"),
    "talker speak (demo)": lambda d: talker_speak("configs/demo/talker.json", d),
    "talker speak (tiny)": lambda d: talker_speak("configs/talker_tiny.json", d),
    "omni sft train (demo)": lambda d: stage_train("sft_omni", "OmniStage", "configs/demo/omni_sft.json", d),
    "omni answer (demo)": lambda d: omni_answer("configs/demo/omni_sft.json", d),
    "omni answer (tiny)": lambda d: omni_answer("configs/omni_sft_tiny.json", d),
    "spoken answer (demo)": lambda d: spoken_answer("configs/demo/omni_sft.json", "configs/demo/talker.json", d),
    "spoken answer (tiny)": lambda d: spoken_answer("configs/omni_sft_tiny.json", "configs/talker_tiny.json", d),
    "vocoder train (demo)": lambda d: stage_train("train_vocoder", "VocoderStage", "configs/demo/vocoder.json", d),
    "vocoder train (demo, with discriminators)": lambda d: stage_train(
        "train_vocoder", "VocoderStage", "configs/demo/vocoder.json", d, "adv_start=0"),
    "vocoder synthesis (demo)": lambda d: vocoder_synthesis("configs/demo/vocoder.json", d),
    "vocoder synthesis (tiny)": lambda d: vocoder_synthesis("configs/vocoder_tiny.json", d),
    "ocr train (demo)": lambda d: stage_train("train_ocr", "OCRStage", "configs/demo/ocr.json", d),
    "ocr read (demo)": lambda d: ocr_read("configs/demo/ocr.json", d),
    "ocr read (tiny)": lambda d: ocr_read("configs/ocr_tiny.json", d),
    "serve api (demo)": serve_api,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run rows whose name contains this")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/benchmark.json")
    p.add_argument("--demo", default=str(DEMO), help="make demo's runs folder (the serve rows use its export)")
    args = p.parse_args(argv)
    globals()["DEMO"] = Path(args.demo)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {}
    for name, fn in ROWS.items():
        if args.only and args.only not in name:
            continue
        results[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in fn(device).items()}
        print(f"{name:<42} " + "  ".join(f"{k} {v}" if isinstance(v, str) else f"{k} {v:,}"
                                         for k, v in results[name].items()), flush=True)
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": info, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
