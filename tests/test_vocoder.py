"""The vocoder (train_vocoder.py, omni/models/vocoder.py, omni.infer.vocoder, omni.vocode, evaluate.py vocoder)
on tone-alphabet speech built here, and how the Talker's speech picks its vocoder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import assert_same_weights, assert_trains_on_the_gpu_path, final_weights, kill_at, metrics, run_script, tone_speech
from omni.artifacts import load_artifact
from omni.config import to_dict
from omni.audio import GriffinLim, LogMel, mel_refine
from omni.infer.tts import load_speaker
from omni.infer.vocoder import compare_voices_split, load_vocoder
from omni.models.codec import TalkerFeatures
from omni.models.vocoder import (Discriminators, Generator, VocoderConfig, discriminator_loss,
                                 feature_matching_loss, generator_adv_loss, mr_stft_loss, phase_loss)
from test_talker import asr_ckpt, reference, tiny_talker_config, tts_data  # noqa: F401 (fixtures)

FEATURES = TalkerFeatures(n_mels=16)
TINY = {"channels": 16, "layers": 2, "disc_channels": 2, "upsample_rates": [5, 4, 8], "resblock_kernels": [3]}


@pytest.mark.parametrize("kind", ["istft", "hifigan"])
def test_generators_voice_batches_and_single_inputs(kind):
    torch.manual_seed(0)
    gen = Generator(VocoderConfig(generator=kind, **TINY), FEATURES)
    mel = torch.randn(3, 21, 16) - 4
    assert gen(mel).shape == (3, 20 * 160)
    assert gen(mel[0]).shape == (20 * 160,)
    torch.testing.assert_close(gen(mel[1]), gen(mel)[1], atol=1e-4, rtol=1e-4)   # a row alone = in a batch
    with pytest.raises(ValueError, match="multiply to 80"):
        Generator(VocoderConfig(generator="hifigan", upsample_rates=[4, 4, 5]), FEATURES)
    with pytest.raises(ValueError, match="'istft' or 'hifigan'"):
        Generator(VocoderConfig(generator="wavenet"), FEATURES)


def test_a_vocoder_written_before_the_vocos_split_loads_as_it_voiced(tmp_path):
    """Older hifigan.pt files: the iSTFT generator's weights under one module, `refine` in the model config, the
    phase predicted as an angle (no `phase_head`)."""
    torch.manual_seed(0)
    gen = Generator(VocoderConfig(generator="istft", phase_head="angle", **TINY), FEATURES).eval()

    def old_name(key):   # net.backbone.inp.weight → net.inp.weight, net.head.proj.bias → net.head.bias
        for now, before in (("net.backbone.", "net."), ("net.head.proj.", "net.head.")):
            if key.startswith(now):
                return before + key[len(now):]
        return key
    weights = {old_name(k): v for k, v in gen.state_dict().items()}
    assert "net.inp.weight" in weights and "net.head.weight" in weights
    old = {"kind": "vocoder", "format": 1, "model": weights, "features": to_dict(FEATURES), "config": {},
           "model_config": {**to_dict(VocoderConfig(generator="istft", **TINY)), "phase": "absolute", "refine": 3}}
    del old["model_config"]["phase_head"]
    torch.save(old, tmp_path / "hifigan.pt")
    v = load_vocoder(tmp_path / "hifigan.pt", FEATURES, refine=0)
    mel = torch.randn(21, 16) - 4
    torch.testing.assert_close(v.generator(mel), gen(mel))
    assert load_vocoder(tmp_path / "hifigan.pt").refine == 3


def test_discriminators_take_b_1_t_and_the_losses_are_finite():
    torch.manual_seed(0)
    disc = Discriminators(2)
    real, fake = torch.randn(2, 1, 3200) * 0.1, torch.randn(2, 1, 3200) * 0.1
    (rs, rf), (fs, ff) = disc(real), disc(fake)
    assert len(rs) == 8 and len(rf) == 8   # 5 periods + 3 scales
    for loss in (discriminator_loss(rs, fs), generator_adv_loss(fs), feature_matching_loss(rf, ff),
                 mr_stft_loss(fake[:, 0], real[:, 0])):
        assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="B x 1 x T"):
        disc(real[:, 0])


def test_the_phase_loss_is_zero_on_the_real_audio_and_grows_with_a_phase_error():
    """Anti-wrapped: the real audio's own phase costs nothing; a time shift and a sign flip cost, and the gradient
    reaches the waveform."""
    wav = torch.tensor(tone_speech("abc"), dtype=torch.float32)[None]

    def spec(x):
        return torch.stft(x, 400, 160, 400, torch.hann_window(400), return_complex=True)
    assert float(phase_loss(spec(wav), spec(wav))) < 1e-4
    shifted, flipped = torch.roll(wav, 3, dims=1), -wav
    assert 0.05 < float(phase_loss(spec(shifted), spec(wav))) < float(phase_loss(spec(flipped), spec(wav)))
    x = shifted.clone().requires_grad_()
    phase_loss(spec(x), spec(wav)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_mel_loss_falls_on_a_fixed_clip():
    torch.manual_seed(0)
    wav = torch.from_numpy(tone_speech("abc dab")).float()
    mel = LogMel(FEATURES)
    target = mel(wav)
    wav = wav[:(target.shape[0] - 1) * 160]
    gen = Generator(VocoderConfig(generator="istft", channels=32, layers=2), FEATURES)
    opt = torch.optim.AdamW(gen.parameters(), 3e-3)

    def mel_l1():
        return (mel.mel(gen(target)).clamp_min(1e-5).log().transpose(0, 1) - target).abs().mean()
    with torch.no_grad():
        first = float(mel_l1())
    for _ in range(40):
        loss = mel_l1() + mr_stft_loss(gen(target)[None], wav[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(mel_l1()) < 0.7 * first


def test_mel_refinement_brings_the_mel_onto_the_one_asked_for():
    """omni.audio.mel_refine: from a waveform of the wrong spectral tilt, each round moves its mel nearer the
    target's; the length is kept and 0 rounds change nothing."""
    wav = torch.from_numpy(tone_speech("abc dab")).float()
    mel = LogMel(FEATURES)
    target = mel(wav)
    wav = wav[:(target.shape[0] - 1) * 160]
    tilted = torch.cat([wav[:1], wav[1:] - 0.9 * wav[:-1]])      # pre-emphasis: the highs louder, the lows quieter

    def error(y):
        return float((mel(y)[:-1] - target[:-1]).abs().mean())
    assert torch.equal(mel_refine(tilted, target, FEATURES, 0), tilted)
    errors = [error(mel_refine(tilted, target, FEATURES, n)) for n in (0, 2, 8)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.5 * errors[0], errors
    assert mel_refine(tilted, target, FEATURES, 2).shape == tilted.shape


# --- the stage ------------------------------------------------------------------------------------------------

def vocoder_config(data, save_dir, **over) -> str:
    cfg = {"save_dir": str(save_dir), "train_csv": str(data / "train.csv"), "val_csv": str(data / "val.csv"),
           "val_utterances": 2, "features": {"n_mels": 16}, "batch_size": 4, "segment_frames": 16, "lr": 2e-3,
           "warmup_steps": 2, "max_steps": 12, "adv_start": 4, "print_freq": 1, "val_freq": 6, "checkpoint_freq": 3,
           "refine": 2, "lambda_phase": 1.0,
           "model": {"generator": "istft", "channels": 16, "layers": 2, "disc_channels": 2}}
    cfg.update(over)
    path = save_dir.parent / f"{save_dir.name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def vocoder_run(tts_data, tmp_path_factory):  # noqa: F811
    save = tmp_path_factory.mktemp("vocoder_ref") / "run"
    r = run_script(["train_vocoder.py", "--config", vocoder_config(tts_data, save)])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


def test_perceptual_scores_rank_clean_above_noisy_and_resample():
    """PESQ-wb and STOI: the clean signal scores at the top, added noise lowers both, a shift in time ruins
    STOI; other rates are resampled to 16 kHz first."""
    from omni.perceptual import perceptual_scores
    x = torch.tensor(tone_speech("abcabcabcabc"), dtype=torch.float32)
    clean = perceptual_scores(x, x, 16000)
    noisy = perceptual_scores(x, x + 0.05 * torch.randn(len(x), generator=torch.Generator().manual_seed(0)), 16000)
    assert clean["pesq_wb"] > 4.5 and clean["stoi"] > 0.99
    assert noisy["pesq_wb"] < clean["pesq_wb"] - 2 and noisy["stoi"] < clean["stoi"] - 0.03
    assert perceptual_scores(x, torch.roll(x, 400), 16000)["stoi"] < 0.5
    assert perceptual_scores(x, x, 22050)["pesq_wb"] > 4.5


def test_griffin_lim_repeats_exactly_and_leaves_the_global_rng_alone():
    gl = GriffinLim(TalkerFeatures(n_mels=16), n_iter=4)
    mel = torch.randn(40, 16) - 4
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = gl(mel)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)   # whatever was drawn between two calls
    assert torch.equal(gl(mel), first)


