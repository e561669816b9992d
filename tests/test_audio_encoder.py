"""Stage B: log-mel front end, audio encoder, CTC decoding, WER/CER, the transcription entry point and
resume exactness of train_audio_enc.py — on a tiny "tone alphabet" speech set built here, offline."""
from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import (SR, assert_same_weights, assert_trains_on_the_gpu_path, final_weights, kill_at, metrics, run_script, signal_at, tone_speech,
                      write_split)

from omni.artifacts import load_artifact
from omni.audio import LogMel, MelConfig, load_audio, num_frames
from omni.charlm import CharLM
from omni.data.speech import read_manifest
from omni.ctc import ctc_beam_search, ctc_greedy
from omni.infer.asr import transcribe
from omni.metrics import cer, edit_distance, wer
from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig, ctc_frames_needed
from omni.models.layers import keep_out_of_graph
from omni.train.engine import run
from omni.vocab import CharVocab
from train_audio_enc import AudioEncStage

@pytest.fixture(scope="module")
def tone_data(tmp_path_factory):
    """train.csv: 26 alignable utterances (an epoch is 6 batches of 4), one over max_mel_length and one whose
    transcript needs more CTC frames than its audio gives; val.csv: 6 utterances."""
    d = tmp_path_factory.mktemp("tones")
    r = np.random.default_rng(0)
    words = lambda n: " ".join("".join(r.choice(list("abcd"), r.integers(1, 4))) for _ in range(n))
    train = [words(r.integers(1, 4)) for _ in range(26)]
    write_split(d, "train", train)
    (d / "wavs" / "long.wav").parent.mkdir(exist_ok=True)
    sf.write(d / "wavs" / "long.wav", tone_speech("abcd " * 8), SR)                 # 3.4 s = 341 frames
    sf.write(d / "wavs" / "short.wav", tone_speech("a")[:1600], SR)                # 11 frames, 3 at 4x
    with open(d / "train.csv", "a") as f:
        f.write(f"wavs/long.wav,{'abcd ' * 8},tone\nwavs/short.wav,abcabc,tone\n")
    write_split(d, "val", [words(2) for _ in range(6)])
    return d


def tiny_asr_config(data, save_dir, **overrides):
    cfg = {"save_dir": str(save_dir), "train_csv": str(data / "train.csv"), "val_csvs": [str(data / "val.csv")],
           "max_mel_length": 300, "batch_size": 4, "lr": 3e-3, "warmup_steps": 3, "max_steps": 14,
           "print_freq": 1, "val_freq": 7, "checkpoint_freq": 4, "val_batch_size": 4, "val_examples": 2,
           "bucket_batches": 2, "features": {"n_mels": 32}, "time_mask_width": 5, "freq_mask_width": 4,
           "model": {"n_mels": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "dropout": 0.1}}
    cfg.update(overrides)
    path = save_dir.parent / f"{save_dir.name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def reference(tone_data, tmp_path_factory):
    """An uninterrupted 14-step run (6 batches per epoch: it crosses two epoch boundaries)."""
    save = tmp_path_factory.mktemp("asr_ref") / "run"
    r = run_script(["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, save))])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


# --- features ------------------------------------------------------------------------------------------

def test_log_mel_of_a_tone_peaks_in_its_bin():
    mel = LogMel(MelConfig(normalize="none"))
    t = np.arange(SR) / SR
    feats = mel(torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32)))
    assert feats.shape == (num_frames(SR, mel.cfg), 128) == (101, 128)   # 10 ms hop, centred frames
    peak = int(feats[5:-5].mean(0).argmax())
    centres = mel.mel_frequencies()
    assert abs(float(centres[peak]) - 1000) <= float(centres[peak + 1] - centres[peak]), centres[peak]
    norm = LogMel(MelConfig())(torch.from_numpy(t.astype(np.float32)))
    assert abs(float(norm.mean())) < 1e-4 and abs(float(norm.std()) - 1) < 1e-3
    # cepstral mean normalisation: every bin's mean over the utterance is removed, the shape over time stays
    wav = torch.from_numpy((np.sin(2 * np.pi * 300 * t) * np.exp(-3 * t)).astype(np.float32))
    raw = mel(wav)
    cmn = LogMel(MelConfig(normalize="utterance_bins"))(wav)
    assert float(cmn.mean(0).abs().max()) < 1e-4
    assert torch.allclose(cmn, (raw - raw.mean(0)) / raw.std(), atol=1e-4)
    with pytest.raises(ValueError, match="normalize"):
        LogMel(MelConfig(normalize="bins"))


