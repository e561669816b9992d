"""Bad input is one error type (omni.errors.UserError) that every entry point prints as one line naming the file;
any other exception is a bug and keeps its traceback."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import load_script, run_script

from omni.artifacts import FORMAT
from omni.errors import ArtifactError, UserError, exit_on_user_error


def fake_thinker(path):
    """A file that passes as a thinker artifact up to its kind: loading it as any other kind is a user error."""
    torch.save({"kind": "thinker", "format": FORMAT, "model": {}, "model_config": {}, "config": {},
                "tokenizer": torch.zeros(3, dtype=torch.uint8)}, path)
    return path


def test_every_user_error_class_is_a_user_error():
    from omni.builtin.text import MissingSource
    from omni.config import ConfigError
    from omni.infer.chat import ChatError
    from omni.infer.omni import ContextFull
    from omni.train.checkpoint import CheckpointError
    ConversionError = load_script("convert_common").ConversionError
    for cls in (ConfigError, CheckpointError, ChatError, ContextFull, ConversionError, MissingSource, ArtifactError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    for cls in (CheckpointError, ConversionError, MissingSource, ArtifactError):   # RuntimeErrors before
        assert issubclass(cls, RuntimeError), cls


def test_the_guard_prints_one_line_and_lets_bugs_through(capsys):
    with pytest.raises(SystemExit) as e, exit_on_user_error():
        raise ArtifactError("a.pt: weights do not match:\n\tMissing key(s) in state_dict: \"w\".")
    assert e.value.code == 1
    assert capsys.readouterr().err == 'error: a.pt: weights do not match: Missing key(s) in state_dict: "w".\n'
    with pytest.raises(SystemExit), exit_on_user_error():
        open("/nonexistent/data.csv")
    assert "/nonexistent/data.csv" in capsys.readouterr().err
    for bug in (RuntimeError("shape mismatch"), ValueError("not the user's"), KeyError("k")):
        with pytest.raises(type(bug)), exit_on_user_error():
            raise bug
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("what", ["evaluate-missing", "asr-missing", "ocr-wrong-kind", "chat-wrong-kind",
                                  "export-wrong-kind"])
def test_entry_points_print_a_user_error_as_one_line(tmp_path, what):
    thinker = fake_thinker(tmp_path / "thinker.pt")
    (tmp_path / "run").mkdir()
    fake_thinker(tmp_path / "run" / "omni_final.pt")
    cmd, named = {
        "evaluate-missing": (["scripts/evaluate.py", "text", "--ckpt", str(tmp_path / "nope.pt"), "--data",
                              str(tmp_path / "val.txt"), "--device", "cpu"], "nope.pt"),
        "asr-missing": (["-m", "omni.asr", "--ckpt", str(tmp_path / "nope.pt"), "a.wav", "--device", "cpu"],
                        "checkpoint not found: " + str(tmp_path / "nope.pt")),
        "ocr-wrong-kind": (["-m", "omni.ocr", "--ckpt", str(thinker), "x.png", "--device", "cpu"],
                           "thinker.pt is a thinker artifact, but a ocr"),
        "chat-wrong-kind": (["infer_chat.py", "--ckpt_dir", str(tmp_path / "run"), "hello"],
                            "omni_final.pt is a thinker artifact, but a omni"),
        "export-wrong-kind": (["export.py", "--omni_ckpt", str(thinker), "--output_dir", str(tmp_path / "out")],
                              "--omni_ckpt: "),
    }[what]
    r = run_script(cmd, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]


def test_a_bug_in_an_entry_point_keeps_its_traceback(tmp_path, monkeypatch):
    def shape_bug(*a, **k):
        raise RuntimeError("size mismatch for tok_emb.weight")   # a bug, not the user's input

    evaluate = load_script("evaluate")
    monkeypatch.setattr(evaluate, "load_artifact", shape_bug)
    with pytest.raises(RuntimeError, match="size mismatch"):
        evaluate.main(["text", "--ckpt", str(tmp_path / "t.pt"), "--data", str(tmp_path / "v.txt"),
                       "--device", "cpu"])

    import omni.infer.ocr
    monkeypatch.setattr(omni.infer.ocr, "load_artifact", shape_bug)
    with pytest.raises(RuntimeError, match="size mismatch"):
        omni.infer.ocr.main(["--ckpt", str(tmp_path / "o.pt"), "x.png", "--device", "cpu"])

    import infer_chat
    monkeypatch.setattr(infer_chat, "load_chat", shape_bug)
    with pytest.raises(RuntimeError, match="size mismatch"):
        infer_chat.main(["--ckpt_dir", str(tmp_path), "hello"])

    import omni.train.engine as engine
    monkeypatch.setattr(engine, "Trainer", shape_bug)
    with pytest.raises(RuntimeError, match="size mismatch"):
        engine.run(object, [])

    convert_common = load_script("convert_common")
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert_common.run(shape_bug)


def test_the_training_entry_point_prints_a_user_error(monkeypatch, capsys):
    import omni.train.engine as engine
    from omni.config import ConfigError

    def bad_config(*a, **k):
        raise ConfigError("run.json: unknown config key 'warmup_step'; did you mean 'warmup_steps'?")

    monkeypatch.setattr(engine, "Trainer", bad_config)
    with pytest.raises(SystemExit) as e:
        engine.run(object, [])
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: run.json: unknown config key 'warmup_step'; did you mean " \
                                      "'warmup_steps'?\n"


def test_a_bad_turn_in_the_conversation_prints_and_the_chat_goes_on(monkeypatch, capsys):
    import infer_chat
    from omni.infer.omni import ContextFull

    said = []

    class Omni:
        tokenizer = SimpleNamespace(encode=lambda s: s.split())

        def stream(self, history, *a):
            said.append(history[-1].content)
            if history[-1].content == "long":
                raise ContextFull("the conversation is 40 tokens, and the Thinker's context of 32 leaves no room")
            if history[-1].content == "bug":
                raise RuntimeError("shape mismatch in the Thinker")
            yield "fine"

    args = SimpleNamespace(system="", audio_out=None, device="cpu", seed=0, max_new_tokens=4, temperature=0.0,
                           top_k=0, top_p=1.0, compile=False)
    chat = SimpleNamespace(omni=Omni())
    lines = iter(["long", "/image nope.png", "hi", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert infer_chat.repl(chat, args) == 0
    err = capsys.readouterr().err
    assert said == ["long", "hi"]   # the conversation went on after the turn that did not fit
    assert "error: the conversation is 40 tokens" in err and "error: image file not found: nope.png" in err

    lines = iter(["bug", "/quit"])
    with pytest.raises(RuntimeError, match="shape mismatch"):
        infer_chat.repl(chat, args)