def test_trains_both_sides_validates_against_griffin_lim(vocoder_run):
    rows = metrics(vocoder_run)
    assert "discriminator/loss" not in rows[2] and "discriminator/loss" in rows[-1] and "adv" in rows[-1]
    assert all(r["phase"] > 0 for r in rows if "phase" in r) and "phase" in rows[-1]
    val = metrics(vocoder_run, "val")[-1]
    assert {"mel_l1", "mr_stft", "refined_mel_l1", "griffinlim_mel_l1", "griffinlim_mr_stft", "pesq_wb", "stoi",
            "refined_pesq_wb", "griffinlim_pesq_wb", "griffinlim_refined_mel_l1", "griffinlim_refined_stoi"} <= val.keys()
    v = load_vocoder(vocoder_run / "hifigan.pt", FEATURES)
    mel = torch.randn(11, 16) - 4
    assert v(mel).shape == (1600,) and v.refine == 2 and "2 mel-consistency iterations" in v.describe()
    raw = load_vocoder(vocoder_run / "hifigan.pt", FEATURES, refine=0)
    with torch.no_grad():
        g = raw.generator(mel)
    expected = g * min(1.0, 0.95 / float(g.abs().max()))   # the generator alone, peak-limited as every voice
    assert torch.allclose(raw(mel), expected, atol=1e-6) and not torch.allclose(v(mel), raw(mel), atol=1e-4)


