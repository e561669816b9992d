"""Stage C: ViT shapes, the retrieval metric, caption-safe augmentation, both text sides, a tokenizer
trained from captions, evaluate.py, and exact resume — on a few Pillow-drawn images built here."""
from __future__ import annotations

import json
import random
import shutil
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import assert_same_weights, assert_trains_on_the_gpu_path, final_weights, metrics, run_script
from omni.artifacts import FORMAT, load_artifact
from omni.config import to_dict
from omni.data.images import AugmentConfig, augment, decode_image, read_manifest
from omni.metrics import retrieval_metrics
from omni.models.thinker import Thinker, ThinkerConfig
from omni.models.vision import (CaptionDecoderConfig, ClipConfig, ClipModel, TextSideConfig, ViTConfig, VisionEncoder,
                                clip_loss)
from omni.tokenizer import EOS, Tokenizer
from omni.train.engine import run
from train_vision import VisionStage

COLOURS = {"red": (220, 35, 35), "blue": (35, 75, 225), "green": (30, 165, 60)}


def draw(colour: str, shape: str, side: str, r: random.Random, size: int = 32) -> Image.Image:
    im = Image.new("RGB", (size, size), (128, 128, 128))
    cx = (0.27 if side == "left" else 0.73) * size + r.uniform(-1.5, 1.5)
    cy, rad = size / 2 + r.uniform(-1.5, 1.5), 0.18 * size
    box = (cx - rad, cy - rad, cx + rad, cy + rad)
    (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=COLOURS[colour])
    return im


def write_split(folder, name: str, n: int, seed: int) -> str:
    r = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c, s, p = r.choice(list(COLOURS)), r.choice(["circle", "square"]), r.choice(["left", "right"])
        rel = f"img/{name}_{i:03d}.png"
        draw(c, s, p, r).save(folder / rel)
        rows.append({"image": rel, "caption": f"a {c} {s} on the {p}"})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / f"{name}.jsonl")


@pytest.fixture(scope="module")
def image_data(text_data, tmp_path_factory):
    """train.jsonl (48 rows) and val.jsonl (20 rows; 12 possible captions, so duplicates) of 32 px scenes,
    and a tiny Thinker artifact with its tokenizer.model beside it (the conftest tokenizer knows the words)."""
    d = tmp_path_factory.mktemp("images")
    write_split(d, "train", 48, seed=1)
    write_split(d, "val", 20, seed=2)
    (d / "thinker").mkdir()
    shutil.copy(text_data / "tokenizer.model", d / "thinker" / "tokenizer.model")
    tok = Tokenizer(d / "thinker" / "tokenizer.model")
    torch.manual_seed(0)
    cfg = ThinkerConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64,
                        ctx_len=32)
    torch.save({"kind": "thinker", "format": FORMAT, "config": {},
                "model": Thinker(cfg).state_dict(), "model_config": to_dict(cfg),
                "tokenizer": torch.frombuffer(bytearray(tok.model_proto), dtype=torch.uint8)},
               d / "thinker" / "thinker.pt")
    return d


def vision_config(data, save_dir, **overrides) -> str:
    cfg = {
        "save_dir": str(save_dir), "train_file": str(data / "train.jsonl"), "val_file": str(data / "val.jsonl"),
        "thinker_ckpt": str(data / "thinker" / "thinker.pt"), "batch_size": 8, "lr": 3e-3, "warmup_steps": 2,
        "max_steps": 8, "print_freq": 1, "val_freq": 4, "checkpoint_freq": 3, "val_batch_size": 16,
        "caption_vocab_size": 300,
        "model": {"vision": {"image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 2,
                             "d_ff": 64},
                  "text": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 32},
                  "embed_dim": 16},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path = save_dir.parent / f"{save_dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


