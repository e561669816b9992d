"""Stage D: the RVQ codec, the Talker, monotonic alignment, speaking (omni.tts), evaluation and resume of
train_talker.py — on the tone alphabet built here, offline."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import (assert_same_weights, assert_trains_on_the_gpu_path, final_weights, metrics, run_script,
                      signal_at, tone_speech, write_split)

from omni.artifacts import atomic_save, load_artifact
from omni.audio import LogMel, load_audio
from omni.config import to_dict
from omni.data.speech import read_manifest
from omni.data.tts import make_sample, pad_ids
from omni.infer.asr import transcribe
from omni.infer.evaluate import code_cross_entropy
from omni.errors import ArtifactError, UserError
from omni.infer.tts import load_speaker
from omni.metrics import cer, wer
from omni.models.codec import CodecConfig, EMAQuantizer, MelCodec, usage_perplexity
from omni.models.talker import Talker, TalkerConfig, durations_to_path, monotonic_align
from omni.train.engine import run
from omni.vocab import TextVocab
from train_talker import CodecStage


# --- codec -------------------------------------------------------------------------------------------------
def test_ema_moves_codewords_toward_their_vectors_and_restarts_dead_codes():
    torch.manual_seed(0)
    q = EMAQuantizer(size=3, dim=2, decay=0.5, restart_below=0.3)
    q.initialized.fill_(True)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-50.0, -50.0]]))
    q.ema_sum.copy_(q.codebook)
    x = torch.tensor([[1.0, 1.0], [1.2, 0.8], [4.0, 6.0], [6.0, 4.0]])
    q.train()
    _, ids, restarted = q(x)
    assert ids.tolist() == [0, 0, 1, 1] and restarted == 0
    # EMA of (sum, count) with decay .5: code 0 goes from (0, 0) toward the mean (1.1, .9) of its two vectors
    expected = (0.5 * torch.zeros(2) + 0.5 * torch.tensor([2.2, 1.8])) / (0.5 * 1 + 0.5 * 2)
    assert torch.allclose(q.codebook[0], expected, atol=1e-3)
    assert torch.allclose(q.codebook[1], torch.tensor([5.0, 5.0]), atol=1e-3)    # already at its mean
    assert q.ema_count[2] == pytest.approx(0.5)
    *_, restarted = q(x)                    # code 2 never wins: its usage decays 1 -> .5 -> .25 < .3: restarted
    assert restarted == 1
    assert any(torch.equal(q.codebook[2], row) for row in x), "a dead code restarts on a vector of the batch"
    restarted_at = q.codebook[2].clone()
    q(torch.tensor([[1.0, 1.0]]))                     # the next update keeps it there (sum / count agree)
    assert torch.allclose(q.codebook[2], restarted_at, atol=1e-4)


def test_quantizer_under_bf16_autocast_stays_fp32_and_restarts_codes():
    torch.manual_seed(0)
    q = EMAQuantizer(size=4, dim=3, decay=0.5, restart_below=0.9).train()
    q(torch.randn(16, 3) * 5)                             # k-means initialisation: four spread codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.nn.functional.linear(q.codebook[:1].expand(8, 3), torch.eye(3))  # bf16, as under autocast
        assert z.dtype == torch.bfloat16
        restarted = 0
        for _ in range(3):                                # only code 0 is used: the others decay and restart
            quantized, ids, r = q(z)
            restarted += r
    assert restarted >= 3
    assert quantized.dtype == torch.float32 and q.codebook.dtype == torch.float32


def test_kmeans_initialisation_uses_the_first_batch_and_usage_perplexity():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 2)).reshape(-1, 2)
    q = EMAQuantizer(size=4, dim=2, decay=0.9, restart_below=0.0).train()
    _, ids, _ = q(x)
    assert bool(q.initialized)
    assert sorted(torch.bincount(ids, minlength=4).tolist()) == [50, 50, 50, 50]
    assert usage_perplexity(ids[:, None], 4)[0] == pytest.approx(4.0)
    assert usage_perplexity(torch.zeros(10, 1, dtype=torch.long), 4)[0] == pytest.approx(1.0)


def test_codec_shapes_and_frame_rate():
    cfg = CodecConfig(n_mels=16, block=8, hidden=32, latent=8, codebooks=3, codebook_size=16)
    codec = MelCodec(cfg).train()
    x = torch.randn(2, 83, 16)                                  # 0.83 s of 10 ms frames
    out = codec(x, torch.tensor([83, 50]))
    assert out["codes"].shape == (2, 11, 3)                     # ceil(83 / 8): 12.5 code frames per second
    assert out["block_mask"].sum(1).tolist() == [11, 7]
    assert out["recon"].shape == x.shape and torch.isfinite(out["loss"])
    codes = codec.encode(x)
    assert codes.shape == (2, 11, 3) and codes.dtype == torch.long and codec.training
    assert codec.decode(codes).shape == (2, 88, 16)
    assert codec.decode(codes[..., :1]).shape == (2, 88, 16)   # coarse: the first codebook alone


# --- alignment ---------------------------------------------------------------------------------------------
def test_monotonic_alignment_recovers_known_durations():
    torch.manual_seed(0)
    durations = torch.tensor([[3, 1, 4, 2, 5], [2, 2, 6, 0, 0]])
    text_lens, frame_lens = torch.tensor([5, 3]), durations.sum(1)
    means = torch.randn(2, 5, 6) * 3
    path = durations_to_path(durations)
    frames = path.transpose(1, 2) @ means + 0.05 * torch.randn(2, path.shape[2], 6)
    logp = -0.5 * torch.cdist(means, frames).pow(2)
    found = monotonic_align(logp, text_lens, frame_lens)
    assert torch.equal(found.sum(2).long(), durations)
    # each frame belongs to exactly one token (padding frames to none), tokens in order
    assert torch.equal(found.sum(1), (torch.arange(path.shape[2])[None] < frame_lens[:, None]).float())
    first = found.argmax(2)
    assert (first[0].diff() > 0).all()


# --- talker ------------------------------------------------------------------------------------------------
TINY_CODEC = CodecConfig(codebooks=2, codebook_size=8, n_mels=4, block=2)


def tiny_talker(**kw) -> Talker:
    cfg = dict(vocab_size=8, d_model=32, n_layers=2, n_heads=2, d_ff=64, text_layers=1, max_frames=64,
               dropout=0.0, frame_dropout=0.0)
    cfg.update(kw)
    return Talker(TalkerConfig(**cfg), TINY_CODEC)


def test_cached_generation_equals_uncached():
    torch.manual_seed(0)
    model = tiny_talker().eval()
    torch.nn.init.constant_(model.end_head.bias, -20.0)         # never stop: compare a full max_frames run
    torch.nn.init.constant_(model.dur_out.bias, 3.0)            # 20 frames or more per character: no length guard
    ids, lens = pad_ids([[1, 2, 3, 4, 1], [1, 5, 1]])
    for temperature in (0.0, 1.0):
        a = model.generate(ids, lens, temperature=temperature, max_frames=12,
                           generator=torch.Generator().manual_seed(3))
        b = model.generate(ids, lens, temperature=temperature, max_frames=12, use_cache=False,
                           generator=torch.Generator().manual_seed(3))
        assert a[0].shape == (2, 12, 2) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("spread", [True, False])
def test_duration_spread_speaks_the_mean_duration_where_a_point_estimate_speaks_short(spread):
    """Token durations drawn from a log-normal (log(1 + frames) ~ N(log 10, 0.5^2): median 9 frames, mean 10.3):
    a predictor of the log-duration alone learns its median and speaks every token short; with the spread it
    learns the variance too and speaks the mean, so an utterance takes as long as its recordings do."""
    torch.manual_seed(0)
    model = tiny_talker(duration_spread=spread)
    lens = torch.full((8,), 16)
    params = [p for n, p in model.named_parameters() if n.startswith("dur_")]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        frames = torch.expm1(np.log(10) + 0.5 * torch.randn(8, 16))
        loss = model.duration_loss(torch.randn(8, 16, 32), lens, frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spoken = model.predict_durations(torch.randn(8, 16, 32), lens).float().mean()
    mean = np.exp(np.log(10) + 0.5 ** 2 / 2) - 1
    if spread:
        assert abs(spoken / mean - 1) < 0.07, (float(spoken), mean)
    else:
        assert spoken / mean < 0.92, (float(spoken), mean)


def test_talker_memorises_a_text_to_codes_pair_and_stops_by_itself():
    """Exact reproduction fails if teacher forcing is shifted wrongly (the decoder would learn to copy the
    frame it is given instead of predicting the next one) or if the end-of-speech decision is not learned."""
    torch.manual_seed(0)
    model = tiny_talker()
    ids, text_lens = pad_ids([[1, 2, 3, 4, 1]])
    codes = torch.tensor([[[3, 1], [3, 1], [5, 2], [0, 7], [6, 6], [2, 4]]])  # repeats: copying is wrong
    mel = torch.randn(1, 12, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(ids, text_lens, mel, torch.tensor([12]), codes, torch.tensor([6]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    got, lengths = model.generate(ids, text_lens, temperature=0.0, max_frames=40)
    assert lengths.tolist() == [6], "stops at end-of-speech, not at max_frames"
    assert torch.equal(got[:, :6], codes)


def test_thinker_hidden_states_can_replace_characters():
    model = tiny_talker(thinker_dim=12).eval()
    h = model.encode_text(None, torch.tensor([3]), text_embeds=torch.randn(1, 3, 12))
    assert h.shape == (1, 3, 32)
    with pytest.raises(ValueError, match="thinker_dim"):
        tiny_talker().encode_text(None, torch.tensor([3]), text_embeds=torch.randn(1, 3, 12))


def test_text_vocab_names_characters_it_cannot_speak():
    vocab = TextVocab.from_texts(["ab cd", "dab"])
    assert vocab.encode("Ab, c!") == [1, vocab.index["a"], vocab.index["b"], vocab.index[" "], vocab.index["c"], 1]
    with pytest.raises(ValueError, match="'x'"):
        vocab.encode("a x")


def test_text_vocab_reads_known_words_as_phonemes_and_the_rest_as_letters():
    lexicon = {"the": ("DH", "AH0"), "cat": ("K", "AE1", "T"), "dog": ("D", "AO1", "G")}
    vocab = TextVocab.from_texts(["The cat", "cot"], lexicon)
    assert vocab.chars == " acehot" and vocab.phonemes == ["AE1", "AH0", "DH", "K", "T"] and len(vocab) == 14
    # each unit keeps the character it stands for: a word's phonemes spread over its letters
    assert vocab.units("The cat, cot!") == [("DH", 0), ("AH0", 1), (" ", 3), ("K", 4), ("AE1", 5), ("T", 6),
                                            (" ", 7), ("c", 8), ("o", 9), ("t", 10)]
    assert vocab.encode("the cat") == [1] + [vocab.index[u] for u in ("DH", "AH0", " ", "K", "AE1", "T")] + [1]
    # "dog" has a phoneme training never saw (AO1): it is read as letters, and two of those are unknown
    with pytest.raises(UserError, match="'dg'"):
        vocab.encode("the dog")
    assert TextVocab.from_texts(["The cat"]).units("cat") == [("c", 0), ("a", 1), ("t", 2)]   # no lexicon


# --- the stage ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tts_data(tmp_path_factory):
    """train.csv: 24 tone-alphabet utterances (an epoch is 6 batches of 4); val.csv: 4."""
    d = tmp_path_factory.mktemp("tts")
    r = np.random.default_rng(1)
    words = lambda n: " ".join("".join(r.choice(list("abcd"), r.integers(1, 4))) for _ in range(n))
    write_split(d, "train", [words(r.integers(1, 4)) for _ in range(24)])
    write_split(d, "val", [words(2) for _ in range(4)])
    return d


def test_codec_and_talker_of_one_run_read_each_manifest_once(tts_data, monkeypatch):
    import train_talker
    reads = []
    real = train_talker.load_audio
    monkeypatch.setattr(train_talker, "load_audio", lambda *a: reads.append(a[0]) or real(*a))
    mel = LogMel(train_talker.TalkerFeatures(n_mels=16))
    with train_talker.shared_reads():
        first = train_talker.speech_set(str(tts_data / "val.csv"), mel)
        first.texts.append("changed by a stage")   # a stage's own lists: the next reader does not see this
        second = train_talker.speech_set(str(tts_data / "val.csv"), mel)
    assert len(reads) == 4 and len(second) == 4 and second.mels[0] is first.mels[0]
    train_talker.speech_set(str(tts_data / "val.csv"), mel)   # outside: read again
    assert len(reads) == 8


def tiny_talker_config(data, save_dir, **overrides):
    cfg = {"save_dir": str(save_dir), "train_csv": str(data / "train.csv"), "val_csvs": [str(data / "val.csv")],
           "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "max_steps": 10, "print_freq": 1, "val_freq": 5,
           "checkpoint_freq": 3, "val_batch_size": 4, "val_samples": 2, "roundtrip": 4, "bucket_batches": 2,
           "features": {"n_mels": 16},
           "codec": {"max_steps": 8, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "val_freq": 4,
                     "model": {"n_mels": 16, "hidden": 32, "latent": 8, "codebooks": 2, "codebook_size": 16}},
           "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "text_layers": 1, "dropout": 0.1}}
    cfg.update(overrides)
    path = save_dir.parent / f"{save_dir.name}.json"
    path.write_text(json.dumps(cfg))
    return path


def codec_mse(codec: MelCodec, mels: list[torch.Tensor]) -> float:
    """Mean squared error of codec.decode(codec.encode(x)) against x over every frame of the (normalised) mels."""
    se = n = 0.0
    with torch.no_grad():
        for m in mels:
            x = codec.normalize(m[None])
            se += float((codec.decode(codec.encode(x))[:, :x.shape[1]] - x).pow(2).sum())
            n += x.numel()
    return se / n


def test_codec_learns_to_reconstruct_the_speech_it_trains_on(tts_data, tmp_path):
    """200 codec steps reconstruct the training mels from 2 x 16 codes per block with MSE ~0.02 (0.019-0.031
    over five seeds; 0.13-0.18 after 100 steps), against 1.1 for the same codec untrained and 1.0 for
    predicting every bin's mean (the mels are normalised per bin)."""
    cfg = json.loads(tiny_talker_config(tts_data, tmp_path / "run").read_text())
    cfg["codec"].update(max_steps=200, val_freq=1000)
    (tmp_path / "codec.json").write_text(json.dumps({**cfg, "checkpoint_freq": 1000}))
    run(CodecStage, ["--config", str(tmp_path / "codec.json")])
    codec = load_artifact(tmp_path / "run" / "rvq_codec.pt", "rvq_codec")
    mel = LogMel(codec.features)
    mels = [mel(load_audio(p)) for p in sorted((tts_data / "wavs").glob("train_*.wav"))]
    torch.manual_seed(0)
    untrained = MelCodec(codec.model.cfg).eval()
    untrained.load_state_dict({k: v for k, v in codec.model.state_dict().items() if k.startswith("mel_")},
                              strict=False)          # the same normalisation, nothing learned
    trained, before = codec_mse(codec.model.eval(), mels), codec_mse(untrained, mels)
    assert trained < 0.08 and before > 0.5, (trained, before)