def test_sigkill_then_rerun_is_bitwise_identical(tts_data, vocoder_run, tmp_path):  # noqa: F811
    save = tmp_path / "run"
    cmd = ["train_vocoder.py", "--config", vocoder_config(tts_data, save)]
    assert kill_at(cmd, save, 7) < 12
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from vocoder_step_" in (save / "training.log").read_text()
    assert_same_weights(final_weights(vocoder_run, "hifigan"), final_weights(save, "hifigan"))
    assert [m["loss"] for m in metrics(save)] == [m["loss"] for m in metrics(vocoder_run)]


def test_a_mismatched_vocoder_is_an_error_naming_the_file(vocoder_run, tmp_path):
    with pytest.raises(ValueError, match="hifigan.pt voices mels of other settings"):
        load_vocoder(vocoder_run / "hifigan.pt", TalkerFeatures(n_mels=80))
    art = torch.load(vocoder_run / "hifigan.pt", weights_only=True)
    art["model_config"]["channels"] = 24
    torch.save(art, tmp_path / "hifigan.pt")
    with pytest.raises(RuntimeError, match="hifigan.pt: weights do not match"):
        load_artifact(tmp_path / "hifigan.pt")


def test_the_talker_says_which_vocoder_speaks(reference, tts_data, tmp_path):  # noqa: F811
    """Griffin-Lim when no vocoder is given or found (one line says so), the vocoder beside the Talker when
    there is one, and a vocoder trained on the codec's mels through every entry point."""
    assert load_speaker(reference).rendered_by.startswith("vocoder: Griffin-Lim (no hifigan.pt in")
    save = tmp_path / "voc"
    r = run_script(["train_vocoder.py", "--config", vocoder_config(
        tts_data, save, codec_ckpt=str(reference / "rvq_codec.pt"), train_on="mix", max_steps=4, val_freq=4)])
    assert r.returncode == 0, r.stderr[-3000:]
    speaker = load_speaker(reference, vocoder=str(save / "hifigan.pt"))
    assert "istft generator" in speaker.rendered_by and len(speaker.speak(["ab"])[0]) > 0
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(reference), "--text", "ab", "--out", str(tmp_path / "a.wav"),
                    "--vocoder", str(save / "hifigan.pt")])
    assert r.returncode == 0 and "vocoder: " in r.stderr and "hifigan.pt" in r.stderr, r.stderr[-2000:]
    r = run_script(["-m", "omni.tts", "--ckpt_dir", str(reference), "--text", "ab", "--out", str(tmp_path / "b.wav")])
    assert r.returncode == 0 and "vocoder: Griffin-Lim (no hifigan.pt" in r.stderr
    wav = tmp_path / "in.wav"
    sf.write(wav, tone_speech("abc"), 16000)
    for extra in (["--ckpt", str(save / "hifigan.pt")], ["--griffin_lim", "--codec", str(reference)]):
        r = run_script(["-m", "omni.vocode", *extra, str(wav), "--out_dir", str(tmp_path / "out")])
        assert r.returncode == 0, r.stderr[-2000:]
        out, sr = sf.read(tmp_path / "out" / "in.wav")
        assert sr == 16000 and np.abs(out).max() > 0
    r = run_script(["scripts/evaluate.py", "vocoder", "--ckpt", str(save / "hifigan.pt"), "--data",
                    str(tts_data / "val.csv")])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert {"mel_l1", "mr_stft", "codec_mel_l1", "wer", "codec_wer", "pesq_wb", "stoi", "codec_pesq_wb"} <= \
        m["vocoder"].keys() <= m["griffinlim"].keys() == m["griffinlim_refined"].keys()
    # split over two processes, the figures are those of one (Griffin-Lim starts from random phases: not compared)
    from omni.data.speech import read_manifest
    wavs = [u.wav for u in read_manifest(tts_data / "train.csv")[:8]]
    one, two = (compare_voices_split(save / "hifigan.pt", str(reference), wavs, workers=w) for w in (1, 2))
    for name in ("vocoder", "vocoder_raw"):
        for key in ("mel_l1", "mr_stft", "codec_mel_l1", "codec_mr_stft"):
            assert two[1][name][key] == pytest.approx(one[1][name][key], rel=1e-4), (name, key)
        assert [len(y) for y in two[2][name]["codec_"]] == [len(y) for y in one[2][name]["codec_"]]
    assert one[1].keys() == two[1].keys()


def test_trains_on_the_gpu_path(tts_data, reference, tmp_path):  # noqa: F811
    """The demo's generator without discriminators, as the demo trains it (compiling the discriminators' three
    graphs takes minutes on 2 cores: `scripts/gpu_check.sh --cpu` checks them at the _tiny sizes)."""
    save = tmp_path / "run"
    config = vocoder_config(tts_data, save, codec_ckpt=str(reference / "rvq_codec.pt"), adv_start=100)
    assert_trains_on_the_gpu_path(["train_vocoder.py", "--config", config], save, ("hifigan.pt",))