def retrieval_of(model, tok, manifest) -> dict:
    """retrieval_metrics of a ClipModel on a manifest, embedding each image and caption here, one at a time."""
    rows = read_manifest(manifest)
    index = {c: i for i, c in enumerate(sorted({c for _, c in rows}))}
    pixels = torch.from_numpy(np.stack([decode_image(p, model.cfg.vision.image_size) for p, _ in rows])) / 255
    with torch.no_grad():
        img = torch.cat([model.encode_image(x[None]) for x in pixels])
        txt = torch.cat([model.encode_text(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
                         for ids in (tok.encode(c) + [EOS] for _, c in rows)])
    return retrieval_metrics(img, txt, [index[c] for _, c in rows])


def test_vit_shapes_and_unit_embeddings():
    torch.manual_seed(0)
    enc = VisionEncoder(ViTConfig(image_size=32, patch_size=8, d_model=48, n_layers=2, n_heads=2, d_ff=96))
    cls, patches = enc(torch.rand(3, 3, 32, 32))
    assert cls.shape == (3, 48) and patches.shape == (3, 16, 48)
    with pytest.raises(ValueError, match="expected 32x32"):
        enc(torch.rand(1, 3, 16, 16))
    cfg = ClipConfig(vision=ViTConfig(32, 8, 48, 2, 2, 96), text=TextSideConfig(32, 1, 2, 64, 12, vocab_size=50),
                     embed_dim=24)
    model = ClipModel(cfg)
    ids, mask = torch.randint(0, 50, (3, 7)), torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    img, txt = model.encode_image(torch.rand(3, 3, 32, 32)), model.encode_text(ids, mask)
    assert img.shape == txt.shape == (3, 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    # padding never changes a caption's embedding
    assert torch.allclose(txt[1], model.encode_text(ids[1:2, :4], mask[1:2, :4])[0], atol=1e-5)
    assert abs(float(model.scale().detach()) - 1 / 0.07) < 1e-3
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert abs(float(model.scale().detach()) - 100.0) < 1e-3  # clamped


def test_the_caption_decoder_can_write_a_share_of_the_batch():
    """caption_rows=k: the caption loss is that of the first k rows alone (their own padding, not the batch's);
    the contrastive loss still sees every row."""
    torch.manual_seed(0)
    cfg = ClipConfig(vision=ViTConfig(32, 8, 48, 2, 2, 96), text=TextSideConfig(32, 1, 2, 64, 12, vocab_size=50),
                     caption=CaptionDecoderConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32, vocab_size=50),
                     embed_dim=24)
    model = ClipModel(cfg).eval()
    images, ids = torch.rand(4, 3, 32, 32), torch.randint(4, 50, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[0, 5:] = mask[1, 6:] = False        # the first two captions are short: the rest of the batch pads them
    full, half = model(images, ids, mask), model(images, ids, mask, caption_rows=2)
    alone = model(images[:2], ids[:2, :6], mask[:2, :6])
    assert half["caption_loss"].item() == pytest.approx(alone["caption_loss"].item(), abs=1e-5)
    assert half["caption_loss"].item() != pytest.approx(full["caption_loss"].item(), abs=1e-3)
    assert half["loss"].item() == pytest.approx(full["loss"].item(), abs=1e-6)

def test_conv_stem_keeps_the_token_grid_and_sees_a_shift_of_a_few_pixels():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, d_model=48, n_layers=1, n_heads=2, d_ff=96, stem="conv",
                    stem_channels=8)
    enc = VisionEncoder(cfg)
    cls, patches = enc(torch.rand(2, 3, 32, 32))
    assert cls.shape == (2, 48) and patches.shape == (2, 16, 48)
    stem = enc.patch_embed   # translation equivariant away from the border: a shift by its stride moves its
    x = torch.zeros(1, 3, 32, 32)   # output by one cell
    x[..., 12:18, 12:18] = 1.0
    with torch.no_grad():
        a, b = stem(x), stem(torch.roll(x, (8, 8), (2, 3)))
    torch.testing.assert_close(a[..., 1, 1], b[..., 2, 2])
    assert not torch.allclose(a[..., 1, 1], a[..., 2, 2])
    for bad, match in [(dict(stem="cnn"), "'patch' or 'conv'"), (dict(stem="conv", patch_size=2), "power-of-two")]:
        with pytest.raises(ValueError, match=match):
            VisionEncoder(ViTConfig(**{**vars(cfg), "image_size": 32, **bad}))


def test_retrieval_metric_on_hand_made_embeddings_with_duplicate_captions():
    e = torch.eye(4)
    # rows 0 and 1 share a caption; row 1's image points at row 0's text: the same caption, so correct
    img = torch.stack([e[0], e[0], e[2], e[1]])
    txt = torch.stack([e[0], e[0], e[2], e[3]])
    m = retrieval_metrics(img, txt, [7, 7, 8, 9], group=32)
    assert m["n"] == 4 and m["n_captions"] == 3
    # row 3's image (e1) matches no caption better than the others: every caption ties at 0 → a miss
    assert m["i2t_top1"] == 0.75 and m["i2t_top5"] == 1.0
    assert m["t2i_top1"] == pytest.approx(2 / 3)       # caption 9's text (e3) matches no image
    assert m["i2t_top1_in32"] == 0.75                  # fewer than 32 pairs: one group of all
    # a collapsed model scores nothing, not everything
    flat = retrieval_metrics(torch.ones(6, 3), torch.ones(6, 3), [0, 1, 2, 3, 4, 5])
    assert flat["i2t_top1"] == flat["t2i_top1"] == flat["i2t_top1_in32"] == 0.0
    # groups: 64 perfectly matched pairs with distinct captions, in two groups of 32
    g = torch.nn.functional.normalize(torch.randn(64, 32), dim=-1)
    assert retrieval_metrics(g, g, list(range(64)))["i2t_top1_in32"] == 1.0


def test_clip_loss_treats_duplicate_captions_like_a_spread_target():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1).requires_grad_()
    txt = t[[0, 0, 1, 2]]   # rows 0 and 1: one caption, so one embedding (and one gradient, summed)
    loss = clip_loss(img, txt, torch.tensor(10.0))
    same = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float)
    logits = 10.0 * img @ txt.t()
    spread = 0.5 * (torch.nn.functional.cross_entropy(logits, same / same.sum(1, keepdim=True)) +
                    torch.nn.functional.cross_entropy(logits.t(), same / same.sum(1, keepdim=True)))
    g1 = torch.autograd.grad(loss, (img, t), retain_graph=True)
    g2 = torch.autograd.grad(spread, (img, t))
    assert torch.allclose(loss, spread) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_hard_negatives_are_extra_wrong_texts_for_each_image():
    torch.manual_seed(0)
    img, txt = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    scale = torch.tensor(10.0)
    assert torch.equal(clip_loss(img, txt, scale, None), clip_loss(img, txt, scale))
    far = -img[:1]                       # a negative no image is near adds almost nothing
    near = img[:2].clone()               # negatives that match images 0 and 1 best raise the loss
    base = clip_loss(img, txt, scale)
    assert clip_loss(img, txt, scale, far) == pytest.approx(float(base), abs=0.05)
    assert clip_loss(img, txt, scale, near) > base + 0.5


