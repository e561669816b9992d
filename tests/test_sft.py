"""Stage E (sft_omni.py): chat template, answer-only loss, media splicing, frozen encoders, resume, strict
loading, evaluation and the generation entry point — on tiny artifacts and data built here."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from conftest import ROOT, SR, assert_same_weights, assert_trains_on_the_gpu_path, final_weights, kill_at, metrics, run_script, tone_speech
from omni.artifacts import FORMAT, load_artifact
from omni.audio import MelConfig
from omni.chat import ChatTemplate, Turn
from omni.config import to_dict
from omni.data.sft import collate, load_media, read_sft, render
from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from omni.models.omni import AUDIO_ID, IMAGE_ID, OmniConfig, OmniModel, ProjectorConfig
from omni.models.thinker import Thinker, ThinkerConfig
from omni.models.vision import ClipConfig, ClipModel, TextSideConfig, ViTConfig
from omni.tokenizer import Tokenizer
from omni.train.engine import run
from sft_omni import OmniStage

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def parts(text_data, tmp_path_factory):
    """Stage A/B/C artifacts of random tiny models (what SFT loads), and the tokenizer."""
    d = tmp_path_factory.mktemp("parts")
    tok_bytes = (text_data / "tokenizer.model").read_bytes()
    tok_t = torch.frombuffer(bytearray(tok_bytes), dtype=torch.uint8)
    torch.manual_seed(0)
    tcfg = ThinkerConfig(vocab_size=320, n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, ctx_len=96)
    _save({"kind": "thinker", "format": FORMAT, "model": Thinker(tcfg).state_dict(), "model_config": to_dict(tcfg),
           "config": {}, "tokenizer": tok_t}, d / "thinker.pt")
    ccfg = ClipConfig(ViTConfig(image_size=16, patch_size=4, d_model=24, n_layers=1, n_heads=2, d_ff=48),
                      TextSideConfig(d_model=16, n_layers=0, n_heads=2, d_ff=32, vocab_size=320), embed_dim=16)
    _save({"kind": "vision", "format": FORMAT, "model": ClipModel(ccfg).state_dict(), "model_config": to_dict(ccfg),
           "thinker_config": None, "config": {}, "tokenizer": tok_t}, d / "vision.pt")
    acfg = AudioEncoderConfig(n_mels=16, d_model=24, n_layers=1, n_heads=2, d_ff=48, vocab_size=6, dropout=0.0)
    _save({"kind": "audio_enc", "format": FORMAT, "model": AudioEncoder(acfg).state_dict(),
           "model_config": to_dict(acfg), "config": {}, "vocab": "abcd ",
           "features": to_dict(MelConfig(n_mels=16))}, d / "audio_enc.pt")
    return d


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """Coloured squares asked about in text and in tone 'speech'; transcription; a multi-turn row."""
    d = tmp_path_factory.mktemp("sft")
    (d / "img").mkdir()
    (d / "wav").mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (16, 16), rgb).save(d / "img" / f"{name}.png")
    texts = ["ab", "cad", "bbd a", "dc"]
    for i, t in enumerate(texts):
        sf.write(d / "wav" / f"{i}.wav", tone_speech(t), SR)

    def rows(n):
        out = []
        for _ in range(n):
            c = list(COLOURS)[rng.integers(3)]
            k = rng.integers(4)
            out.append({"prompt": "what colour is it?", "answer": c, "image": f"img/{c}.png", "task": "colour"})
            out.append({"prompt": "transcribe the audio.", "answer": texts[k], "audio": f"wav/{k}.wav",
                        "task": "transcribe"})
            out.append({"prompt": "answer the spoken question.", "answer": c, "image": f"img/{c}.png",
                        "audio": f"wav/{k}.wav", "task": "spoken_colour"})
            out.append({"messages": [{"role": "user", "content": "what colour is it?", "image": f"img/{c}.png"},
                                     {"role": "assistant", "content": c + "."},
                                     {"role": "user", "content": "thank you"},
                                     {"role": "assistant", "content": "you are welcome."}], "task": "dialogue"})
        return out
    for split, n in (("train", 12), ("val", 3)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    return d


REFERENCE = {"chat_layout": "text_first"}   # the reference run takes the layout that is not the default


def sft_config(parts, data, save_dir, **over) -> str:
    cfg = {"save_dir": str(save_dir), "train_files": [str(data / "train.jsonl")], "val_file": str(data / "val.jsonl"),
           "thinker_ckpt": str(parts / "thinker.pt"), "vision_ckpt": str(parts / "vision.pt"),
           "audio_enc_ckpt": str(parts / "audio_enc.pt"), "projector": {"image_tokens": 4, "audio_stack": 2},
           "batch_size": 4, "lr": 3e-3, "projector_lr": 3e-3, "warmup_steps": 2, "max_steps": 16, "print_freq": 1,
           "val_freq": 100, "checkpoint_freq": 3, "val_batch_size": 8, "val_max_new_tokens": 6}
    cfg.update(over)
    path = save_dir.parent / f"{save_dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


def tiny_model(parts, **freeze) -> tuple[OmniModel, Tokenizer]:
    t, v, a = (load_artifact(parts / f) for f in ("thinker.pt", "vision.pt", "audio_enc.pt"))
    model = OmniModel(OmniConfig(t.model.cfg, v.model.cfg.vision, a.model.cfg, ProjectorConfig(4, True, 2)))
    model.thinker.load_state_dict(t.model.state_dict())
    model.vision.load_state_dict(v.model.vision.state_dict())
    model.audio.load_state_dict(a.model.state_dict())
    return model.freeze(**freeze), t.tokenizer


# --- the template and the loss mask ----------------------------------------------------------------------------

def test_loss_covers_only_the_answers_and_their_end_marker(parts, sft_data):
    model, tok = tiny_model(parts)
    tpl = ChatTemplate(tok)
    ex = next(e for e in read_sft(sft_data / "train.jsonl") if e.task == "dialogue")
    media = load_media([ex], model, MelConfig(n_mels=16), "cpu", True, True, progress=False)
    r = render(ex, tpl, model, media)
    b = collate([(ex, r)], media)
    learned = b["targets"][0][b["targets"][0] != -100].tolist()
    want = tok.encode("red.") if "red" in ex.turns[1].content else None
    answers = [tok.encode(t.content) + [tpl.im_end] for t in ex.turns if t.role == "assistant"]
    assert learned == answers[0] + answers[1], (learned, answers, want)
    # every learned target is preceded (in the input) by the assistant's marker or its own previous token
    assert b["ids"][0].tolist().count(IMAGE_ID) == model.image_token_count


def test_per_sample_loss_weighs_every_conversation_the_same(parts, sft_data):
    """loss_per "sample": the loss is the mean over rows of each row's mean answer-token loss, so a one-word
    answer counts as much as a long one; "token" (default) is the plain mean over answer tokens."""
    model, tok = tiny_model(parts)
    tpl = ChatTemplate(tok)
    exs = read_sft(sft_data / "train.jsonl")[:4]
    media = load_media(exs, model, MelConfig(n_mels=16), "cpu", True, True, progress=False)
    samples = [(ex, render(ex, tpl, model, media)) for ex in exs]
    keys = ("image_feats", "audio_feats", "audio_counts")
    b, bs = collate(samples, media), collate(samples, media, "sample")
    assert "loss_weights" not in b
    with torch.no_grad():
        logits = model(b["ids"], **{k: b[k] for k in keys if k in b})["logits"]
        tok_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["targets"], reduction="none")
        mask = b["targets"] != -100
        per_row = (tok_loss * mask).sum(1) / mask.sum(1)
        plain = model(b["ids"], b["targets"], **{k: b[k] for k in keys if k in b})["ce"]
        weighted = model(bs["ids"], bs["targets"], **{k: bs[k] for k in keys if k in bs},
                         loss_weights=bs["loss_weights"])["ce"]
    assert torch.allclose(plain, tok_loss[mask].mean(), atol=1e-5)
    assert torch.allclose(weighted, per_row.mean(), atol=1e-5)
    assert not torch.allclose(weighted, plain, atol=1e-4)   # the rows' answer lengths differ
    with pytest.raises(ValueError, match="loss_per"):
        collate(samples, media, "row")


def test_vision_layer_picks_an_earlier_block(parts):
    model, _ = tiny_model(parts)
    vit = model.vision
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(vit(x, -1)[1], vit(x)[1])
    n = len(vit.blocks)
    vit.blocks.append(torch.nn.Identity())   # one more block that changes nothing: layer -2 is the old last
    assert torch.allclose(vit(x, -2)[1], vit(x, n - 1)[1]) and torch.allclose(vit(x, -2)[1], vit(x, -1)[1])
    with pytest.raises(ValueError, match="layer"):
        vit(x, n + 1)
    t, v, a = (load_artifact(parts / f) for f in ("thinker.pt", "vision.pt", "audio_enc.pt"))
    with pytest.raises(ValueError, match="vision_layer"):
        OmniModel(OmniConfig(t.model.cfg, v.model.cfg.vision, a.model.cfg, ProjectorConfig(4, True, vision_layer=3)))


def test_image_slots_tell_the_cells_apart(parts):
    """With image_slots the same feature in two cells projects to two tokens (a learned embedding per cell, part
    of the image projector); without (the default, and what older artifacts' configs build) there is none."""
    t, v, a = (load_artifact(parts / f) for f in ("thinker.pt", "vision.pt", "audio_enc.pt"))
    model = OmniModel(OmniConfig(t.model.cfg, v.model.cfg.vision, a.model.cfg,
                                 ProjectorConfig(4, True, 2, image_slots=True)))
    slot = model.image_proj.slot
    assert slot.shape == (model.image_token_count, t.model.cfg.d_model)
    feats = torch.randn(1, 1, v.model.cfg.vision.d_model).expand(2, model.image_token_count, -1)
    tokens = model.image_proj(feats)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1]) and torch.allclose(tokens[0], tokens[1], atol=1e-6)
    tokens.sum().backward()
    assert slot.grad is not None and slot.grad.abs().sum() > 0
    plain = OmniModel(OmniConfig(t.model.cfg, v.model.cfg.vision, a.model.cfg, ProjectorConfig(4, True, 2)))
    assert plain.image_proj.slot is None and not any("slot" in k for k in plain.state_dict())

