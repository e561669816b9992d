"""OCR (train_ocr.py, omni/models/ocr.py, omni.ocr, evaluate.py ocr, prepare_mjsynth.py) on lines rendered here."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import assert_same_weights, assert_trains_on_the_gpu_path, final_weights, kill_at, load_script, metrics, run_script
from omni.artifacts import load_artifact
from omni.builtin import ocr as builtin
from omni.data.ocr import batch_lines, line_pixels, target_ids
from omni.infer.ocr import CTCPrefixScore, joint_generate, read_lines
from omni.metrics import cer, length_bucket
from omni.models.ocr import OCRConfig, OCRModel
from omni.train.engine import run
from train_ocr import OCRStage

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
WORDS = ["red", "blue", "Star", "left", "top 3", "a $5 box", "(x)", "large", "Circle", "2 + 2 = 4"]


def tiny_model(**over) -> OCRModel:
    torch.manual_seed(0)
    cfg = dict(channels=8, d_model=32, enc_layers=1, dec_layers=2, n_heads=4, d_ff=64, vocab_size=98, dropout=0.0)
    return OCRModel(OCRConfig(**{**cfg, **over})).eval()


def random_lines(widths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, w)).astype(np.uint8) for w in widths]


def test_a_batch_of_widths_reads_each_line_as_alone():
    model = tiny_model()
    lines = random_lines([23, 97, 160, 64])
    pixels, widths = batch_lines(lines)
    with torch.no_grad():
        memory, mask = model.encode(pixels, widths)
        together = model.generate(pixels, widths, max_chars=12)
        for i, line in enumerate(lines):
            p1, w1 = batch_lines([line])
            alone, _ = model.encode(p1, w1)
            assert int(mask[i].sum()) == alone.shape[1]
            torch.testing.assert_close(memory[i, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)
            assert model.generate(p1, w1, max_chars=12)[0] == together[i]


def test_kv_cached_decoding_equals_uncached():
    model = tiny_model()
    pixels, widths = batch_lines(random_lines([50, 120], seed=1))
    with torch.no_grad():
        assert model.generate(pixels, widths, max_chars=15) == model.generate(pixels, widths, max_chars=15,
                                                                             use_cache=False)
        ids = torch.randint(1, 96, (2, 9))
        memory, mask = model.encode(pixels, widths)
        kv = model.memory_kv(memory)
        full = model.decode(ids, kv, mask)
        cache = KVCacheFor(model, 2)
        steps = torch.cat([model.decode(ids[:, t:t + 1], kv, mask, cache) for t in range(9)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)


def looping_decoder(model, score: float):
    """A stand-in for model.decode that always prefers character 5 by `score` and never says EOS (a loop)."""
    def decode(ids, kv, mask, cache=None):
        logits = torch.zeros(ids.shape[0], ids.shape[1], model.cfg.vocab_size)
        logits[..., 5] = score
        if cache is not None:
            cache.pos += ids.shape[1]
        return logits
    return decode


def test_decoding_is_bounded_by_the_ctc_reading():
    """A decoder that never says EOS (a repetition loop) stops at ceil(1.25 x the CTC head's greedy length) + 2
    characters; without the bound it runs to one character per encoder frame."""
    model = tiny_model()
    pixels, widths = batch_lines(random_lines([90, 160], seed=2))

    model.decode = looping_decoder(model, 1.0)
    frames = model.encode(pixels, widths)[1].sum(1).tolist()
    with torch.no_grad():
        assert [len(r) for r in model.generate(pixels, widths, ctc_bound=None)] == frames
        model.ctc_head.weight.data.zero_()
        model.ctc_head.bias.data.zero_()
        model.ctc_head.bias.data[0] = 1.0          # the CTC head reads nothing: 0 characters -> at most 2
        assert [len(r) for r in model.generate(pixels, widths)] == [2, 2]
        model.ctc_head.bias.data[3] = 2.0          # one character held over every frame: 1 -> at most 4
        assert [len(r) for r in model.generate(pixels, widths)] == [4, 4]
    assert min(frames) > 4


def KVCacheFor(model, batch):
    from omni.models.layers import KVCache
    c = model.cfg
    return KVCache(c.dec_layers, batch, c.n_heads, 16, c.d_model // c.n_heads, "cpu", torch.float32)


def test_lines_keep_their_aspect_and_targets_frame_the_text():
    a = line_pixels(Image.new("RGB", (300, 50), "white"), 32)
    assert a.shape == (32, 192) and a.dtype == np.uint8
    assert line_pixels(Image.new("L", (4, 64)), 32).shape == (32, 8)   # never narrower than 8 columns
    t = target_ids([[5, 6, 7], [8]], bos=96, eos=97)
    assert t.tolist() == [[96, 5, 6, 7, 97], [96, 8, 97, 0, 0]]


def test_rendered_lines_and_held_out_halves():
    rng = np.random.default_rng(0)
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    for target in [4, 12, 30]:
        line = builtin.cut_line(text, rng, target)
        assert 0 < len(line) <= max(target, 5) and line in text   # a word longer than target stays whole
    lines = builtin.sentences(rng, 30, "train")
    assert all(0 < len(t) <= builtin.MAX_CHARS for t in lines) and max(map(len, lines)) > 40
    assert all(40 <= len(t) <= 64 for t in builtin.sentences(rng, 10, "val", builtin.LONG_CHARS))
    assert [length_bucket(n) for n in (1, 28, 29, 64, 70)] == ["1-28", "1-28", "29-48", "49-64", "65+"]
    img = builtin.render_line("Hello, World! 42", FONT, rng, degraded=True)
    assert img.mode == "RGB" and img.width > 2 * img.height
    halves = {builtin.held_half(f"sentence {i}") for i in range(40)}
    assert halves == {"val", "test"}
    assert builtin.covers_ascii(FONT)
    held = {builtin.VAL_FAMILY, builtin.TEST_FAMILY}
    assert len(held) == 2 and held <= set(builtin.FAMILIES)


def test_ctc_prefix_scores_are_ctc_probabilities():
    """The prefix scorer of joint decoding: a prefix's end score is the CTC log-likelihood of exactly that text
    (torch's ctc_loss), and its extensions and end share out its prefix probability."""
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, 6).mul(2).log_softmax(-1)
    frames = torch.tensor([12, 9, 5])
    texts = [[1, 2, 2], [4, 4, 1], [5, 1, 3]]
    scorer, prev = CTCPrefixScore(log_probs, frames), torch.zeros(3)
    for step in range(4):
        psi, end = scorer.scores()
        for b, text in enumerate(texts):
            prefix = torch.tensor([text[:step]], dtype=torch.long)
            nll = F.ctc_loss(log_probs[b:b + 1, :frames[b]].transpose(0, 1), prefix, frames[b:b + 1],
                             torch.tensor([step]), reduction="none")
            torch.testing.assert_close(end[b], -nll[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(torch.cat([psi, end[:, None]], 1).logsumexp(1), prev, atol=1e-4, rtol=1e-5)
        if step < 3:
            c = torch.tensor([t[step] for t in texts])
            prev = psi.gather(1, (c - 1)[:, None])[:, 0]
            scorer.extend(c)


def test_joint_decoding_follows_the_ctc_reading_past_a_looping_decoder():
    """A decoder that never says EOS (a repetition loop) and a CTC head that reads "ab": joint decoding writes
    what the CTC alignment allows and stops, where greedy decoding runs to one character per frame."""
    model = tiny_model()
    pixels, widths = batch_lines(random_lines([90], seed=3))

    model.decode = looping_decoder(model, 3.0)
    with torch.no_grad():
        memory, mask = model.encode(pixels, widths)
        frames = int(mask.sum())
        ctc_logits = torch.full((1, memory.shape[1], model.cfg.vocab_size - 2), -10.0)
        ctc_logits[0, :, 0] = 0.0                  # blank, with "a" (1) then "b" (2) on two frames
        ctc_logits[0, 3, 1], ctc_logits[0, 7, 2] = 10.0, 10.0
        assert joint_generate(model, memory, mask, ctc_logits, ctc_weight=0.5) == [[1, 2]]
        assert len(model.generate(pixels, widths, ctc_bound=None)[0]) == frames


# --- the stage ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ocr_data(tmp_path_factory) -> Path:
    """train.csv (64 lines of 10 short texts), val.csv (10 lines), rendered in DejaVu Sans."""
    d = tmp_path_factory.mktemp("ocr")
    (d / "img").mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 64), ("val", 10)]:
        rows = []
        for i in range(n):
            text = WORDS[i % len(WORDS)]
            builtin.render_line(text, FONT, rng, degraded=i % 3 == 0).save(d / "img" / f"{split}_{i}.png")
            rows.append((f"img/{split}_{i}.png", text))
        builtin.write_csv(d / f"{split}.csv", rows)
    return d


def ocr_config(data: Path, save_dir: Path, **over) -> str:
    cfg = {"save_dir": str(save_dir), "train_csv": str(data / "train.csv"), "val_csvs": [str(data / "val.csv")],
           "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "max_steps": 24, "print_freq": 1, "val_freq": 12,
           "checkpoint_freq": 4, "val_batch_size": 16,
           "model": {"channels": 8, "d_model": 32, "enc_layers": 1, "dec_layers": 1, "n_heads": 4, "d_ff": 64}}
    cfg.update(over)
    path = save_dir.parent / f"{save_dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def reference(ocr_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("ocr_ref") / "run"
    r = run_script(["train_ocr.py", "--config", ocr_config(ocr_data, save)])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


def test_trains_validates_and_writes_a_loadable_reader(reference, ocr_data):
    train = metrics(reference)
    assert train[-1]["loss"] < train[0]["loss"] and "ctc" in train[-1]
    val = metrics(reference, "val")[-1]
    for k in ("val/cer", "val/wer", "val/line_acc", "val/ctc_cer", "val/n"):
        assert k in val, (k, val)
    a = load_artifact(reference / "ocr.pt", "ocr")
    assert a.vocab.chars == builtin.PRINTABLE and a.model.cfg.image_height == 32
    log = (reference / "training.log").read_text()
    assert "train: 64 of 64 lines" in log and "val | ref:" in log


def test_cli_and_evaluate_script(reference, ocr_data):
    img = ocr_data / "img" / "val_0.png"
    r = run_script(["-m", "omni.ocr", "--ckpt", str(reference / "ocr.pt"), str(img)])
    assert r.returncode == 0, r.stderr[-2000:]
    path, _, text = r.stdout.rstrip("\n").partition("\t")
    assert path == str(img)
    r = run_script(["scripts/evaluate.py", "ocr", "--ckpt", str(reference / "ocr.pt"), "--data",
                    str(ocr_data / "val.csv")])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["n"] == 10 and {"cer", "wer", "line_acc"} <= set(m)
    r = run_script(["-m", "omni.ocr", "--ckpt", str(reference / "ocr.pt"), str(ocr_data / "nope.png")])
    assert r.returncode == 1 and "nope.png" in r.stderr and "Traceback" not in r.stderr


def test_a_short_run_reads_its_lines_and_lines_twice_as_long(tmp_path):
    """600 steps on 64 random strings of 3-8 letters (DejaVu Sans Mono): the training lines are read back, and
    lines of 16 letters, twice the longest trained, are read without a loop (no reading over 1.5 x its line)
    and mostly right, where the decoder alone stops near the lengths it trained on."""
    mono = FONT.with_name("DejaVuSansMono.ttf")
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(64):
        text = "".join(rng.choice(list("abcdef"), int(rng.integers(3, 9))))
        builtin.render_line(text, mono, rng, degraded=False).save(tmp_path / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", text))
    builtin.write_csv(tmp_path / "train.csv", rows)
    model = {"channels": 8, "d_model": 32, "enc_layers": 1, "dec_layers": 1, "n_heads": 4, "d_ff": 64, "dropout": 0.0}
    cfg = ocr_config(tmp_path, tmp_path / "run", val_csvs=[], max_steps=600, val_freq=1000, checkpoint_freq=1000,
                     print_freq=100, model=model)
    run(OCRStage, ["--config", cfg])
    a = load_artifact(tmp_path / "run" / "ocr.pt", "ocr")
    lines, refs = [tmp_path / p for p, _ in rows], [t for _, t in rows]
    torch.manual_seed(0)
    untrained = OCRModel(a.model.cfg).eval()
    trained_cer = cer(refs, read_lines(a.model, a.vocab, lines))
    untrained_cer = cer(refs, read_lines(untrained, a.vocab, lines))
    assert trained_cer <= 0.15 and untrained_cer >= 0.9, (trained_cer, untrained_cer)
    longs = ["".join(rng.choice(list("abcdef"), 16)) for _ in range(8)]
    images = [builtin.render_line(t, mono, rng, degraded=False) for t in longs]
    hyps = read_lines(a.model, a.vocab, images)
    alone = read_lines(a.model, a.vocab, images, decoding="greedy")
    assert max(len(h) / len(r) for h, r in zip(hyps, longs)) <= 1.5, list(zip(longs, hyps))
    assert cer(longs, hyps) <= 0.4 < cer(longs, alone), (cer(longs, hyps), cer(longs, alone))


def test_sigkill_then_rerun_is_bitwise_identical(ocr_data, reference, tmp_path):
    save = tmp_path / "run"
    cmd = ["train_ocr.py", "--config", ocr_config(ocr_data, save)]
    assert kill_at(cmd, save, 9) < 24
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from ocr_step_" in (save / "training.log").read_text()
    assert_same_weights(final_weights(reference, "ocr"), final_weights(save, "ocr"))
    assert [m["loss"] for m in metrics(save)] == [m["loss"] for m in metrics(reference)]


def test_unreadable_long_and_unknown_lines_are_skipped_and_counted(ocr_data, tmp_path):
    rows = list(csv.reader(open(ocr_data / "train.csv")))[1:]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [(str(ocr_data / p), t) for p, t in rows] + [(str(tmp_path / "broken.png"), "red"),
                                                        (str(ocr_data / "img/train_0.png"), "é"),
                                                        (str(ocr_data / "img/train_1.png"), "x" * 40)]
    builtin.write_csv(tmp_path / "train.csv", rows)
    cfg = ocr_config(ocr_data, tmp_path / "a", train_csv=str(tmp_path / "train.csv"), max_steps=2,
                     max_bad_fraction=0.05, model={"channels": 8, "d_model": 32, "enc_layers": 1, "dec_layers": 1,
                                                   "n_heads": 4, "d_ff": 64, "max_text_length": 30})
    r = run_script(["train_ocr.py", "--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "a" / "training.log").read_text()
    assert "train: 64 of 67 lines" in log and "1 unreadable, 1 over max_text_length 30, 1 with characters" in log
    r = run_script(["train_ocr.py", "--config", ocr_config(ocr_data, tmp_path / "b", train_csv=str(tmp_path /
                                                                                                   "train.csv"))])
    assert r.returncode != 0 and "unreadable, over max_bad_fraction" in r.stderr


def test_a_mismatched_or_foreign_checkpoint_is_an_error(reference, tmp_path):
    art = torch.load(reference / "ocr.pt", weights_only=True)
    art["model_config"]["d_model"] = 48
    torch.save(art, tmp_path / "ocr.pt")
    with pytest.raises(RuntimeError, match="ocr.pt: weights do not match"):
        load_artifact(tmp_path / "ocr.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_artifact(tmp_path / "nothing.pt", "ocr")


# --- the MJSynth converter ------------------------------------------------------------------------------------

def test_prepare_mjsynth_reads_words_from_file_names(tmp_path, capsys):
    mj = load_script("prepare_mjsynth")
    root = tmp_path / "90kDICT32px"
    for i, rel in enumerate(["1/1/10_Hello_123.jpg", "1/2/7_world_9.jpg", "2/1/3_x_y_z_4.jpg"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60 + i, 32), "white").save(root / rel)
    (root / "2/2").mkdir(parents=True)
    (root / "2/2/5_empty_1.jpg").write_bytes(b"")   # MJSynth ships a few zero-byte files
    (root / "annotation_train.txt").write_text("./1/1/10_Hello_123.jpg 123\n./1/2/7_world_9.jpg 9\n"
                                               "./2/1/3_x_y_z_4.jpg 4\n./2/2/5_empty_1.jpg 1\n./3/1/1_gone_2.jpg 2\n")
    out = tmp_path / "ocr" / "train.csv"
    with pytest.raises(sys.modules["convert_common"].ConversionError, match="2 of 5 samples skipped"):
        mj.convert(root, "annotation_train.txt", out)
    s = mj.convert(root, "annotation_train.txt", out, max_skip_fraction=0.5)
    assert s == {"rows": 3, "skipped": 2}
    rows = list(csv.DictReader(open(out)))
    assert [r["text"] for r in rows] == ["Hello", "world", "x_y_z"]
    assert (out.parent / rows[0]["image"]).resolve() == (root / "1/1/10_Hello_123.jpg").resolve()
    err = capsys.readouterr().err
    assert "unreadable image" in err and "missing image" in err
    assert mj.convert(root, "annotation_train.txt", out, limit=1, max_skip_fraction=0.5)["rows"] == 1


def test_trains_on_the_gpu_path(ocr_data, tmp_path):
    """With inductor's kernels: lines of varying widths once broke its lowering of the convolutions."""
    save = tmp_path / "run"
    assert_trains_on_the_gpu_path(["train_ocr.py", "--config", ocr_config(ocr_data, save)], save, ("ocr.pt",),
                                  backend="inductor")