def test_hard_negatives_come_from_the_manifest_into_training(image_data, tmp_path):
    from omni.builtin import world
    rows = [json.loads(line) for line in (image_data / "train.jsonl").read_text().splitlines()]
    for row in rows:   # the shape word swapped: "a red circle on the left" -> "a red square on the left"
        c, s, p = row["caption"].split()[1:4]
        row["negatives"] = [row["caption"].replace(s, "square" if s == "circle" else "circle")]
    data = tmp_path / "neg"
    shutil.copytree(image_data / "img", data / "img")
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(image_data / "val.jsonl", data / "val.jsonl")
    save = tmp_path / "run"
    cfg = vision_config(image_data, save, train_file=str(data / "train.jsonl"), val_file=str(data / "val.jsonl"),
                        max_steps=3, val_freq=100)
    run(VisionStage, ["--config", cfg])
    assert "hard negatives: 48 training rows" in (save / "training.log").read_text()
    assert all(np.isfinite(r["loss"]) for r in metrics(save))
    # a batch carries one negative per row that has any
    from omni.data.images import CaptionedImages

    class Pixels:
        paths = ["a", "b", "c"]

        def get(self, i):
            return np.full((3, 8, 8), 40 * i, dtype=np.uint8)
    toks = [[5, 6], [5, 7, 8], [9], [9, 10]]   # caption ids 0..3; 2 and 3 are only negatives
    stream = CaptionedImages(Pixels(), np.array([0, 1, 2]), [toks[0], toks[1], toks[0]], np.array([0, 1, 0]), 3,
                             negatives=[[2], [], [3, 2]], caption_tokens=toks, features=torch.randn(4, 3, 5))
    b = stream.collate([stream.load(i, np.random.default_rng(i)) for i in range(3)])
    assert b["has_neg"].tolist() == [True, False, True] and b["neg_ids"].shape[0] == 2
    assert b["neg_ids"][0].tolist()[:1] == [9] and b["neg_features"].shape[:2] == b["neg_ids"].shape
    # the world's negatives: one shape and one colour changed, and with two shapes or more two objects'
    # shapes swapped; never the true caption, never a held-out one
    rng = np.random.default_rng(0)
    counts, swaps = [], 0
    for _ in range(200):
        scene = world.sample_split_scene(rng, held_out=False)
        negs = world.hard_negatives(scene, rng)
        counts.append(len(negs))
        assert world.caption(scene) not in negs and not any(world.is_held_out(n) for n in negs)
        if len({o.shape for o in scene.objects}) < 2:
            assert len(negs) <= 2
        elif len(negs) == 3:  # the swap: the same words in another order, shapes moved between places
            swaps += 1
            assert sorted(negs[2].split()) == sorted(world.caption(scene).split())
    assert min(counts) >= 1 and sum(c >= 2 for c in counts) > 0.95 * len(counts) and swaps > 50