def test_layouts_order_a_user_turns_text_and_media(parts):
    _, tok = tiny_model(parts)
    turn = [Turn("user", "ab", images=[2], audio=[3]), Turn("assistant", "c")]
    first, last = ChatTemplate(tok, "media_first"), ChatTemplate(tok, "text_first")
    img, aud = [first.image_start, first.image, first.image, first.image_end], \
        [first.audio_start] + [first.audio] * 3 + [first.audio_end]
    head, text = [first.im_start, first.role["user"]], tok.encode("ab")
    user = len(head) + len(img) + len(aud) + len(text) + 1
    assert first.render(turn).ids[:user] == head + img + aud + text + [first.im_end]
    r = last.render(turn)
    assert r.ids[:user] == head + text + aud + img + [last.im_end]
    assert r.image_counts == [2] and r.audio_counts == [3]
    assert r.trained == first.render(turn).trained   # only the answer and its end marker, in either layout
    assert last.describe()["layout"] == "text_first"
    with pytest.raises(ValueError, match="layout"):
        ChatTemplate(tok, "media_last")
    t, v, a = (load_artifact(parts / f) for f in ("thinker.pt", "vision.pt", "audio_enc.pt"))
    with pytest.raises(ValueError, match="chat_layout"):   # a stored config with an unknown layout never loads
        OmniModel(OmniConfig(t.model.cfg, v.model.cfg.vision, a.model.cfg, chat_layout="media_last"))