@pytest.fixture(scope="module")
def asr_ckpt(tts_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("tts_asr") / "run"
    # trained to read the tone alphabet (CER ~0.05 on val.csv), so that round-trip error rates mean something
    cfg = {"save_dir": str(save), "train_csv": str(tts_data / "train.csv"), "val_split": 0.0,
           "batch_size": 4, "max_steps": 150, "warmup_steps": 3, "lr": 3e-3, "spec_augment": False,
           "features": {"n_mels": 32},
           "model": {"n_mels": 32, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0}}
    path = save.parent / "asr.json"
    path.write_text(json.dumps(cfg))
    r = run_script(["train_audio_enc.py", "--config", str(path)])
    assert r.returncode == 0, r.stderr[-3000:]
    return save / "audio_enc.pt"


def trained_run(data, asr_ckpt, save):
    """An uninterrupted run of the tiny config on `data` into `save`: 8 codec steps, then 10 Talker steps
    (crossing an epoch boundary in each)."""
    r = run_script(["train_talker.py", "--config",
                    str(tiny_talker_config(data, save, audio_enc_ckpt=str(asr_ckpt)))])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


@pytest.fixture(scope="module")
def reference(tts_data, asr_ckpt, tmp_path_factory):
    return trained_run(tts_data, asr_ckpt, tmp_path_factory.mktemp("talker_ref") / "run")


def test_stage_writes_both_artifacts_samples_and_metrics(reference):
    for name in ("rvq_codec.pt", "talker.pt", "training.log", "metrics.jsonl", "config.json",
                 "samples/val_0.wav", "samples/val_0.txt"):
        assert (reference / name).exists(), name
    rows = metrics(reference, "val")
    codec_val = [r for r in rows if r["stage"] == "rvq_codec"]
    talker_val = [r for r in rows if r["stage"] == "talker"]
    assert [r["step"] for r in codec_val] == [4, 8] and [r["step"] for r in talker_val] == [5, 10]
    assert {"val/mse", "val/l1", "val/usage_ppl_0", "val/usage_ppl_1"} <= codec_val[-1].keys()
    assert {"val/code_ppl", "val/code_ppl_0", "val/roundtrip_wer", "val/roundtrip_cer"} <= talker_val[-1].keys()
    state = torch.load(reference / "talker.pt", weights_only=True)
    assert state["vocab"] == " abcd" and state["model_config"]["vocab_size"] == 7 and "optimizers" not in state
    assert state["lexicon"] == "" and state["phonemes"] == []
    wav, sr = sf.read(reference / "samples" / "val_0.wav")
    assert sr == 16000 and len(wav) > 1600 and np.abs(wav).max() > 0


def test_tts_entry_point_speaks_one_text_and_a_file_of_texts(reference, tmp_path):
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(reference), "--text", "ab cd", "--out",
                    str(tmp_path / "one.wav")])
    assert r.returncode == 0, r.stderr[-3000:]
    wav, sr = sf.read(tmp_path / "one.wav")
    assert sr == 16000 and len(wav) > 0
    (tmp_path / "lines.txt").write_text("abc\n\nda db\n")
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(reference), "--texts", str(tmp_path / "lines.txt"),
                    "--out_dir", str(tmp_path / "many")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["0000.wav", "0001.wav"]
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(reference), "--text", "xyz", "--out", str(tmp_path / "x.wav")])
    assert r.returncode == 1 and "'xyz'" in r.stderr and not (tmp_path / "x.wav").exists()