def test_augmentation_keeps_colours_and_sides():
    left_red = torch.zeros(3, 32, 32)
    left_red[:, :, :] = 0.5
    left_red[0, :, :12], left_red[1:, :, :12] = 0.86, 0.14
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(left_red, rng, AugmentConfig())
        left, right = out[:, :, :8].mean((1, 2)), out[:, :, -8:].mean((1, 2))
        assert left[0] > 0.7 and left[1] < 0.3 and left[2] < 0.3, "the left stays red"
        assert (right - 0.5).abs().max() < 0.1, "the right stays grey"
    same = augment(left_red, np.random.default_rng(1), AugmentConfig())
    assert torch.equal(same, augment(left_red, np.random.default_rng(1), AugmentConfig()))


@pytest.mark.parametrize("use_thinker", [True, False], ids=["frozen-thinker", "embedding"])
def test_both_text_sides_train_and_load(image_data, tmp_path, use_thinker):
    save = tmp_path / "run"
    # the embedding run also decodes its training images in the loader instead of caching them
    run(VisionStage, ["--config", vision_config(image_data, save, use_thinker_for_text=use_thinker,
                                                cache_pixels=use_thinker, max_steps=2, val_freq=100)])
    log = (save / "training.log").read_text()
    assert ("frozen Thinker" in log) == use_thinker
    assert "training a" not in log  # the tokenizer beside thinker.pt is used
    train = metrics(save)
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    val = metrics(save, "val")[-1]
    state = torch.load(save / "vision.pt", weights_only=True)
    assert (state["thinker_config"] is not None) == use_thinker
    assert any(p.name.startswith("pixels_train") for p in (save / "cache").iterdir()) == use_thinker
    a = load_artifact(save / "vision.pt", "vision")
    model, tok = a.model, a.tokenizer
    cls, patches = model.vision(torch.rand(2, 3, 16, 16))
    assert cls.shape == (2, 32) and patches.shape == (2, 16, 32)
    frozen = [n for n, p in model.named_parameters() if n.startswith("text.thinker.")]
    assert bool(frozen) == use_thinker
    # a frozen-Thinker text side standardises its states with statistics of the training captions, saved
    std = getattr(model.text, "feature_std", None)
    assert (std is not None and not torch.equal(std, torch.ones_like(std))) == use_thinker
    ids = tok.encode("a red circle on the left")
    t = model.encode_text(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
    assert t.shape == (1, 16)
    # the run's validation scores the model it saved: the same figures from embeddings made here, row by row
    again = retrieval_of(model, tok, image_data / "val.jsonl")
    for k in ("i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5", "i2t_top1_in32"):
        assert val[k] == pytest.approx(again[k]), (k, val[k], again[k])


SOLID = {"red": (220, 35, 35), "green": (30, 165, 60), "blue": (35, 75, 225), "yellow": (235, 215, 40),
         "black": (20, 20, 20), "white": (240, 240, 240)}


def write_solid_split(folder, name: str, per_colour: int, seed: int) -> str:
    """Solid-colour 16 px images (each pixel jittered), captioned by their colour's name alone."""
    r = np.random.default_rng(seed)
    (folder / "solid").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(per_colour):
        for colour, rgb in SOLID.items():
            pixels = np.clip(np.array(rgb) + r.integers(-12, 13, 3) + r.integers(-6, 7, (16, 16, 3)), 0, 255)
            rel = f"solid/{name}_{colour}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / rel)
            rows.append({"image": rel, "caption": colour})
    r.shuffle(rows)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / f"{name}.jsonl")


