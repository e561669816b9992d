"""export.py and infer_chat.py: an export loads with the package alone and computes exactly what the training
artifacts compute; every chat mode answers; bad input is one clear error line and exit status 1. Tiny random
models built in conftest's `runs` (what is checked is the plumbing, not what they say)."""
from __future__ import annotations

import json
import shutil

import pytest
import soundfile as sf
import torch

from conftest import run_script
from omni.artifacts import load_artifact
from omni.chat import Turn
from omni.infer.ocr import read_lines


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged_model"
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(out),
                    "--talker_ckpt", str(runs / "talker"), "--ocr_ckpt", str(runs / "ocr")])
    assert r.returncode == 0, r.stderr[-3000:]
    moved = tmp_path_factory.mktemp("elsewhere") / "model"   # a copy in another place loads the same
    shutil.copytree(out, moved)
    return moved


def test_export_layout_and_manifest(exported, runs):
    m = json.loads((exported / "manifest.json").read_text())
    assert {"tokenizer.model", "chat_template.json", "omni/model.safetensors", "omni/config.json",
            "talker/model.safetensors", "rvq_codec/config.json", "ocr/model.safetensors"} <= set(m["files"])
    assert set(m["sources"]) == {"omni", "talker", "rvq_codec", "ocr"} and m["dtype"] == "float32"
    assert not list(exported.rglob("*.pt"))
    # an artifact from before the layout option has none stored: it was trained media first
    assert json.loads((exported / "chat_template.json").read_text())["layout"] == "media_first"


def test_exported_and_checkpoint_models_compute_the_same(exported, runs):
    from omni.infer.omni import load_omni
    from omni.infer.tts import load_speaker
    a, b = load_omni(runs / "omni_sft"), load_omni(exported)
    convs = [[Turn("user", "hello there")],
             [Turn("user", "what colour is it?", images=[str(runs / "red.png")])],
             [Turn("user", "transcribe the audio.", audio=[str(runs / "q.wav")])]]
    with torch.no_grad():
        for conv in convs:
            la, lb = (o.model.thinker(inputs_embeds=o.prompt(conv))["logits"] for o in (a, b))
            assert torch.equal(la, lb)
    sa, sb = load_speaker(runs / "talker"), load_speaker(exported)
    ca, cb = (s.speak_codes(["a cab"], temperature=0.8, seed=3)[0] for s in (sa, sb))
    assert torch.equal(ca, cb) and len(ca) > 0


def test_export_in_half_precision_loads(runs, tmp_path):
    out = tmp_path / "bf16"
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(out), "--dtype", "bfloat16"])
    assert r.returncode == 0, r.stderr[-2000:]
    from safetensors.torch import load_file
    assert load_file(str(out / "omni" / "model.safetensors"))["thinker.embed.weight"].dtype == torch.bfloat16
    a = load_artifact(out, "omni")
    assert next(a.model.parameters()).dtype == torch.float32


def test_a_changed_file_fails_its_checksum(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    cfg = json.loads((bad / "talker" / "config.json").read_text())
    cfg["config"] = {"edited": True}
    (bad / "talker" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="checksum mismatch: .*talker/config.json"):
        load_artifact(bad, "talker")


def test_export_checks_the_parts_it_is_told_about(runs, tmp_path):
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(tmp_path / "x"),
                    "--thinker_ckpt", str(runs / "omni_sft" / "omni_final.pt")])
    assert r.returncode == 1 and "was trained without a thinker part" in r.stderr and "Traceback" not in r.stderr
    r = run_script(["export.py", "--omni_ckpt", str(tmp_path / "none"), "--output_dir", str(tmp_path / "y")])
    assert r.returncode == 1 and "--omni_ckpt" in r.stderr and "not found" in r.stderr


def test_export_finds_the_parts_beside_the_omni_run(runs, tmp_path):
    """With --omni_ckpt alone the Talker (and its codec) and the OCR model of the same runs folder come along,
    each named with where it came from; a Talker trained on another Thinker's reading is passed over;
    --only_given exports the omni model alone."""
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(tmp_path / "a")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads((tmp_path / "a" / "manifest.json").read_text())["sources"]) == {
        "omni", "talker", "rvq_codec", "ocr"}
    assert f"talker: {runs / 'talker' / 'talker.pt'} (found beside the omni run)" in r.stderr
    assert "modes: text, image, speech in, speech out (Griffin-Lim), OCR" in r.stdout
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(tmp_path / "b"),
                    "--only_given"])
    assert r.returncode == 0 and set(json.loads((tmp_path / "b" / "manifest.json").read_text())["sources"]) == {"omni"}
    other = tmp_path / "runs"
    shutil.copytree(runs, other)
    state = torch.load(other / "talker" / "talker.pt", weights_only=True)
    state["config"] = {"thinker_ckpt": str(tmp_path / "another_thinker.pt")}
    torch.save(state, other / "talker" / "talker.pt")
    r = run_script(["export.py", "--omni_ckpt", str(other / "omni_sft"), "--output_dir", str(tmp_path / "c")])
    assert r.returncode == 0 and set(json.loads((tmp_path / "c" / "manifest.json").read_text())["sources"]) == {
        "omni", "ocr"}


def chat(args) -> tuple[int, dict | None, str]:
    r = run_script(["infer_chat.py", *args, "--json"])
    out = json.loads(r.stdout) if r.returncode == 0 else None
    return r.returncode, out, r.stderr