@pytest.mark.parametrize("layout", ["media_first", "text_first"])
def test_training_and_generation_render_the_same_prefix(parts, sft_data, layout):
    model, tok = tiny_model(parts)
    tpl = ChatTemplate(tok, layout)
    examples = read_sft(sft_data / "val.jsonl")
    media = load_media(examples, model, MelConfig(n_mels=16), "cpu", True, True, progress=False)
    for ex in examples:
        full, prompt = render(ex, tpl, model, media), render(ex, tpl, model, media, for_generation=True)
        assert full.ids[:len(prompt.ids)] == prompt.ids
        assert prompt.ids[-2:] == [tpl.im_start, tpl.role["assistant"]]
        assert not any(prompt.trained[:-2]) or ex.task == "dialogue"


def test_system_prompt_and_bad_rows(tmp_path, sft_data):
    ex = read_sft(sft_data / "val.jsonl", system="be brief.")[0]
    assert ex.turns[0].role == "system" and ex.turns[0].content == "be brief."
    bad = tmp_path / "bad.jsonl"
    for line, msg in (('{"prompt": "hi"}', "missing string key"), ("{not json", "invalid JSON"),
                      ('{"messages": [{"role": "assistant", "content": "x"}]}', "alternate"),
                      ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", '
                       '"image": "a.png"}]}', "only user turns")):
        bad.write_text('{"prompt": "a", "answer": "b"}\n' + line + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{msg}"):
            read_sft(bad)


# --- media ---------------------------------------------------------------------------------------------------

def test_padding_never_changes_a_rows_projected_tokens(parts, sft_data):
    """A row's embeddings are the same alone and beside a longer clip and other images (padding is removed)."""
    model, tok = tiny_model(parts)
    tpl = ChatTemplate(tok)
    exs = [e for e in read_sft(sft_data / "train.jsonl") if e.task == "spoken_colour"]
    media = load_media(exs, model, MelConfig(n_mels=16), "cpu", False, False, progress=False)  # raw: encoders run
    lengths = [media.audio[e.audio[0]].shape[0] for e in exs]
    short, long_ = exs[int(np.argmin(lengths))], exs[int(np.argmax(lengths))]
    assert min(lengths) < max(lengths)
    with torch.no_grad():
        def embeds(rows):
            b = collate([(e, render(e, tpl, model, media)) for e in rows], media)
            feats, counts = model.audio_features(b["mels"], b["mel_lengths"])
            return model.embed(b["ids"], model.image_features(b["pixels"]), feats, counts), b["ids"]
        alone, ids = embeds([short])
        both, _ = embeds([long_, short])
    n = ids.shape[1]
    assert torch.allclose(alone[0], both[1, :n], atol=1e-5)


def test_frozen_encoders_get_no_gradient_and_stay_in_eval(parts, sft_data):
    model, tok = tiny_model(parts)
    model.train()
    assert not model.vision.training and not model.audio.training and model.thinker.training
    tpl = ChatTemplate(tok)
    exs = [e for e in read_sft(sft_data / "train.jsonl") if e.task == "spoken_colour"][:3]
    media = load_media(exs, model, MelConfig(n_mels=16), "cpu", False, False, progress=False)
    b = collate([(e, render(e, tpl, model, media)) for e in exs], media)
    out = model(b["ids"], b["targets"], pixels=b["pixels"], mels=b["mels"], mel_lengths=b["mel_lengths"])
    out["loss"].backward()
    assert all(p.grad is None for p in [*model.vision.parameters(), *model.audio.parameters()])
    assert all(p.grad is not None for p in model.image_proj.parameters())
    assert all(p.grad is not None for p in model.audio_proj.parameters())
    unfrozen, _ = tiny_model(parts, vision=False)
    unfrozen(b["ids"], b["targets"], pixels=b["pixels"], mels=b["mels"],
             mel_lengths=b["mel_lengths"])["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unfrozen.vision.parameters())


def test_placeholders_and_media_must_agree(parts):
    model, _ = tiny_model(parts)
    ids = torch.tensor([[4, IMAGE_ID, IMAGE_ID, 5]])
    with pytest.raises(ValueError, match="no image was given"):
        model.embed(ids)
    with pytest.raises(ValueError, match="5 image tokens for 2 placeholders"):
        model.embed(ids, image_feats=torch.zeros(1, 5, 24))
    assert AUDIO_ID != IMAGE_ID


# --- the stage -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(parts, sft_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("sft_ref") / "run"
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, save, **REFERENCE)])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