def test_learns_to_match_colours_and_names(image_data, tmp_path):
    """Six colours, each image captioned by its colour's name: a few dozen steps of Stage C retrieve the right
    name for nearly every held-out image, where chance is 1/6."""
    train = write_solid_split(tmp_path, "train", 8, seed=1)                  # 48 images
    val = write_solid_split(tmp_path, "val", 3, seed=2)                      # 18, three per name
    save = tmp_path / "run"
    run(VisionStage, ["--config", vision_config(image_data, save, train_file=train, val_file=val,
                                                use_thinker_for_text=False, max_steps=40, val_freq=40,
                                                checkpoint_freq=1000)])
    losses = [r["loss"] for r in metrics(save)]
    assert len(losses) == 40 and losses[-1] < losses[0]
    v = metrics(save, "val")[-1]
    assert v["step"] == 40 and v["n"] == 18 and v["n_captions"] == 6
    assert v["i2t_top1"] >= 0.8 and v["t2i_top1"] >= 0.8, v               # chance: 1/6


def test_missing_tokenizer_is_trained_from_captions(image_data, tmp_path):
    save = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    cfg = vision_config(image_data, save, use_thinker_for_text=False, max_steps=1, val_freq=100,
                        thinker_ckpt=str(tmp_path / "empty" / "thinker.pt"))
    run(VisionStage, ["--config", cfg])
    log = (save / "training.log").read_text()
    assert "no tokenizer found" in log and "on the captions of" in log
    assert (save / "tokenizer.model").exists() and (save / "vision.pt").exists()
    # a rerun (here with more steps) reuses the tokenizer it trained rather than training another
    run(VisionStage, ["--config", cfg, "--set", "max_steps=2"])
    assert (save / "training.log").read_text().count("no tokenizer found") == 1
    run(VisionStage, ["--config", cfg, "--fresh"])  # ... and --fresh trains it again
    assert (save / "training.log").read_text().count("no tokenizer found") == 2