def test_evaluate_tts_prints_the_metrics(reference, tts_data, asr_ckpt):
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(reference), "--data",
                    str(tts_data / "val.csv"), "--asr_ckpt", str(asr_ckpt)])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["n"] == 4 and out["recon_mse"] > 0
    val = [m for m in metrics(reference, "val") if m["stage"] == "talker"][-1]
    assert out["code_perplexity"] == pytest.approx(val["val/code_ppl"], rel=1e-4)
    # the perplexity is exp of the mean per-codebook cross-entropy, and 10 steps put it well below that of the
    # same Talker untrained on the same codes (10.6 against 17.5; a uniform guess over 16 codes scores 16)
    per_book = out["code_perplexity_per_book"]
    assert out["code_perplexity"] == pytest.approx(float(np.exp(np.mean(np.log(per_book)))), rel=1e-3)
    speaker = load_speaker(reference)
    utts = read_manifest(tts_data / "val.csv")
    samples = [make_sample(speaker.codec, speaker.vocab, u.text, LogMel(speaker.features)(load_audio(u.wav)))
               for u in utts]
    torch.manual_seed(0)
    untrained = float(code_cross_entropy(Talker(speaker.talker.cfg, speaker.talker.codec_cfg).eval(), samples).mean().exp())
    assert out["code_perplexity"] < 0.8 * untrained, (out["code_perplexity"], untrained)
    # the recordings' error rates are the recogniser's on them, counted here; the recogniser reads them well
    # (CER 0.05), and far better than the babble of a Talker trained 10 steps (CER 1.0), which is what the
    # round trip transcribes
    asr = load_artifact(asr_ckpt, "audio_enc")
    refs = [u.text for u in utts]
    heard = transcribe(asr.model, asr.vocab, LogMel(asr.features), [u.wav for u in utts])
    assert (out["original_wer"], out["original_cer"]) == (pytest.approx(wer(refs, heard)),
                                                          pytest.approx(cer(refs, heard)))
    assert out["original_cer"] <= 0.2 and out["roundtrip_cer"] >= 0.6, out
    assert out["griffinlim_cer"] < out["roundtrip_cer"], out   # Griffin-Lim of the true mels stays readable
    assert np.isfinite(out["real_time_factor"]) and out["real_time_factor"] > 0
    # without the bounds: the same round trip and originals, no Griffin-Lim copies transcribed
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(reference), "--data",
                    str(tts_data / "val.csv"), "--asr_ckpt", str(asr_ckpt), "--no_bounds"])
    assert r.returncode == 0, r.stderr[-3000:]
    lean = json.loads(r.stdout)
    assert not {"griffinlim_cer", "codec_cer"} & set(lean), lean
    assert (lean["roundtrip_cer"], lean["original_cer"]) == (out["roundtrip_cer"], out["original_cer"])