def test_trains_logs_validates_and_writes_a_loadable_omni_model(reference, sft_data):
    log = (reference / "training.log").read_text()
    assert "real" in log and "omni_step_" in log
    val = metrics(reference, "val")[-1]
    for k in ("overall", "colour", "spoken_colour", "transcribe_wer", "dialogue_perplexity", "shuffled_images"):
        assert k in val, (k, val)
    train = metrics(reference)
    assert train[-1]["loss"] < train[0]["loss"]
    from omni.infer.omni import load_omni
    omni = load_omni(reference)
    assert set(omni.model.frozen) == {"thinker", "vision", "audio"}
    art = torch.load(reference / "omni_final.pt", weights_only=True)
    assert set(art["sources"]) == {"thinker", "vision", "audio_enc"} and len(art["sources"]["thinker"]["sha256"]) == 64
    turns = [Turn("user", "answer the spoken question.", images=[str(sft_data / "img" / "red.png")],
                  audio=[str(sft_data / "wav" / "0.wav")])]
    pieces = list(omni.stream(turns, max_new_tokens=5))
    assert "".join(pieces).strip() == omni.reply(turns, max_new_tokens=5)


def test_sigkill_then_rerun_is_bitwise_identical(parts, sft_data, reference, tmp_path):
    save = tmp_path / "run"
    cmd = ["sft_omni.py", "--config", sft_config(parts, sft_data, save, **REFERENCE)]
    assert kill_at(cmd, save, 7) < 16
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from omni_step_" in (save / "training.log").read_text()
    assert_same_weights(final_weights(reference, "omni_final"), final_weights(save, "omni_final"))
    assert [m["loss"] for m in metrics(save)] == [m["loss"] for m in metrics(reference)]


