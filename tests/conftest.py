"""Shared fixtures: a tiny corpus, a tiny tokenizer and a tiny Stage A config, all built offline."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the a red blue green yellow circle square star heart on left right top bottom of and is there "
         "small large what colour how many shapes one two three in beginning god said light was good").split()


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    r = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(4, 14))) + ".\n"
                            for _ in range(n_docs)))
    return path


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """train.txt (87 windows of 32 tokens: an epoch is 21 batches of 4), val.txt and a 320-token tokenizer."""
    from omni.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("text")
    write_corpus(d / "train.txt", 90, seed=1)
    write_corpus(d / "val.txt", 10, seed=2)
    train_tokenizer([d / "train.txt"], d / "tokenizer.model", 320)
    return d


def tiny_text_config(text_data: Path, save_dir: Path, **overrides) -> Path:
    cfg = {
        "save_dir": str(save_dir), "train_file": str(text_data / "train.txt"),
        "val_file": str(text_data / "val.txt"), "tokenizer": str(text_data / "tokenizer.model"),
        "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "max_steps": 40, "print_freq": 1, "val_freq": 20,
        "checkpoint_freq": 3, "keep_checkpoints": 3, "sample_tokens": 4, "val_batch_size": 8,
        "model": {"vocab_size": 320, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2,
                  "d_ff": 128, "ctx_len": 32, "dropout": 0.1},
    }
    for key, value in overrides.items():
        node, *path = key.split(".")
        if path:
            cfg[node][path[0]] = value
        else:
            cfg[key] = value
    path = save_dir.parent / f"{save_dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def load_script(name: str):
    """scripts/<name>.py as a module (the converters import convert_common beside them)."""
    import importlib.util
    scripts = ROOT / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def script_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def run_script(args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=script_env(), **kw)


GPU_PATH = ("device=cpu", "gpu_path=true", "use_amp=true", "use_compile=true", "max_steps=2", "warmup_steps=1",
            "print_freq=1", "val_freq=2", "checkpoint_freq=2")


def assert_trains_on_the_gpu_path(cmd: list[str], save_dir: Path, artifacts: tuple[str, ...], *more: str,
                                  backend: str = "aot_eager") -> None:
    """The stage trains 2 steps on the CPU as on a GPU (bf16 autocast and torch.compile), validates and writes
    its artifacts: a GPU-only bug (a bf16 tensor written into an fp32 buffer, a graph that does not trace)
    fails here. The aot_eager backend traces forward and backward as inductor does without generating
    kernels (a quarter of the time); scripts/gpu_check.sh --cpu runs inductor's kernels too."""
    r = run_script([*cmd, "--fresh", "--set", *GPU_PATH, f"compile_backend={backend}", *more], timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    log = (save_dir / "training.log").read_text()
    assert "gpu_path: on the CPU as on a GPU: bf16 autocast, torch.compile" in log and "torch.compile on" in log
    assert metrics(save_dir, "val"), "no validation ran"
    for name in artifacts:
        assert (save_dir / name).exists(), f"{name} was not written"


def metrics(save_dir: Path, split: str | None = None) -> list[dict]:
    path = save_dir / "metrics.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r.get("split") == split]


def final_weights(save_dir: Path, name: str = "thinker") -> dict:
    return torch.load(save_dir / f"{name}.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, what: str = "weights") -> None:
    """Two state dicts hold the same keys and bitwise-equal tensors; a failure names the first difference."""
    assert a.keys() == b.keys(), f"{what}: keys differ: only in the first {sorted(a.keys() - b.keys())}, " \
                                 f"only in the second {sorted(b.keys() - a.keys())}"
    for k in a:
        x, y = a[k], b[k]
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            assert x == y, f"{what} differ in {k}: {x!r} vs {y!r}"
            continue
        assert x.shape == y.shape and x.dtype == y.dtype, \
            f"{what} differ in {k}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
        assert torch.equal(x, y), \
            f"{what} differ in {k} (largest difference {(x.double() - y.double()).abs().max():g})"


def signal_at(cmd: list[str], save_dir: Path, step: int, sig=signal.SIGKILL, stage: str | None = None) -> tuple[int, str]:
    """Start a stage script, send `sig` once it has logged `step` (of `stage`, in a folder two stages share),
    or as soon after as the poll sees it, and wait for it; returns (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rows = [r for r in metrics(save_dir) if stage is None or r.get("stage") == stage]
        if rows and rows[-1]["step"] >= step:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def kill_at(cmd: list[str], save_dir: Path, step: int) -> int:
    """SIGKILL a run once it has logged `step`; returns the last step it logged."""
    signal_at(cmd, save_dir, step)
    return metrics(save_dir)[-1]["step"]


# --- speech: a "tone alphabet" (each letter a tone, a space silence) for the speech stages --------------------
SR = 16000
# Each letter is a tone; a space is silence. Enough for the pipeline to have something to learn.
TONES = {"a": 440.0, "b": 880.0, "c": 1320.0, "d": 1760.0, " ": 0.0}


def tone_speech(text: str, sr: int = SR, char_s: float = 0.08) -> np.ndarray:
    t = np.arange(int(char_s * sr)) / sr
    parts = [0.3 * np.sin(2 * np.pi * TONES[c] * t) if TONES[c] else np.zeros_like(t) for c in text]
    return np.concatenate([np.zeros(800), *parts, np.zeros(800)]).astype(np.float32)


def write_split(folder, name: str, texts: list[str]):
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    rows = ["wav,text,speaker"]
    for i, text in enumerate(texts):
        sf.write(folder / "wavs" / f"{name}_{i}.wav", tone_speech(text), SR)
        rows.append(f"wavs/{name}_{i}.wav,{text},tone")
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder / f"{name}.csv"


# --- a runs folder of tiny random models, for chat and serving -------------------------------------------------
CHARS = " abcdefghijklmnopqrstuvwxyz'"


def _art(kind, model, model_config, **extra) -> dict:
    from omni.artifacts import FORMAT
    from omni.config import to_dict
    return {"kind": kind, "format": FORMAT, "model": model.state_dict(), "model_config": to_dict(model_config),
            "config": {}, **extra}


@pytest.fixture(scope="session")
def runs(text_data, tmp_path_factory):
    """A runs folder laid out as make demo leaves it: omni_sft/omni_final.pt, talker/{talker,rvq_codec}.pt,
    ocr/ocr.pt; plus an image, a clip and a text line."""
    from PIL import Image

    from omni.audio import MelConfig
    from omni.config import to_dict
    from omni.models.audio_encoder import AudioEncoderConfig
    from omni.models.codec import CodecConfig, MelCodec
    from omni.models.ocr import OCRConfig, OCRModel
    from omni.models.omni import OmniConfig, OmniModel, ProjectorConfig
    from omni.models.talker import Talker, TalkerConfig
    from omni.models.thinker import ThinkerConfig
    from omni.models.vision import ViTConfig
    d = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    tok = torch.frombuffer(bytearray((text_data / "tokenizer.model").read_bytes()), dtype=torch.uint8)
    cfg = OmniConfig(ThinkerConfig(vocab_size=320, n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64,
                                   ctx_len=128),
                     ViTConfig(image_size=16, patch_size=4, d_model=24, n_layers=1, n_heads=2, d_ff=48),
                     AudioEncoderConfig(n_mels=16, d_model=24, n_layers=1, n_heads=2, d_ff=48, vocab_size=6,
                                        dropout=0.0), ProjectorConfig(4, True, 2))
    (d / "omni_sft").mkdir()
    torch.save(_art("omni", OmniModel(cfg), cfg, tokenizer=tok, features=to_dict(MelConfig(n_mels=16)),
                    sources={}), d / "omni_sft" / "omni_final.pt")
    mel = MelConfig(n_mels=16, normalize="none")
    ccfg = CodecConfig(n_mels=16, block=4, hidden=16, latent=8, n_res=1, codebooks=2, codebook_size=16)
    tcfg = TalkerConfig(vocab_size=len(CHARS) + 2, d_model=16, n_layers=1, n_heads=2, d_ff=32, text_layers=1,
                        max_frames=64, dropout=0.0)
    (d / "talker").mkdir()
    torch.save(_art("rvq_codec", MelCodec(ccfg), ccfg, features=to_dict(mel)), d / "talker" / "rvq_codec.pt")
    talker = Talker(tcfg, ccfg)
    torch.nn.init.constant_(talker.end_head.bias, -10.0)   # random weights would stop at once: speak to the guard
    torch.save(_art("talker", talker, tcfg, vocab=CHARS, features=to_dict(mel),
                    codec_config=to_dict(ccfg)), d / "talker" / "talker.pt")
    ocfg = OCRConfig(channels=8, d_model=32, enc_layers=1, dec_layers=1, n_heads=4, d_ff=64, dropout=0.0,
                     vocab_size=len(CHARS) + 3, max_text_length=16)
    (d / "ocr").mkdir()
    torch.save(_art("ocr", OCRModel(ocfg), ocfg, vocab=CHARS), d / "ocr" / "ocr.pt")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(d / "red.png")
    Image.new("L", (96, 32), 255).save(d / "line.png")
    sf.write(d / "q.wav", tone_speech("abc"), SR)
    (d / "notes.txt").write_text("not audio, not an image\n")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return d


@contextlib.contextmanager
def serving(ckpt_dir: Path, *args: str):
    """serve.py on a free port for the `with` block; yields its base URL (http://localhost:PORT). Its log (a
    line per request) goes to a file, not a pipe that could fill and stall it."""
    import tempfile
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "serve.py", "--ckpt_dir", str(ckpt_dir), "--port", "0", *args],
                                cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = proc.stdout.readline()   # "serving on http://localhost:PORT/ ..." once it listens
            if not line.startswith("serving on "):
                proc.kill()
                proc.wait()
                log.seek(0)
                raise RuntimeError(f"serve.py did not start: {line}{log.read()[-3000:]}")
            yield line.split()[2].rstrip("/")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