def edited_copy(reference, folder, name, key, value):
    """A copy of the run folder whose artifact `name` has model_config[key] = value."""
    shutil.copytree(reference, folder)
    state = torch.load(folder / name, weights_only=True)
    state["model_config"][key] = value
    atomic_save(state, folder / name)
    return folder


def test_loading_mismatched_or_missing_checkpoints_is_an_error(reference, tmp_path):
    bad = edited_copy(reference, tmp_path / "bad", "talker.pt", "d_model", 48)
    with pytest.raises(RuntimeError, match="talker.pt"):
        load_speaker(bad)
    (bad / "talker.pt").unlink()
    with pytest.raises(FileNotFoundError, match="talker.pt"):
        load_speaker(bad)
    other = edited_copy(reference, tmp_path / "other", "rvq_codec.pt", "codebooks", 3)
    with pytest.raises(RuntimeError, match="rvq_codec.pt"):     # its weights no longer fit its config
        load_speaker(other)
    # a Talker with another codec's codes: a codec of another config, whose weights fit it
    codec = load_artifact(reference / "rvq_codec.pt").model
    cfg = dataclasses.replace(codec.cfg, latent=codec.cfg.latent * 2)
    swapped = tmp_path / "swapped"
    shutil.copytree(reference, swapped)
    state = torch.load(reference / "rvq_codec.pt", weights_only=True)
    atomic_save({**state, "model": MelCodec(cfg).state_dict(), "model_config": to_dict(cfg)}, swapped / "rvq_codec.pt")
    with pytest.raises(ArtifactError, match=r"talker.pt was trained with another codec than .*rvq_codec.pt: latent"):
        load_speaker(swapped)
    step = sorted(reference.glob("talker_step_*.pt"))[-1]
    (other / "talker.pt").write_bytes(step.read_bytes())
    with pytest.raises(ValueError, match="talker.pt is a step checkpoint"):
        load_speaker(other)