def test_evaluate_prints_retrieval_json(image_data, tmp_path, capsys):
    import sys
    sys.path.insert(0, str(__import__("conftest").ROOT / "scripts"))
    import evaluate
    save = tmp_path / "run"
    run(VisionStage, ["--config", vision_config(image_data, save, max_steps=1, val_freq=100)])
    capsys.readouterr()
    assert evaluate.main(["vision", "--ckpt", str(save / "vision.pt"), "--data", str(image_data / "val.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 20
    a = load_artifact(save / "vision.pt", "vision")
    again = retrieval_of(a.model, a.tokenizer, image_data / "val.jsonl")
    for k in ("i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5", "i2t_top1_in32"):
        assert out[k] == pytest.approx(again[k]), (k, out[k], again[k])
    # the same numbers as the run's own validation (which used cached Thinker states)
    val = metrics(save, "val")[-1]
    assert out["i2t_top5"] == val["i2t_top5"] and abs(out["loss"] - val["loss"]) < 1e-4


def test_resume_continues_exactly(image_data, tmp_path):
    from conftest import kill_at
    ref = tmp_path / "ref"
    # with a caption decoder whose parallel rows are drawn from the global RNG at every step
    caption = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "parallel": 0.5}
    r = run_script(["train_vision.py", "--config", vision_config(image_data, ref, max_steps=12,
                                                                 **{"model.caption": caption})])
    assert r.returncode == 0, r.stderr[-3000:]
    save = tmp_path / "run"
    cmd = ["train_vision.py", "--config", vision_config(image_data, save, max_steps=12, **{"model.caption": caption})]
    killed_at = kill_at(cmd, save, 4)
    assert killed_at < 12 and not (save / "vision.pt").exists(), "the run finished before the kill"
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from vision_step_" in (save / "training.log").read_text()
    assert_same_weights(final_weights(ref, "vision"), final_weights(save, "vision"))
    assert [(m["step"], m["loss"], m["caption_loss"]) for m in metrics(save)] == \
        [(m["step"], m["loss"], m["caption_loss"]) for m in metrics(ref)]


def write_world_split(folder, name: str, n: int, seed: int, size: int = 32) -> str:
    """n built-in world scenes (1-3 shapes at five places) rendered at `size` px, with canonical captions."""
    from omni.builtin import world
    rng = np.random.default_rng(seed)
    (folder / "world").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = world.sample_scene(rng)
        rel = f"world/{name}_{i:03d}.png"
        world.render(scene, size).save(folder / rel)
        rows.append({"image": rel, "caption": world.caption(scene)})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / f"{name}.jsonl")


def bag_f1(ref: str, hyp: str) -> float:
    """F1 of the words two strings share, counted with multiplicity (0 when they share none)."""
    common = sum((Counter(ref.split()) & Counter(hyp.split())).values())
    return 2 * common / (len(ref.split()) + len(hyp.split())) if common else 0.0


def test_caption_decoder_learns_and_the_probes_run(image_data, tmp_path, capsys):
    """The caption decoder's loss over world scenes falls well below where it starts; validation fits the
    probes on training scenes and reports them for the world split; the decoder travels in vision.pt and
    writes captions there."""
    train = write_world_split(tmp_path, "train", 64, seed=1)
    val = write_world_split(tmp_path, "val", 24, seed=2)
    save = tmp_path / "run"
    caption = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64}
    run(VisionStage, ["--config", vision_config(
        image_data, save, train_file=train, val_file=val, max_steps=60, val_freq=60, checkpoint_freq=1000, lr=6e-3,
        probe_scenes=48, probe_tokens=4, use_thinker_for_text=False,   # world captions pass the tiny Thinker's ctx
        **{"model.caption": caption, "model.vision.image_size": 32, "model.vision.patch_size": 8,
           "model.text.max_len": 96})])
    rows = metrics(save)
    first, last = rows[0]["caption_loss"], np.mean([r["caption_loss"] for r in rows[-5:]])
    assert last < 0.6 * first, (first, last)
    assert all(abs(r["loss"] - r["clip_loss"] - r["caption_loss"]) < 1e-4 for r in rows)  # caption_weight 1
    v = metrics(save, "val")[-1]
    assert {"probe_shape", "probe_colour", "probe_count"} <= set(v), v
    assert "probes: fit on 48 training scenes" in (save / "training.log").read_text()
    art = load_artifact(save / "vision.pt", "vision")
    model = art.model
    out = model.describe(torch.rand(2, 3, 32, 32), max_len=6)
    assert len(out) == 2 and all(len(ids) <= 6 for ids in out)
    assert set(sum(out, [])) <= set(model.captioner.token_ids.tolist())   # tokenizer ids it was built with
    sys.path.insert(0, str(__import__("conftest").ROOT / "scripts"))
    import evaluate                       # the probes and the captions on a world split, fit on the run's train_file
    capsys.readouterr()
    assert evaluate.main(["vision", "--ckpt", str(save / "vision.pt"), "--data", val]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probe_train_scenes"] == 48
    # the caption scores are those of the model's own greedy captions, scored here
    rows = read_manifest(val)
    pixels = torch.from_numpy(np.stack([decode_image(p, 32) for p, _ in rows])) / 255
    with torch.no_grad():
        said = [" ".join(art.tokenizer.decode(ids).split()) for ids in model.describe(pixels)]
    assert out["caption_word_f1"] == pytest.approx(np.mean([bag_f1(c, h) for (_, c), h in zip(rows, said)]))
    assert out["caption_exact"] == pytest.approx(np.mean([c == h for (_, c), h in zip(rows, said)]))
    assert out["probe_shape"] == v["probe_shape"], (out["probe_shape"], v["probe_shape"])


def test_probe_reads_what_features_hold_and_nothing_else():
    """Features that carry the scene (one-hot labels in noise) are read near perfectly; features that carry
    nothing score near the majority class."""
    from omni.builtin import world
    from omni.probe import probe_accuracy, scene_labels
    rng = np.random.default_rng(0)
    captions = [world.caption(world.sample_scene(rng)) for _ in range(400)]
    y = scene_labels(captions)
    assert scene_labels(["a watermelon"]) is None

    def informative(lab, seed):
        parts = [F.one_hot(torch.as_tensor(lab[k]), n).flatten(1).float() for k, n in
                 (("shape", len(world.SHAPES) + 1), ("colour", len(world.COLOURS) + 1))]
        x = torch.cat(parts + [F.one_hot(torch.as_tensor(lab["count"]), 3).float()], 1)
        return x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    split = {k: v[:300] for k, v in y.items()}, {k: v[300:] for k, v in y.items()}
    good = probe_accuracy(informative(split[0], 1), split[0], informative(split[1], 2), split[1])
    assert min(good.values()) > 0.95, good
    noise = torch.randn(400, 64, generator=torch.Generator().manual_seed(2))
    bad = probe_accuracy(noise[:300], split[0], noise[300:], split[1])
    assert bad["shape"] < 0.35 and bad["colour"] < 0.3, bad      # chance: 1/6 and 1/8


def test_trains_on_the_gpu_path(image_data, tmp_path):
    save = tmp_path / "run"
    config = vision_config(image_data, save, **{"model.caption": {"n_layers": 1, "d_model": 32, "n_heads": 2,
                                                                  "d_ff": 64}})
    assert_trains_on_the_gpu_path(["train_vision.py", "--config", config], save, ("vision.pt",))