def test_load_audio_resamples_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100
    left = np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([left, left], 1).astype(np.float32), 44100)
    wav = load_audio(tmp_path / "stereo.wav")
    assert wav.shape == (SR,) and wav.dtype == torch.float32
    spectrum = torch.fft.rfft(wav).abs()
    assert int(spectrum.argmax()) == 1000  # 1 Hz bins over one second: still a 1 kHz tone
    with pytest.raises(ValueError, match="cannot read audio .*nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_augmentations_draw_only_from_the_given_rng():
    from omni.audio import freq_warp, spec_augment, time_stretch
    x = torch.zeros(50, 128)
    x[:, 40] = 1.0
    alpha = np.random.default_rng(0).uniform(0.9, 1.1)
    warped = freq_warp(x, np.random.default_rng(0), 0.1)          # a formant at bin 40 moves to 40 * alpha
    assert abs(int(warped[0].argmax()) - 40 * alpha) <= 1
    a = spec_augment(torch.randn(200, 128, generator=torch.Generator().manual_seed(0)), np.random.default_rng(5))
    b = spec_augment(torch.randn(200, 128, generator=torch.Generator().manual_seed(0)), np.random.default_rng(5))
    assert torch.equal(a, b) and (a == 0).any()
    # tempo: an event at frame 100 of 200 stays mid-utterance, in an utterance 1 ± 0.2 times as long
    x = torch.zeros(200, 8)
    x[100] = 1.0
    rate = np.random.default_rng(3).uniform(0.8, 1.2)
    s = time_stretch(x, np.random.default_rng(3), 0.2)
    assert s.shape == (round(200 * rate), 8) and abs(int(s[:, 0].argmax()) - 100 * rate) <= 1


# --- model ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("downsample,frontend,conv_kernel", [(4, "conv1d", 0), (8, "conv1d", 0), (4, "conv2d", 0),
                                                            (8, "conv2d", 0), (4, "conv1d", 15), (8, "conv2d", 7)])
def test_encoder_output_does_not_depend_on_padding(downsample, frontend, conv_kernel):
    torch.manual_seed(0)
    model = AudioEncoder(AudioEncoderConfig(n_mels=40, d_model=48, n_layers=2, n_heads=3, d_ff=96,
                                            downsample=downsample, frontend=frontend, conv_channels=8,
                                            conv_kernel=conv_kernel, vocab_size=7)).eval()
    if conv_kernel:  # large depthwise weights, so that any leak through the padding shows well above 1e-5
        for conv in model.convs:
            torch.nn.init.normal_(conv.depthwise.weight, std=0.5)
    x = torch.randn(1, 157, 40)
    with torch.no_grad():
        alone = model(x, torch.tensor([157]))
        for pad_to in (160, 300):
            batch = torch.zeros(3, pad_to, 40)
            batch[1, :157] = x[0]
            batch[0] = torch.randn(pad_to, 40)
            batch[2, :50] = torch.randn(50, 40)
            out = model(batch, torch.tensor([pad_to, 157, 50]))
            n = int(alone["lengths"][0])
            assert int(out["lengths"][1]) == n == model.output_length(157)
            assert (alone["hidden"][0] - out["hidden"][1, :n]).abs().max() < 1e-5
            assert (alone["logits"][0] - out["logits"][1, :n]).abs().max() < 1e-5