def assert_same_run(ref, run):
    for name in ("rvq_codec", "talker"):
        assert_same_weights(final_weights(ref, name), final_weights(run, name), f"{name}.pt weights")
    assert [(m["stage"], m["step"], m["loss"]) for m in metrics(run)] == \
        [(m["stage"], m["step"], m["loss"]) for m in metrics(ref)]


@pytest.mark.parametrize("stage,step", [("rvq_codec", 5), ("talker", 7)])
def test_sigkill_in_either_part_then_rerun_is_bitwise_identical(tts_data, asr_ckpt, reference, tmp_path,
                                                               stage, step):
    save = tmp_path / "run"
    cmd = ["train_talker.py", "--config", str(tiny_talker_config(tts_data, save, audio_enc_ckpt=str(asr_ckpt)))]
    signal_at(cmd, save, step, stage=stage)
    assert not (save / "talker.pt").exists(), "the run finished before the kill"
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {stage}_step_" in (save / "training.log").read_text()
    assert_same_run(reference, save)


# --- the Thinker-conditioned Talker ------------------------------------------------------------------------
def tiny_thinker_artifact(text_data, path, seed: int = 0):
    from omni.artifacts import FORMAT
    from omni.config import to_dict
    from omni.models.thinker import Thinker, ThinkerConfig
    torch.manual_seed(seed)
    cfg = ThinkerConfig(vocab_size=320, n_layers=1, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32, ctx_len=8)
    tok = torch.frombuffer(bytearray((text_data / "tokenizer.model").read_bytes()), dtype=torch.uint8)
    atomic_save({"kind": "thinker", "format": FORMAT, "model": Thinker(cfg).state_dict(), "model_config":
                 to_dict(cfg), "config": {}, "tokenizer": tok}, path)
    return path