def test_align_steps_keep_the_thinker_still(parts, sft_data, tmp_path):
    save = tmp_path / "align"
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, save, max_steps=3, align_steps=3,
                                                          checkpoint_freq=1)])
    assert r.returncode == 0, r.stderr[-3000:]
    start = torch.load(parts / "thinker.pt", weights_only=True)["model"]
    end = final_weights(save, "omni_final")
    assert_same_weights(start, {k.removeprefix("thinker."): v for k, v in end.items() if k.startswith("thinker.")})
    first = torch.load(save / "omni_step_1.pt", weights_only=True)["model"]
    assert not torch.equal(end["image_proj.inp.weight"], first["image_proj.inp.weight"])
    assert [m["lr"] > 0 for m in metrics(save)] == [True] * 3  # the log's lr is the projectors'


def test_a_frozen_thinker_trains_the_projectors_on_the_media_rows_only(parts, sft_data, tmp_path):
    save = tmp_path / "frozen"  # a text-only row would give a loss with nothing to train
    talk = tmp_path / "talk.jsonl"
    talk.write_text(json.dumps({"prompt": "hello", "answer": "hello!", "task": "dialogue"}) + "\n")
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, save, max_steps=3, freeze={"thinker": True},
                                                          train_files=[str(sft_data / "train.jsonl"), str(talk)])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "text-only training rows left out" in (save / "training.log").read_text()
    start = torch.load(parts / "thinker.pt", weights_only=True)["model"]
    end = final_weights(save, "omni_final")
    assert_same_weights(start, {k.removeprefix("thinker."): v for k, v in end.items() if k.startswith("thinker.")})