def test_compiled_encoder_trains_on_new_lengths_without_recompiling():
    """Inductor specialises a convolution's backward on the sequence length; the time convolutions run outside
    the compiled graph (SeqConv1d), so after the first dynamic compile a new batch length compiles nothing."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = AudioEncoder(AudioEncoderConfig(n_mels=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, conv_kernel=3,
                                            dropout=0.0, vocab_size=5))
    keep_out_of_graph()   # as the engine does before it compiles
    compiled = torch.compile(model, dynamic=True)
    compiles = []
    for T in (40, 57, 73, 90):
        compiled(torch.randn(2, T, 16), torch.tensor([T, T - 7]))["logits"].sum().backward()
        compiles.append(counters["stats"]["unique_graphs"])
    assert compiles[1:] == [compiles[0]] * 3, f"graphs compiled after each length: {compiles}"


def test_length_buckets_partition_each_epoch_deterministically():
    from omni.data.speech import SpeechBatches, Utterance
    frames = np.random.default_rng(0).integers(50, 1000, 203)
    utts = [Utterance(f"{i}.wav", "a", frames=int(f)) for i, f in enumerate(frames)]
    stream = SpeechBatches(utts, [[1]] * len(utts), LogMel(MelConfig()), 4, seed=3, max_frames=1000, bucket=10)
    stream.set_distributed(0, 2)                                   # global batches of 8
    batches = stream.epoch_batches(0)
    assert len(batches) == stream.batches_per_epoch() == 25 and all(len(b) == 8 for b in batches)
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == 200                          # each sample at most once; the tail dropped
    spread = np.mean([np.ptp(frames[b]) for b in batches])
    assert spread < 0.25 * np.ptp(frames)                          # similar lengths together: little padding
    assert all(np.array_equal(a, b) for a, b in zip(batches, stream.epoch_batches(0)))
    assert not np.array_equal(np.concatenate(stream.epoch_batches(1)), flat)


def test_feature_cache_gives_the_computed_features_and_skips_unreadable_files(tone_data, tmp_path):
    from omni.data.speech import FeatureCache, SpeechBatches, measure, read_manifest
    mel = LogMel(MelConfig(n_mels=32))
    utts = measure(read_manifest(tone_data / "train.csv")[:8], mel.cfg)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not audio")
    utts[3].wav = str(tmp_path / "bad.wav")
    cache = FeatureCache(utts, mel, show_progress=False)
    assert cache.get(3) is None and len(cache.failed) == 1 and "bad.wav" in cache.failed[0]
    assert cache.feats.dtype == torch.float16
    assert cache.feats.shape[0] == sum(u.frames for i, u in enumerate(utts) if i != 3)
    for i in (0, 7):
        want = mel(load_audio(utts[i].wav))
        assert cache.get(i).shape == want.shape and torch.allclose(cache.get(i), want, atol=2e-3, rtol=2e-3)
    # the same stream either way: same batches, same labels, same augmentation draws
    args = (utts, [[1, 2]] * 8, mel, 2, 0, 1000, lambda f, rng: f * float(rng.uniform(0.5, 1.5)), 2)
    plain, cached = SpeechBatches(*args), SpeechBatches(*args, cache=cache)
    for a, b in zip(plain, cached):
        assert a["n_bad"] == b["n_bad"] and a["labels"] == b["labels"] and torch.equal(a["lengths"], b["lengths"])
        assert torch.allclose(a["feats"], b["feats"], atol=5e-3, rtol=5e-3)


# --- decoding and metrics -------------------------------------------------------------------------------

def test_ctc_greedy_decoding():
    vocab = CharVocab(" ab")                     # blank 0, " " 1, "a" 2, "b" 3
    frames = [[0, 2, 2, 0, 2, 3, 3, 1, 0, 3], [2, 2, 2, 0, 0, 0, 0, 0, 0, 0]]
    logits = torch.nn.functional.one_hot(torch.tensor(frames), 4).float()
    ids = ctc_greedy(logits, torch.tensor([10, 3]))
    assert [vocab.decode(i) for i in ids] == ["aab b", "a"]  # blank separates the repeated a; padding ignored
    assert vocab.encode("ab x") == [2, 3, 1]                  # unknown characters dropped
    assert ctc_frames_needed(vocab.encode("aab")) == 4 and ctc_frames_needed([2, 3]) == 2


def test_char_lm_is_normalised_and_prefers_what_it_read():
    lm = CharLM.fit(["at the top", "at the bottom", "the cat"], order=4)
    for history in ("", "at t", "xyz", "the cat"):
        total = sum(math.exp(lm.logprob(history, c)) for c in lm.alphabet)
        assert 0.9 < total < 1.0   # what is left is the unseen characters' share
    assert lm.logprob("at t", "h") > lm.logprob("at t", "e") > lm.logprob("at t", "q")
    assert CharLM.from_dict(lm.to_dict()).logprob("at t", "h") == lm.logprob("at t", "h")


def test_beam_search_with_the_lm_mends_what_best_path_misses():
    vocab = CharVocab(" eht")                    # blank 0, " " 1, "e" 2, "h" 3, "t" 4
    # "t", then a frame where "h" (0.4) loses to blank (0.6), then "e": best path reads "te"
    probs = torch.tensor([[0.0, 0, 0, 0, 1], [0.6, 0, 0, 0.4, 0], [0, 0, 1, 0, 0]]) * 0.97 + 0.006
    logp = probs.log()
    assert vocab.decode(ctc_greedy(logp[None], torch.tensor([3]))[0]) == "te"
    lm = CharLM.fit(["the", "the the", "he"] * 5, order=3)
    assert ctc_beam_search(logp, vocab.chars, lm, beam=4, lm_weight=1.0) == "the"
    assert ctc_beam_search(logp, vocab.chars, lm, beam=4, lm_weight=0.0) == "te"   # no LM: CTC's best


def test_wer_and_cer_on_hand_checked_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert wer(["the cat sat"], ["the cat sat"]) == 0
    assert wer(["the cat sat"], ["the bat sat down"]) == pytest.approx(2 / 3)   # 1 substitution, 1 insertion
    assert wer(["the cat sat", "a dog"], ["the cat", ""]) == pytest.approx(3 / 5)  # corpus-level: 3 of 5 words
    assert cer(["abc d"], ["abd"]) == pytest.approx(2 / 5)                    # "c" and " " deleted
    assert cer(["a  b"], ["a b"]) == 0                                         # whitespace normalised


# --- the stage: skips, artifact, entry points, resume ----------------------------------------------------

def test_training_skips_reports_and_writes_a_standalone_artifact(tone_data, reference):
    log = (reference / "training.log").read_text()
    assert "train: 26 of 28 utterances" in log
    assert "skipped 1 over max_mel_length 300, 1 that CTC cannot align at 25 frames/s" in log
    vals = metrics(reference, "val")
    assert [v["step"] for v in vals] == [7, 14] and {"val/wer", "val/cer", "val/loss", "val/n"} <= vals[-1].keys()
    assert vals[-1]["val/n"] == 6 and "val | ref: " in log and "val | hyp: " in log
    state = torch.load(reference / "audio_enc.pt", weights_only=True)
    assert state["vocab"] == " abcd" and state["model_config"]["vocab_size"] == 6
    assert "optimizers" not in state and state["kind"] == "audio_enc"
    asr = load_artifact(reference / "audio_enc.pt")
    assert asr.kind == "audio_enc" and asr.features.n_mels == 32 and len(asr.vocab) == 6


def test_transcribe_entry_point_on_stereo_44k(tone_data, reference, tmp_path):
    import torchaudio
    mono16 = torch.from_numpy(tone_speech("ab cd"))
    stereo44 = torchaudio.functional.resample(mono16, SR, 44100)
    sf.write(tmp_path / "stereo44k.wav", torch.stack([stereo44, stereo44], 1).numpy(), 44100)
    sf.write(tmp_path / "mono16k.flac", mono16.numpy(), SR)
    ckpt = reference / "audio_enc.pt"
    r = run_script(["-m", "omni.asr", "--ckpt", str(ckpt), str(tmp_path / "stereo44k.wav"),
                    str(tmp_path / "mono16k.flac")])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert [l.split("\t")[0] for l in lines] == [str(tmp_path / "stereo44k.wav"), str(tmp_path / "mono16k.flac")]
    asr = load_artifact(ckpt, "audio_enc")
    expected = transcribe(asr.model, asr.vocab, LogMel(asr.features), [load_audio(tmp_path / "stereo44k.wav"), mono16],
                          decoder=asr.decoder)
    assert [l.split("\t")[1] for l in lines] == expected
    bad = run_script(["-m", "omni.asr", "--ckpt", str(tmp_path / "missing.pt"), str(tmp_path / "mono16k.flac")])
    assert bad.returncode == 1 and "missing.pt" in bad.stderr


def test_evaluate_and_check_mel_lengths(tone_data, reference):
    r = run_script(["scripts/evaluate.py", "asr", "--ckpt", str(reference / "audio_enc.pt"),
                    "--data", str(tone_data / "val.csv"), "--batch_size", "4"])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["n"] == 6 and result["decode"]["beam"] == 8
    assert result["greedy_cer"] == pytest.approx(metrics(reference, "val")[-1]["val/cer"])  # validation: greedy
    # the error rates are those of the artifact's own transcripts (beam search + LM), counted here edit by edit
    asr, utts = load_artifact(reference / "audio_enc.pt", "audio_enc"), read_manifest(tone_data / "val.csv")
    refs = [u.text for u in utts]
    hyps = transcribe(asr.model, asr.vocab, LogMel(asr.features), [u.wav for u in utts], decoder=asr.decoder)
    chars = lambda s: list(" ".join(s.split()))
    assert result["cer"] == pytest.approx(sum(edit_distance(chars(a), chars(b)) for a, b in zip(refs, hyps)) /
                                          sum(len(chars(a)) for a in refs))
    assert result["wer"] == pytest.approx(sum(edit_distance(a.split(), b.split()) for a, b in zip(refs, hyps)) /
                                          sum(len(a.split()) for a in refs))
    r = run_script(["scripts/check_mel_lengths.py", "--csv", str(tone_data / "train.csv"), "--limit", "300"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "over max_mel_length 300: 1 " in r.stdout and "--set max_mel_length=384" in r.stdout


def test_a_short_run_learns_to_read_its_training_utterances(tmp_path):
    """200 steps on 12 tone-alphabet utterances: greedy CER on them falls to 0.00 (each of seeds 0-5 and 1337;
    0.00-0.14 after 100 steps), where the same encoder untrained scores 0.67-0.95."""
    r = np.random.default_rng(0)
    words = lambda n: " ".join("".join(r.choice(list("abcd"), r.integers(1, 4))) for _ in range(n))
    texts = [words(r.integers(1, 4)) for _ in range(12)]
    write_split(tmp_path, "train", texts)
    save = tmp_path / "run"
    model = {"n_mels": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "dropout": 0.0}
    cfg = tiny_asr_config(tmp_path, save, val_csvs=[], val_split=0.0, max_steps=200, checkpoint_freq=1000,
                          val_freq=1000, print_freq=50, spec_augment=False, model=model)
    run(AudioEncStage, ["--config", str(cfg)])
    asr = load_artifact(save / "audio_enc.pt", "audio_enc")
    wavs, mel = [tmp_path / "wavs" / f"train_{i}.wav" for i in range(12)], LogMel(asr.features)
    torch.manual_seed(0)
    untrained = AudioEncoder(asr.model.cfg).eval()
    trained_cer = cer(texts, transcribe(asr.model, asr.vocab, mel, wavs))
    untrained_cer = cer(texts, transcribe(untrained, asr.vocab, mel, wavs))
    assert trained_cer <= 0.1 and untrained_cer >= 0.5, (trained_cer, untrained_cer)


def assert_same_run(ref, run):
    assert_same_weights(final_weights(ref, "audio_enc"), final_weights(run, "audio_enc"))
    assert [(m["step"], m["loss"]) for m in metrics(run)] == [(m["step"], m["loss"]) for m in metrics(ref)]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_rerun_is_bitwise_identical(tone_data, reference, tmp_path, workers):
    save = tmp_path / "run"
    cmd = ["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, save, num_workers=workers))]
    killed_at = kill_at(cmd, save, 5 if workers == 0 else 10)   # first epoch; second with workers
    assert killed_at < 14 and not (save / "audio_enc.pt").exists(), "the run finished before the kill"
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from audio_enc_step_" in (save / "training.log").read_text()
    assert_same_run(reference, save)


def test_cached_features_run_resumes_exactly(tone_data, tmp_path):
    ref, save = tmp_path / "ref", tmp_path / "run"
    r = run_script(["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, ref, cache_features=True))])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "computing the features of 26 utterances once" in (ref / "training.log").read_text()
    cmd = ["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, save, cache_features=True))]
    assert kill_at(cmd, save, 9) < 14
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(ref, save)


def test_sigterm_saves_and_resumes_exactly(tone_data, reference, tmp_path):
    save = tmp_path / "run"
    cmd = ["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, save, checkpoint_freq=1000))]
    code, err = signal_at(cmd, save, 5, signal.SIGTERM)
    assert code == 143, err[-2000:]
    stopped = metrics(save)[-1]["step"]
    assert (save / f"audio_enc_step_{stopped}.pt").exists()
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(reference, save)


def test_trains_on_the_gpu_path(tone_data, tmp_path):
    save = tmp_path / "run"
    assert_trains_on_the_gpu_path(["train_audio_enc.py", "--config", str(tiny_asr_config(tone_data, save))], save,
                                  ("audio_enc.pt",))
