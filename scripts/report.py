#!/usr/bin/env python
"""Write runs/demo/report.md: one metrics table against the demo targets, and loss curves as PNG.

    python scripts/report.py [--runs runs/demo]

Reads the JSON objects scripts/evaluate.py wrote into <runs>/eval/ (scripts/demo.sh does that), the stage
times in <runs>/eval/times.json, and every <runs>/<stage>/metrics.jsonl for the curves.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (stage, what is measured, eval file stem, key, "<" or ">", target; None: reported, no target). Stages add
# their rows here.
TARGETS = [
    ("A", "bits per byte, held-out real English (val.txt)", "text_val", "bits_per_byte", "<", 1.8),
    ("A", "perplexity, held-out world sentences (world_val.txt)", "text_world_val", "perplexity", "<", 10.0),
    ("B", "WER (beam search with the character LM), world sentences by held-out voices (test_world)",
     "asr_test_world", "wer", "<", 0.15),
    ("B", "CER, English sentences by held-out voices (test_english)", "asr_test_english", "cer", "<", 0.40),
    ("C", "image→text top-1 within random groups of 32, held-out world scenes (test_world)", "vision_test_world",
     "i2t_top1_in32", ">", 0.90),
    ("C", "image→text top-1 over the whole held-out world split (test_world)", "vision_test_world", "i2t_top1", ">",
     0.50),
    ("D", "codec reconstruction MSE, normalised log-mel, held-out world sentences", "tts_test_world", "recon_mse",
     "<", 0.05),
    ("D", "lowest codebook usage perplexity / codebook size (codec), held-out world sentences", "tts_test_world",
     "usage_min_fraction", ">", 0.5),
    ("D", "Talker code perplexity (teacher-forced), held-out world sentences", "tts_test_world", "code_perplexity",
     "<", 15.0),
    ("D", "round-trip WER: Talker speech of held-out world sentences, transcribed by Stage B", "tts_test_world",
     "roundtrip_wer", "<", 0.30),
    ("E", "accuracy, held-out image and spoken questions (test.jsonl: unseen scenes and voices)", "sft_test",
     "overall", ">", 0.60),
    *[("E", f"accuracy, image question: {t}", "sft_test", f"tasks.{t}.accuracy", ">=", 0.60)
      for t in ("colour", "count", "position", "shape", "yesno")],
    *[("E", f"accuracy, spoken question: {t}", "sft_test", f"tasks.spoken_{t}.accuracy", ">=", 0.40)
      for t in ("colour", "count", "position", "shape", "yesno")],
    ("E", "transcription WER, held-out world sentences by held-out voices", "sft_test",
     "tasks.transcribe_world.wer", "<", 0.30),
    ("E", "image questions with the images shuffled among rows: share of the accuracy's margin over the "
     "answer prior lost", "sft_test", "grounding.images.lost", ">=", 0.5),
    ("OCR", "character error rate, held-out lines, clean (test_clean)", "ocr_test_clean", "cer", "<", 0.05),
    ("OCR", "character error rate, held-out lines, degraded (test_degraded)", "ocr_test_degraded", "cer", "<", 0.15),
    ("OCR", "character error rate, held-out lines of 40-64 characters (test_long)", "ocr_test_long", "cer", "<", 0.05),
    ("OCR", "character error rate, held-out lines in a type family never trained on (test_font: Charis SIL)",
     "ocr_test_font", "cer", "<", 0.10),
    *[("OCR", f"longest reading over its line's length ({split})", f"ocr_{split}", "max_len_ratio", "<=", 1.5)
      for split in ("test_clean", "test_degraded", "test_long", "test_font")],
]
# The vocoder against Griffin-Lim on the same held-out mels (vocoder_test_world.json): (what, key, op), the
# vocoder's figure must be `op` Griffin-Lim's; and the Talker's speech through each (tts_test_world.json).
VOCODER_VS_GL = [(f"{what} from {src} mels", f"{prefix}{key}", op)
                 for prefix, src in (("", "true"), ("codec_", "codec"))
                 for what, key, op in (("log-mel L1", "mel_l1", "<"), ("multi-resolution STFT distance", "mr_stft", "<"),
                                       ("round-trip WER", "wer", "<="), ("wideband PESQ", "pesq_wb", ">"),
                                       ("STOI", "stoi", ">"))]
PERCEPTUAL = ("pesq_wb", "stoi", "codec_pesq_wb", "codec_stoi")   # also against Griffin-Lim + the same rounds
MINUTES = {"A": ("thinker", 5), "B": ("audio_enc", 8), "C": ("vision", 5), "D": ("talker", 10),
           "Voc": ("vocoder", 6), "E": ("omni_sft", 6), "OCR": ("ocr", 6)}  # stage -> (times.json key, CPU-minute budget)


def lookup(result: dict, key: str):
    """result["a"]["b"] for key "a.b"; None when absent."""
    for part in key.split("."):
        if not isinstance(result, dict) or part not in result:
            return None
        result = result[part]
    return result


def meets(value: float, op: str, target: float) -> bool:
    return {"<": value < target, ">": value > target, ">=": value >= target, "<=": value <= target}[op]


def voice_rows(evals: Path) -> list[str]:
    """The Talker per voice (a Talker of several voices): its round trip and voice identity beside its original
    recordings'; and its open-vocabulary English in the default voice beside the original recordings'."""
    f = evals / "tts_test_world.json"
    voices = json.loads(f.read_text()).get("voices", {}) if f.exists() else {}
    rows = []
    for name, v in voices.items() if len(voices) > 1 else ():
        if "roundtrip_wer" in v:
            rows.append(f"| D | round-trip WER, voice {name} (its original recordings) | {v['roundtrip_wer']:.4g} "
                        f"({v['original_wer']:.4g}) | < 0.3 | {'yes' if v['roundtrip_wer'] < 0.3 else 'NO'} |")
        if "identity" in v:
            rows.append(f"| D | voice identity: share of the Talker's utterances in voice {name} named as it (its "
                        f"original recordings) | {v['identity']:.4g} ({v.get('original_identity', float('nan')):.4g})"
                        f" | >= 0.9 | {'yes' if v['identity'] >= 0.9 else 'NO'} |")
    f = evals / "tts_test_english.json"
    english = json.loads(f.read_text()) if f.exists() else {}
    if english.get("roundtrip_cer") is not None:
        rt, orig = english["roundtrip_cer"], english["original_cer"]
        rows.append(f"| D | round-trip CER, held-out general English, the default voice (its original recordings) | "
                    f"{rt:.4g} ({orig:.4g}) | <= original + 0.08 | {'yes' if rt <= orig + 0.08 else 'NO'} |")
    return rows


def vocoder_rows(evals: Path) -> list[str]:
    """The vocoder's figures beside Griffin-Lim's on the same held-out mels, and the Talker through each."""
    f = evals / "vocoder_test_world.json"
    if not f.exists():
        return []
    r = json.loads(f.read_text())
    voc, gl = r["vocoder"], r["griffinlim"]
    rows = []
    for what, key, op in VOCODER_VS_GL:
        if key in voc and key in gl:
            ok = meets(voc[key], op, gl[key])
            rows.append(f"| Voc | {what}, held-out world sentences: vocoder (Griffin-Lim) | {voc[key]:.4g} "
                        f"({gl[key]:.4g}) | {op} Griffin-Lim | {'yes' if ok else 'NO'} |")
        refined = r.get("griffinlim_refined", {})
        if key in PERCEPTUAL and key in voc and key in refined:
            ok = meets(voc[key], op, refined[key])
            rows.append(f"| Voc | {what}, held-out world sentences: vocoder (Griffin-Lim + its refinement rounds) | "
                        f"{voc[key]:.4g} ({refined[key]:.4g}) | {op} Griffin-Lim + rounds | {'yes' if ok else 'NO'} |")
    raw = r.get("vocoder_raw")
    if raw:   # the generator alone, before its mel-consistency iterations: reported, no target
        rows.append(f"| Voc | the generator alone (no refinement): log-mel L1 from true / codec mels, MR-STFT | "
                    f"{raw['mel_l1']:.4g} / {raw.get('codec_mel_l1', float('nan')):.4g}, {raw['mr_stft']:.4g} | "
                    f"(reported) | — |")
    rows.append(f"| Voc | real-time factor of synthesis on this machine (Griffin-Lim) | {voc['rtf']:.3g} ({gl['rtf']:.3g}) "
                f"| < 1 | {'yes' if voc['rtf'] < 1 else 'NO'} |")
    talker = evals / "tts_test_world.json"   # the Talker's speech through the vocoder, and the same codes through GL
    if talker.exists():
        t = json.loads(talker.read_text())
        v, g = t.get("roundtrip_wer"), t.get("roundtrip_griffinlim_wer")
        if v is not None and g is not None:
            rows.append(f"| Voc | round-trip WER of the Talker's speech through the vocoder (Griffin-Lim) | {v:.4g} "
                        f"({g:.4g}) | <= Griffin-Lim | {'yes' if v <= g else 'NO'} |")
    return rows


def curves(runs: Path, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for mfile in sorted(runs.glob("*/metrics.jsonl")):
        rows = [json.loads(l) for l in mfile.read_text().splitlines() if l.strip()]
        stages = sorted({r.get("stage") or mfile.parent.name for r in rows})  # a folder may hold two (codec + Talker)
        for stage in stages:
            mine = [r for r in rows if (r.get("stage") or mfile.parent.name) == stage]
            train = [(r["step"], r["loss"]) for r in mine if r.get("split") is None and r.get("loss") is not None]
            val = [(r["step"], r["loss"]) for r in mine if r.get("split") == "val" and r.get("loss") is not None]
            if not train:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(*zip(*train), label="train", lw=1)
            if val:
                ax.plot(*zip(*val), "o-", label="val")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss")
            ax.set_title(stage)
            ax.legend()
            fig.tight_layout()
            path = out / f"{stage}_loss.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def sft_details(path: Path) -> list[str]:
    """Stage E, every task of test.jsonl: its figure, with the images (and audio) shuffled, and the prior."""
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    img, aud, prior = r.get("shuffled_images", {}), r.get("shuffled_audio", {}), r.get("prior", {})
    out = ["", "## Stage E on test.jsonl, every task", "",
           "| task | n | metric | value | images shuffled | audio shuffled | answer prior |",
           "|---|---|---|---|---|---|---|"]

    def f(x):
        return "" if x is None else f"{x:.3g}"
    for task, m in r["tasks"].items():
        key = next(k for k in ("accuracy", "wer", "perplexity") if k in m)
        value = f(m[key]) + (f" (word F1 {f(m['word_f1'])})" if "word_f1" in m else "")
        out.append(f"| {task} | {m['n']} | {key} | {value} | {f(img.get(task))} | {f(aud.get(task))} | "
                   f"{f(prior.get(task))} |")
    out.append(f"| overall | | accuracy | {f(r['overall'])} | {f(img.get('overall'))} | | {f(prior.get('overall'))} |")
    for what, g in r.get("grounding", {}).items():
        label = {"images": "image questions", "audio": "spoken questions"}[what]
        out.append(f"| {label} | {g['n']} | accuracy | {f(g['accuracy'])} | "
                   f"{f(g['shuffled']) if what == 'images' else ''} | {f(g['shuffled']) if what == 'audio' else ''} "
                   f"| {f(g['prior'])} |")
    return out


def chat_rows(path: Path, runs: Path) -> list[str]:
    """The exported model asked in every mode (scripts/demo_chat.py's chat.json): reply, timings, wavs."""
    if not path.exists():
        return []
    out = ["", "## μOmni answers (infer_chat.py from a copy of the export)", "",
           "| mode | input | expected | reply | first token (s) | tokens/s | speech |", "|---|---|---|---|---|---|---|"]
    for r in json.loads(path.read_text()):
        res = r["result"]
        args = " ".join(a if not a.startswith(("data/", "runs/")) else Path(a).name for a in r["args"])
        speech = ""
        if res.get("audio_out"):
            wav = Path(res["audio_out"])
            rel = wav.relative_to(runs.resolve()) if wav.is_absolute() else wav
            speech = f"[{wav.name}]({rel}) {res['audio_s']:.1f} s, real-time factor {res['speech_rtf']:.3g}"
        first = res["time_to_first_token_s"]   # None: nothing generated (the OCR reading is the reply)
        out.append(f"| {r['mode']} | {args} | {r['expected'] or ''} | {res['reply']} | "
                   f"{'' if first is None else format(first, '.3g')} | {res.get('tokens_per_s') or ''} | {speech} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/demo")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    evals = runs / "eval"
    times = json.loads((evals / "times.json").read_text()) if (evals / "times.json").exists() else {}
    lines = ["# μOmni demo report", "", "| stage | metric | value | target | met |", "|---|---|---|---|---|"]
    for stage, what, stem, key, op, target in TARGETS:
        f = evals / f"{stem}.json"
        bar = "—" if target is None else f"{op} {target}"
        value = lookup(json.loads(f.read_text()), key) if f.exists() else None
        if value is None:
            lines.append(f"| {stage} | {what} | {'not measured' if f.exists() else 'not run'} | {bar} | |")
            continue
        met = "" if target is None else ("yes" if meets(value, op, target) else "NO")
        lines.append(f"| {stage} | {what} | {value:.4g} | {bar} | {met} |")
    lines += voice_rows(evals)
    lines += vocoder_rows(evals)
    for stage, (key, budget) in MINUTES.items():
        if key in times:
            minutes = times[key] / 60
            lines.append(f"| {stage} | training minutes | {minutes:.1f} | ≤ {budget} | "
                         f"{'yes' if minutes <= budget else 'NO'} |")
    samples = sorted((runs / "vocoder" / "samples").glob("*/*.wav"))
    if samples:
        lines += ["", "## Held-out sentences voiced by the vocoder and by Griffin-Lim (from true and codec mels)", ""]
        lines += [f"- [{p.parent.name}/{p.name}]({p.relative_to(runs)})" for p in samples]
    voiced = sorted((runs / "voices").glob("*.wav"))
    if voiced:
        lines += ["", "## One sentence in each of the Talker's voices (through the vocoder)", ""]
        lines += [f"- [{p.stem}]({p.relative_to(runs)})" for p in voiced]
    lines += sft_details(evals / "sft_test.json")
    lines += chat_rows(runs / "chat" / "chat.json", runs)
    lines += ["", "## Loss curves", ""]
    for png in curves(runs, runs):
        lines.append(f"![{png.stem}]({png.name})")
    (runs / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:lines.index("", 2) if "" in lines[2:] else len(lines)]))   # the metrics table
    print(f"wrote {runs / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