def test_unreadable_media_are_skipped_and_counted(parts, sft_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.loads(l) for l in (sft_data / "train.jsonl").read_text().splitlines()]
    for r in rows:  # absolute paths, so the copy can live elsewhere
        for k in ("image", "audio"):
            if k in r:
                r[k] = str(sft_data / r[k])
        for m in r.get("messages", []):
            if "image" in m:
                m["image"] = str(sft_data / m["image"])
    (data / "broken.png").write_bytes(b"not a png")
    rows[0] = {"prompt": "what colour is it?", "answer": "red", "image": "broken.png", "task": "colour"}
    rows[1] = {"prompt": "transcribe the audio.", "answer": "ab", "audio": "gone.wav", "task": "transcribe"}
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save = tmp_path / "run"
    cfg = sft_config(parts, sft_data, save, train_files=[str(data / "train.jsonl")], max_steps=12,
                     max_bad_fraction=0.5)
    r = run_script(["sft_omni.py", "--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "2 with unreadable media" in log and "unreadable image" in log and "broken.png" in log
    assert "missing audio" in log and "gone.wav" in log and "train.jsonl:2" in log
    r = run_script(["sft_omni.py", "--config", cfg, "--set", "max_bad_fraction=0.0", "--fresh"])
    assert r.returncode != 0 and "max_bad_fraction" in r.stderr


def test_missing_or_wrong_artifacts_are_errors_naming_the_file(parts, sft_data, tmp_path):
    cfg = sft_config(parts, sft_data, tmp_path / "a", thinker_ckpt=str(tmp_path / "nope.pt"))
    r = run_script(["sft_omni.py", "--config", cfg])
    assert r.returncode != 0 and "nope.pt not found" in r.stderr and "train_text.py" in r.stderr
    cfg = sft_config(parts, sft_data, tmp_path / "b", audio_enc_ckpt=str(parts / "vision.pt"))
    r = run_script(["sft_omni.py", "--config", cfg])
    assert r.returncode != 0 and "vision.pt is a vision artifact, but a audio_enc" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, tmp_path / "c"), "--set",
                    "projector.image_tokens=5"])
    assert r.returncode != 0 and "image_tokens must be a square" in r.stderr and "Traceback" not in r.stderr
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, tmp_path / "d", vision_ckpt="")])
    assert r.returncode != 0 and "has images but the model has no vision encoder" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    r = run_script(["sft_omni.py", "--config", sft_config(parts, sft_data, tmp_path / "e", train_files=[str(bad)])])
    assert r.returncode != 0 and "bad.jsonl:2: missing string key(s) ['answer']" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_mismatched_omni_artifact_is_an_error(reference, tmp_path):
    art = torch.load(reference / "omni_final.pt", weights_only=True)
    art["model_config"]["projector"]["hidden"] = 7
    torch.save(art, tmp_path / "omni_final.pt")
    with pytest.raises(RuntimeError, match="omni_final.pt: weights do not match"):
        load_artifact(tmp_path / "omni_final.pt")