def test_thinker_tokens_give_every_character_its_token(text_data):
    from omni.data.tts import thinker_tokens
    from omni.tokenizer import Tokenizer
    tok, vocab = Tokenizer(text_data / "tokenizer.model"), TextVocab(" abcdefghijklmnopqrstuvwxyz'")
    for text in ("The cat sat on 3 mats.", "a", "zzq xj'k"):
        r = thinker_tokens(tok, vocab, text)
        spoken = vocab.spoken(text)
        assert tok.decode(r["tokens"]) == spoken
        assert len(r["owner"]) == len(vocab.encode(text)) and r["owner"][0] == r["owner"][-1] == -1
        inner = r["owner"][1:-1]
        assert inner[-1] == len(r["tokens"]) - 1 and all(np.diff(inner) >= 0)
        for j, t in enumerate(r["tokens"]):   # the characters a token holds are its text (a space starts a
            # word; a bare word mark "▁" holds none)
            chars = "".join(c for c, o in zip(spoken, inner) if o == j)
            assert chars.strip() == tok.decode([t]).strip()
    # read as phonemes, every phoneme belongs to a token that holds letters of its word
    vocab = TextVocab.from_texts(["the cat sat"], {"the": ("DH", "AH0"), "cat": ("K", "AE1", "T")})
    r = thinker_tokens(tok, vocab, "the cat sat")
    units = vocab.units("the cat sat")
    assert len(r["owner"]) == len(vocab.encode("the cat sat")) == len(units) + 2
    for (unit, i), owner in zip(units, r["owner"][1:-1]):
        word = "the cat sat"[:i + 1].split(" ")[-1] + "the cat sat"[i + 1:].split(" ")[0]
        assert unit == " " or tok.decode([r["tokens"][owner]]).strip() in word, (unit, word)


def test_thinker_view_is_the_same_alone_and_padded_in_a_batch(text_data, tmp_path):
    from omni.artifacts import load_artifact
    thinker = load_artifact(tiny_thinker_artifact(text_data, tmp_path / "thinker.pt")).model
    model = tiny_talker(thinker_dim=32)
    model = Talker(model.cfg, model.codec_cfg, thinker).eval()
    long_ = torch.tensor([[5, 9, 11, 40, 7, 8, 30, 31, 33, 12]])      # longer than the Thinker's ctx_len 8
    short = torch.tensor([[5, 9, 11]])
    own_long = torch.tensor([[-1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, -1]])
    own_short = torch.tensor([[-1, 0, 1, 1, 2, -1]])
    alone = model.thinker_view(short, own_short)
    both = model.thinker_view(torch.cat([long_, torch.nn.functional.pad(short, (0, 7))]),
                              torch.cat([own_long, torch.nn.functional.pad(own_short, (0, 8), value=-1)]))
    assert alone.shape == (1, 6, 32) and torch.allclose(both[1:, :6], alone, atol=1e-6)
    assert (both[1, 6:] == 0).all() and (alone[0, [0, -1]] == 0).all() and alone[0, 1].abs().sum() > 0
    assert torch.equal(alone[0, 2], alone[0, 3])                     # one token, two characters
    with pytest.raises(ValueError, match="Thinker's tokens"):
        model.encode_text(torch.tensor([[1, 2, 1]]), torch.tensor([3]))
    assert not any(p.requires_grad for p in model.thinker.parameters())