RECORD = {"reply", "time_to_first_token_s", "tokens", "parts"}


@pytest.mark.parametrize("mode", ["text", "image", "spoken_question", "transcribe"])
def test_every_mode_answers_from_the_export(exported, runs, mode):
    args = {"text": ["hello there"],
            "image": ["--image", str(runs / "red.png"), "what colour is it?"],
            "spoken_question": ["--image", str(runs / "red.png"), "--audio_in", str(runs / "q.wav")],
            "transcribe": ["--audio_in", str(runs / "q.wav")]}[mode]
    rc, out, err = chat(["--ckpt_dir", str(exported), "--max_new_tokens", "8", *args])
    assert rc == 0, err[-3000:]
    assert RECORD <= set(out)


def test_a_spoken_reply_is_written_whole(exported, tmp_path):
    """The reply is spoken (an empty one would be an error, exit status 1: nothing to speak) into a wav as long
    as the record says, by Griffin-Lim (the export has no vocoder)."""
    rc, out, err = chat(["--ckpt_dir", str(exported), "--max_new_tokens", "6", "--text", "hello", "--audio_out",
                         str(tmp_path / "r.wav")])
    assert rc == 0, err[-3000:]
    assert RECORD <= set(out) and out["reply"].strip() and out["audio_out"] == str(tmp_path / "r.wav")
    wav, sr = sf.read(out["audio_out"])
    assert sr == 16000 and abs(len(wav) / sr - out["audio_s"]) < 1e-3 and len(wav) > 0
    assert "Griffin-Lim" in out["vocoder"] and out["voice"] == "default"
    r = run_script(["infer_chat.py", "--ckpt_dir", str(exported), "--list_voices"])
    assert r.returncode == 0 and r.stdout.split() == ["default"], r.stderr[-2000:]
    r = run_script(["infer_chat.py", "--ckpt_dir", str(exported), "--text", "hello", "--voice", "nobody",
                    "--audio_out", str(tmp_path / "x.wav")])
    assert r.returncode == 1 and "unknown voice 'nobody'; this Talker speaks in default" in r.stderr
    assert not (tmp_path / "x.wav").exists()


def test_ocr_mode_replies_with_the_reading(exported, runs):
    """With --ocr and no question the reply is the OCR model's reading of the line, as the model reads it here."""
    rc, out, err = chat(["--ckpt_dir", str(exported), "--max_new_tokens", "8", "--ocr", "--image",
                         str(runs / "line.png")])
    assert rc == 0, err[-3000:]
    assert RECORD <= set(out)
    ocr = load_artifact(exported, "ocr")
    assert out["reply"] == out["ocr"] == read_lines(ocr.model, ocr.vocab, [runs / "line.png"])[0]


def test_training_folders_answer_too(runs):
    rc, out, err = chat(["--ckpt_dir", str(runs), "--image", str(runs / "red.png"), "what colour is it?"])
    assert rc == 0, err[-3000:]
    assert out["parts"]["omni"].endswith("omni_sft") and "talker" in out["parts"]


@pytest.mark.parametrize("args, message", [
    (["--image", "{d}/nowhere.png", "what is it?"], "image file not found: {d}/nowhere.png"),
    (["--audio_in", "{d}/notes.txt"], "cannot read audio {d}/notes.txt"),
    (["--image", "{d}/broken.png", "what is it?"], "cannot read image {d}/broken.png"),
    (["--text", "  "], "empty prompt"),
    (["--text", "the red circle is on the left and " * 20], "no room for a reply"),
])
def test_bad_input_is_one_clear_error(exported, runs, args, message):
    rc, _, err = chat(["--ckpt_dir", str(exported), *[a.format(d=runs) for a in args]])
    assert rc == 1 and message.format(d=runs) in err and "Traceback" not in err


def test_a_mode_without_its_part_is_an_error(runs, tmp_path):
    only = tmp_path / "only_omni"
    r = run_script(["export.py", "--omni_ckpt", str(runs / "omni_sft"), "--output_dir", str(only), "--only_given"])
    assert r.returncode == 0, r.stderr[-2000:]
    rc, _, err = chat(["--ckpt_dir", str(only), "hello", "--audio_out", str(tmp_path / "x.wav")])
    assert rc == 1 and "no speaker model" in err and "--talker_ckpt" in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()
    rc, _, err = chat(["--ckpt_dir", str(only), "--ocr", "--image", str(runs / "line.png")])
    assert rc == 1 and "no ocr model" in err and "Traceback" not in err


def test_the_conversation_keeps_history_and_commands(exported, runs):
    lines = f"/image {runs / 'red.png'}\nwhat colour is it?\nand now?\n/audio {runs / 'notes.txt'}\n/reset\nhi\n/quit\n"
    r = run_script(["infer_chat.py", "--ckpt_dir", str(exported), "--max_new_tokens", "4"], input=lines)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("omni> ") == 3
    assert "(attached" in r.stderr and "cannot read audio" in r.stderr and "(history cleared)" in r.stderr


def test_a_full_context_forgets_the_oldest_exchange(exported):
    """The demo Thinker's context is short: a long conversation drops its oldest exchange, and goes on."""
    long = "the red circle is on the left and the blue star is at the top " * 3
    r = run_script(["infer_chat.py", "--ckpt_dir", str(exported), "--max_new_tokens", "4"],
                   input=f"{long}\n{long}\n{long}\n/quit\n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("omni> ") == 3 and "(context full: the oldest exchange is forgotten)" in r.stderr