def test_evaluate_script_prints_every_task(reference, sft_data):
    r = run_script(["scripts/evaluate.py", "sft", "--ckpt", str(reference), "--data", str(sft_data / "val.jsonl"),
                    "--samples", "6"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert set(out["tasks"]) >= {"colour", "spoken_colour", "transcribe", "dialogue"}
    assert out["tasks"]["colour"]["n"] == 3 and "accuracy" in out["tasks"]["colour"]
    assert "perplexity" in out["tasks"]["dialogue"] and "wer" in out["tasks"]["transcribe"]
    assert "shuffled_images" in out and "prior" in out
    # the accuracies are those of the replies (the first six generated: the question rows), counted here
    replies = out["samples"]
    right = [re.sub(r"[.!?]+$", "", s["reply"].strip().lower()) == s["answer"] for s in replies]
    assert sorted(s["task"] for s in replies) == ["colour"] * 3 + ["spoken_colour"] * 3
    assert out["overall"] == pytest.approx(np.mean(right))
    for task in ("colour", "spoken_colour"):
        assert out["tasks"][task]["accuracy"] == pytest.approx(np.mean([x for x, s in zip(right, replies)
                                                                        if s["task"] == task]))
    g = out["grounding"]["images"]
    assert g["n"] == 3 and set(g) == {"accuracy", "shuffled", "prior", "lost", "n"}


def test_scores_normalise_answers_and_measure_grounding():
    from omni.infer.sft_eval import grounding, normalize, word_f1
    assert normalize(" At the Top. ") == "at the top" and normalize("yes!") == "yes"
    assert word_f1("a red star", "a red circle") == pytest.approx(2 / 3) and word_f1("x", "") == 0.0
    rows = [read_row(a) for a in ["yes", "yes", "yes", "no"]]   # prior: 3 of 4 say "yes"
    g = grounding(rows, ["yes", "yes", "yes", "no"], ["yes", "yes", "yes", "yes"])
    assert (g["accuracy"], g["shuffled"], g["prior"]) == (1.0, 0.75, 0.75) and g["lost"] == pytest.approx(1.0)
    assert grounding(rows, ["yes"] * 4, ["no"] * 4)["lost"] is None   # no margin over the prior


GROUNDING_COLOURS = {"red": (220, 35, 35), "green": (30, 165, 60), "blue": (35, 75, 225), "yellow": (235, 215, 40)}


def colour_rows(folder, name: str, n: int, rng) -> str:
    """n "what colour is it?" rows over the four colours in turn, each with its own jittered 16 px image."""
    (folder / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        c = list(GROUNDING_COLOURS)[i % len(GROUNDING_COLOURS)]
        pixels = np.array(GROUNDING_COLOURS[c]) + rng.integers(-20, 21, 3) + rng.integers(-8, 9, (16, 16, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "img" / f"{name}_{i}.png")
        rows.append({"prompt": "what colour is it?", "answer": c, "image": f"img/{name}_{i}.png", "task": "colour"})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / f"{name}.jsonl")


def test_answers_come_from_the_picture(parts, tmp_path):
    """A tiny world where only the picture tells the answer: 300 steps on 32 rows answer 16 unseen pictures
    right (accuracy 1.0 for each of seeds 0-5), and with the pictures shuffled among the rows the answers follow
    the pictures, not the rows (0.1875 for every seed: the share of rows whose shuffled picture has their own
    colour; the answer prior is 0.25)."""
    from omni.infer.omni import load_omni
    from omni.infer.sft_eval import evaluate_sft
    rng = np.random.default_rng(0)
    train, val = colour_rows(tmp_path, "train", 32, rng), colour_rows(tmp_path, "val", 16, rng)
    save = tmp_path / "run"
    run(OmniStage, ["--config", sft_config(parts, tmp_path, save, train_files=[train], val_file="",
                                           audio_enc_ckpt="", batch_size=8, lr=1e-2, projector_lr=1e-2,
                                           warmup_steps=3, max_steps=300, print_freq=100, checkpoint_freq=1000)])
    omni = load_omni(save)
    examples = read_sft(val)
    media = load_media(examples, omni.model, omni.mel, "cpu", True, True, progress=False)
    g = evaluate_sft(omni.model, omni.template, examples, media, "cpu", max_new_tokens=8)["grounding"]["images"]
    assert g["n"] == 16 and g["prior"] == 0.25
    assert g["accuracy"] >= 0.85 and g["shuffled"] <= g["accuracy"] - 0.5, g


def read_row(answer: str):
    from omni.data.sft import parse_row
    return parse_row({"prompt": "is there a star?", "answer": answer, "task": "yesno"}, ROOT, "row")


def test_chat_prompts_exactly_what_training_saw(reference, sft_data):
    """load_omni's prompt for a conversation = the training sequence's embeddings up to the assistant's turn."""
    from omni.infer.omni import load_omni
    omni = load_omni(reference)
    assert omni.template.layout == "text_first" == omni.model.cfg.chat_layout   # the run's, kept in the artifact
    ex = next(e for e in read_sft(sft_data / "val.jsonl") if e.task == "spoken_colour")
    media = load_media([ex], omni.model, omni.mel, "cpu", True, True, progress=False)
    r = render(ex, omni.template, omni.model, media)
    b = collate([(ex, r)], media)
    with torch.no_grad():
        train = omni.model.embed(b["ids"], b["image_feats"], b["audio_feats"], b["audio_counts"])
        chat = omni.prompt(ex.turns[:-1])
    n = chat.shape[1]
    assert n == len(render(ex, omni.template, omni.model, media, for_generation=True).ids)
    assert torch.allclose(chat[0], train[0, :n], atol=1e-3)   # float16-cached features against fresh ones


def test_trains_on_the_gpu_path(parts, sft_data, tmp_path):
    """Training with an alignment step, then validation's generation under autocast (cached image features
    once could not be stacked there)."""
    save = tmp_path / "run"
    assert_trains_on_the_gpu_path(["sft_omni.py", "--config", sft_config(parts, sft_data, save, align_steps=1)], save,
                                  ("omni_final.pt",))