def test_thinker_conditioned_stage_trains_speaks_and_evaluates(tts_data, text_data, asr_ckpt, tmp_path):
    """With the CMU dictionary too: the tone alphabet's words it knows ("ab", "cd", "bad") are read as phonemes."""
    thinker = tiny_thinker_artifact(text_data, tmp_path / "thinker.pt")
    save = tmp_path / "run"
    r = run_script(["train_talker.py", "--config", str(tiny_talker_config(
        tts_data, save, thinker_ckpt=str(thinker), roundtrip=0, lexicon="cmudict"))])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "Thinker-conditioned" in log and "of the training words read as phonemes" in log
    state = torch.load(save / "talker.pt", weights_only=True)
    assert state["lexicon"] == "cmudict" and "AE1" in state["phonemes"]
    assert state["model_config"]["vocab_size"] == 2 + len(state["vocab"]) + len(state["phonemes"])
    assert state["model_config"]["thinker_dim"] == 32 and state["thinker_config"]["d_model"] == 16
    assert state["thinker_source"]["kind"] == "thinker" and any(k.startswith("thinker.") for k in state["model"])
    speaker = load_speaker(save)
    assert speaker.tokenizer is not None and speaker.talker.thinker is not None
    assert speaker.vocab.encode("ab") == [1, speaker.vocab.index["AE1"], speaker.vocab.index["B"], 1]
    a = speaker.speak_codes(["ab cd", "da"], temperature=0.8, seed=1)
    b = speaker.speak_codes(["ab cd", "da"], temperature=0.8, seed=1)
    assert all(torch.equal(x, y) and len(x) > 0 for x, y in zip(a, b))
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(save), "--data", str(tts_data / "val.csv"),
                    "--asr_ckpt", str(asr_ckpt)])
    assert r.returncode == 0, r.stderr[-3000:]
    val = [m for m in metrics(save, "val") if m["stage"] == "talker"][-1]
    assert json.loads(r.stdout)["code_perplexity"] == pytest.approx(val["val/code_ppl"], rel=1e-4)
    # a run resumed against a Thinker retrained since it started is an error, not a silent mismatch
    (save / "talker.pt").unlink()
    tiny_thinker_artifact(text_data, thinker, seed=1)
    r = run_script(["train_talker.py", "--config", str(save.parent / f"{save.name}.json")])
    assert r.returncode != 0 and "changed since the run started" in r.stderr, r.stderr[-2000:]
    bad = tiny_talker_config(tts_data, tmp_path / "bad", thinker_ckpt=str(tts_data / "train.csv"))
    r = run_script(["train_talker.py", "--config", str(bad)])
    assert r.returncode != 0 and "train.csv" in r.stderr and "Traceback" not in r.stderr[-300:]
    r = run_script(["train_talker.py", "--config", str(tiny_talker_config(tts_data, tmp_path / "bad", lexicon="cmu"))])
    assert r.returncode != 0 and "lexicon 'cmu'" in r.stderr and "Traceback" not in r.stderr[-300:]


def test_trains_on_the_gpu_path(tts_data, asr_ckpt, tmp_path):
    """The codec (whose fp32 codebook a bf16 vector once broke on a GPU), then the Talker."""
    save = tmp_path / "run"
    config = tiny_talker_config(tts_data, save, audio_enc_ckpt=str(asr_ckpt))
    assert_trains_on_the_gpu_path(["train_talker.py", "--config", str(config)], save, ("rvq_codec.pt", "talker.pt"),
                                  "codec.max_steps=2", "codec.warmup_steps=1", "codec.val_freq=2", "roundtrip=2")


# --- voices ------------------------------------------------------------------------------------------------
def test_the_voice_embedding_changes_what_is_spoken_and_one_voice_has_none():
    torch.manual_seed(0)
    model = tiny_talker(n_voices=2).eval()
    torch.nn.init.constant_(model.end_head.bias, -20.0)
    ids, lens = pad_ids([[1, 2, 3, 4, 1]])
    a, b = (model.generate(ids, lens, max_frames=8, voice=torch.tensor([v]))[0] for v in (0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(a, model.generate(ids, lens, max_frames=8)[0]), "no voice given: voice 0, the default"
    with pytest.raises(ValueError, match="outside this Talker's 2 voice"):
        model.generate(ids, lens, max_frames=8, voice=torch.tensor([2]))
    assert not any(k.startswith("voice_embed") for k in tiny_talker().state_dict())


@pytest.fixture(scope="module")
def voices_data(tmp_path_factory):
    """Two speakers of the tone alphabet: "tone" and "slow" (each letter held half as long again)."""
    d = tmp_path_factory.mktemp("voices")
    r = np.random.default_rng(2)
    words = lambda n: " ".join("".join(r.choice(list("abcd"), r.integers(1, 4))) for _ in range(n))
    (d / "wavs").mkdir()
    for name, n in (("train", 24), ("val", 4)):
        rows = ["wav,text,speaker"]
        for i in range(n):
            text, speaker = words(r.integers(1, 4) if name == "train" else 2), ("tone", "slow")[i % 2]
            sf.write(d / "wavs" / f"{name}_{i}.wav", tone_speech(text, char_s=0.08 if speaker == "tone" else 0.12),
                     16000)
            rows.append(f"wavs/{name}_{i}.wav,{text},{speaker}")
        (d / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def voices_run(voices_data, asr_ckpt, tmp_path_factory):
    return trained_run(voices_data, asr_ckpt, tmp_path_factory.mktemp("voices_ref") / "run")


def test_a_talker_of_two_speakers_speaks_in_either_voice_by_name(voices_run, voices_data, asr_ckpt, tmp_path):
    state = torch.load(voices_run / "talker.pt", weights_only=True)
    assert state["voices"] == ["tone", "slow"] and state["model_config"]["n_voices"] == 2
    assert "voices: tone, slow" in (voices_run / "training.log").read_text()
    speaker = load_speaker(voices_run)
    assert speaker.voices == ["tone", "slow"]
    tone, slow = (speaker.speak_codes(["abc da"], voice=v)[0] for v in ("tone", "slow"))
    assert not torch.equal(tone, slow)
    assert torch.equal(tone, speaker.speak_codes(["abc da"])[0]), "the default voice is the first"
    with pytest.raises(UserError, match="unknown voice 'nobody'; this Talker speaks in tone, slow"):
        speaker.speak(["abc"], voice="nobody")
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(voices_run), "--list_voices"])
    assert r.returncode == 0 and r.stdout.split() == ["tone", "slow"], r.stderr[-2000:]
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(voices_run), "--text", "ab", "--voice", "slow", "--out",
                    str(tmp_path / "slow.wav")])
    assert r.returncode == 0 and sf.read(tmp_path / "slow.wav")[0].size > 0, r.stderr[-2000:]
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(voices_run), "--text", "ab", "--voice", "nobody", "--out",
                    str(tmp_path / "x.wav")])
    assert r.returncode == 1 and "tone, slow" in r.stderr and not (tmp_path / "x.wav").exists()
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(voices_run), "--data", str(voices_data / "val.csv"),
                    "--asr_ckpt", str(asr_ckpt)])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert list(out["voices"]) == ["tone", "slow"] and [v["n"] for v in out["voices"].values()] == [2, 2]
    assert all(0 <= v["identity"] <= 1 and 0 <= v["original_identity"] <= 1 and v["code_perplexity"] > 1
               for v in out["voices"].values())
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(voices_run), "--data", str(voices_data / "val.csv"),
                    "--asr_ckpt", str(asr_ckpt), "--voice", "slow"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert list(out["voices"]) == ["slow"] and out["n"] == 2, "only the rows spoken by the voice asked for"
    r = run_script(["scripts/evaluate.py", "tts", "--ckpt_dir", str(voices_run), "--data", str(voices_data / "val.csv"),
                    "--asr_ckpt", str(asr_ckpt), "--voice", "default"])
    assert r.returncode == 0 and list(json.loads(r.stdout)["voices"]) == ["tone"], r.stderr[-3000:]


def test_a_talker_written_before_voices_loads_as_one_voice(reference, tmp_path):
    assert load_speaker(reference).voices == ["default"]   # one speaker in its data: nothing to choose
    old = tmp_path / "old"
    shutil.copytree(reference, old)
    state = torch.load(old / "talker.pt", weights_only=True)
    del state["voices"], state["model_config"]["n_voices"], state["lexicon"], state["phonemes"]
    del state["model_config"]["duration_spread"], state["model"]["dur_spread.weight"], state["model"]["dur_spread.bias"]
    atomic_save(state, old / "talker.pt")
    speaker = load_speaker(old)
    assert speaker.voices == ["default"] and speaker.speak(["ab"], voice="default")[0].numel() > 0
    assert speaker.talker.dur_spread is None   # and a point estimate of durations, as before the spread
    assert speaker.vocab.phonemes == [] and speaker.vocab.lexicon is None   # and letters only, as before lexicons
    state["voices"] = ["a", "b"]
    atomic_save(state, old / "talker.pt")
    with pytest.raises(ArtifactError, match=r"talker.pt: .*2 voice names \['a', 'b'\] for a Talker of 1 voice"):
        load_speaker(old)


def test_sigkill_then_rerun_of_a_two_voice_talker_is_bitwise_identical(voices_data, asr_ckpt, voices_run, tmp_path):
    save = tmp_path / "run"
    cmd = ["train_talker.py", "--config", str(tiny_talker_config(voices_data, save, audio_enc_ckpt=str(asr_ckpt)))]
    signal_at(cmd, save, 7, stage="talker")
    assert not (save / "talker.pt").exists(), "the run finished before the kill"
    assert run_script(cmd).returncode == 0
    assert_same_run(voices_run, save)
