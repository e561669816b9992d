#!/usr/bin/env python
"""Evaluate one trained stage on data in the formats the README describes; prints its metrics as one JSON object.

    python scripts/evaluate.py text --ckpt runs/demo/thinker/thinker.pt --data data/demo/text/val.txt
    python scripts/evaluate.py tts --ckpt_dir runs/demo/talker --data data/demo/tts/test_world.csv
    python scripts/evaluate.py sft --ckpt runs/demo/omni_sft --data data/demo/sft/test.jsonl
    python scripts/evaluate.py ocr --ckpt runs/demo/ocr/ocr.pt --data data/demo/ocr/test_clean.csv
    python scripts/evaluate.py vocoder --ckpt runs/demo/vocoder/hifigan.pt --data data/demo/tts/test_world.csv
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni.artifacts import load_artifact  # noqa: E402
from omni.audio import LogMel  # noqa: E402
from omni.config import to_dict  # noqa: E402
from omni.data.text import token_cache  # noqa: E402
from omni.device import resolve_device  # noqa: E402
from omni.errors import UserError, exit_on_user_error  # noqa: E402
from omni.infer.evaluate import lm_metrics  # noqa: E402
from omni.text_norm import spoken_form  # noqa: E402


def eval_text(args) -> dict:
    device = resolve_device(args.device)
    a = load_artifact(args.ckpt, "thinker", device)
    model, tok = a.model, a.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokens = token_cache(args.data, tok, tmp)
    with torch.no_grad():
        m = lm_metrics(model, tokens, model.cfg.ctx_len, args.batch_size, tok.token_bytes(), device)
    return {"perplexity": m["perplexity"], "bits_per_byte": m["bits_per_byte"], "loss": m["loss"],
            "n_tokens": m["n_tokens"], "ckpt": str(args.ckpt), "data": str(args.data)}


def eval_vision(args) -> dict:
    """Image↔text retrieval over the whole manifest (duplicate captions count as one text; see
    omni.metrics.retrieval_metrics), plus top-1 within random groups of 32 and the whole-split loss. For world
    scenes also the linear probes of omni.probe (fit on the first scenes of --probe_train, by default the
    run's training manifest) and, where the model has a caption decoder, its greedy captions scored by exact
    match and word F1."""
    import numpy as np
    from omni.data.images import decode_image, read_manifest
    from omni.infer.evaluate import clip_metrics
    from omni.probe import scene_labels
    from omni.tokenizer import EOS

    device = resolve_device(args.device)
    a = load_artifact(args.ckpt, "vision", device)
    model, tok = a.model, a.tokenizer
    rows = read_manifest(args.data)
    size, max_len = model.cfg.vision.image_size, model.cfg.text.max_len
    if model.text.uses_thinker:
        max_len = min(max_len, model.text.thinker.cfg.ctx_len)
    pixels, tokens, captions, skipped = [], [], [], 0
    for (path, caption), ids in zip(rows, tok.encode([c for _, c in rows])):
        img = decode_image(path, size)
        if img is None or len(ids) + 1 > max_len:
            skipped += 1
            continue
        pixels.append(img)
        tokens.append(ids + [EOS])
        captions.append(caption)
    if not pixels:
        raise UserError(f"{args.data}: no usable rows")
    index = {c: i for i, c in enumerate(sorted(set(captions)))}
    pixels = np.stack(pixels)
    with torch.no_grad():
        m = clip_metrics(model, pixels, tokens, [index[c] for c in captions], device, args.batch_size)
    if (labels := scene_labels(captions)) is not None:
        m.update(_vision_probe(args, model, a.config, labels, pixels, device))
    if model.captioner is not None:
        hyps = [tok.decode(ids) for i in range(0, len(pixels), args.batch_size) for ids in
                model.describe(torch.from_numpy(pixels[i:i + args.batch_size]).to(device).float() / 255.0)]
        m["caption_exact"] = float(np.mean([" ".join(h.split()) == c for h, c in zip(hyps, captions)]))
        m["caption_word_f1"] = float(np.mean([word_f1(c, h) for h, c in zip(hyps, captions)]))
        m["caption_examples"] = [{"caption": c, "described": h} for c, h in list(zip(captions, hyps))[:3]]
    return {**m, "skipped": skipped, "ckpt": str(args.ckpt), "data": str(args.data)}


def _vision_probe(args, model, run_config: dict, labels: dict, pixels, device) -> dict:
    """omni.probe's accuracies on these scenes, fit on the first probe_scenes of the training manifest."""
    import numpy as np
    from omni.data.images import decode_image, read_manifest
    from omni.models.omni import image_features
    from omni.probe import pick_scenes, probe_images, scene_labels

    train = args.probe_train or run_config.get("train_file", "")
    n, n_tokens = run_config.get("probe_scenes", 600) or 600, run_config.get("probe_tokens", 9)
    if not train or not Path(train).exists():
        print(f"no probe: the training manifest {train!r} is not here (--probe_train)", file=sys.stderr)
        return {}
    rows = read_manifest(train)
    picked = pick_scenes([p for p, _ in rows], [c for _, c in rows], n)
    size = model.cfg.vision.image_size
    train_pixels = [decode_image(rows[i][0], size) for i in picked]
    keep = [i for i, px in zip(picked, train_pixels) if px is not None]
    encode = lambda x: image_features(model.vision, x, n_tokens, cls=True).flatten(1)  # noqa: E731
    acc = probe_images(encode, np.stack([px for px in train_pixels if px is not None]),
                       scene_labels([rows[i][1] for i in keep]), pixels, labels, args.batch_size, device)
    return {**{f"probe_{k}": v for k, v in acc.items()}, "probe_train_scenes": len(keep)}


def word_f1(ref: str, hyp: str) -> float:
    """Bag-of-words F1 of a hypothesis against a reference (SQuAD's token F1)."""
    from collections import Counter
    r, h = Counter(ref.split()), Counter(hyp.split())
    common = sum((r & h).values())
    return 0.0 if not common else 2 * common / (sum(r.values()) + sum(h.values()))


def eval_asr(args) -> dict:
    """Every utterance of an ASR manifest transcribed as the artifact decodes (beam search with its character
    LM): WER, CER (fractions), CTC loss; and by best path alone (greedy_wer, greedy_cer)."""
    from omni.data.speech import read_manifest
    from omni.infer.asr import evaluate_utterances

    device = resolve_device(args.device)
    asr = load_artifact(args.ckpt, "audio_enc", device)
    utts = read_manifest(args.data)
    run = (asr.model, asr.vocab, LogMel(asr.features), [u.wav for u in utts], [u.text for u in utts],
           args.batch_size, device)
    greedy, _ = evaluate_utterances(*run)
    m, _ = evaluate_utterances(*run, asr.decoder)
    return {**m, "greedy_wer": greedy["wer"], "greedy_cer": greedy["cer"], "decode": to_dict(asr.decoder.cfg),
            "ckpt": str(args.ckpt), "data": str(args.data)}


def eval_tts(args) -> dict:
    """Stage D on a TTS manifest: codec reconstruction MSE (normalised log-mel), teacher-forced code
    perplexity, and round-trip WER / CER: Stage B's recogniser transcribing the Talker's speech of each text,
    beside the same recogniser on the original recordings, on Griffin-Lim copies of their true mels and on
    Griffin-Lim copies of the codec's reconstruction of their true codes (the bounds a Talker speaking through
    this codec and Griffin-Lim can reach; --no_bounds leaves these two out). Speech through a vocoder is also
    voiced by Griffin-Lim from the same codes (roundtrip_griffinlim_*). Real-time factor of speaking (generation
    + voicing). Voices: a manifest whose speakers are the Talker's voices has each row spoken in its own
    speaker's voice (teacher forcing too); otherwise every text is spoken in each voice (the default's for
    teacher forcing). --voice keeps one voice (and, in the first case, its rows). "voices" holds the round trip
    per voice beside the original recordings' (the same rows), the code perplexity in each voice (the first
    case) and, for a Talker of several voices, the voice identity: the share of its utterances that a
    classifier fitted on the voices' recordings (omni.infer.voice_id) names as the voice asked for, beside the
    same on the original recordings (the ceiling). The top-level figures pool the voices."""
    import time
    from omni.audio import GriffinLim, load_audio
    from omni.data.speech import read_manifest
    from omni.data.tts import make_sample
    from omni.infer.asr import evaluate_utterances
    from omni.infer.evaluate import code_cross_entropy
    from omni.infer.tts import load_speaker
    from omni.infer.voice_id import fit_on_manifest
    from omni.metrics import cer, wer
    from omni.models.codec import usage_perplexity

    device = resolve_device(args.device)
    speaker = load_speaker(args.ckpt, device, args.vocoder)
    asr_path = args.asr_ckpt or speaker.config.get("audio_enc_ckpt", "")
    utts = read_manifest(args.data)
    mel = LogMel(speaker.features)
    asked = speaker.voices if args.voice is None else [speaker.voice_name(args.voice)]   # unknown: the voices
    matched = len(speaker.voices) > 1 and all(u.speaker in speaker.voices for u in utts)
    if matched:   # each row in its own voice: only the asked voices' rows
        utts = [u for u in utts if u.speaker in asked]
    texts, mels, wavs, own, skipped = [], [], [], [], 0
    for u in utts:
        logmel = mel(load_audio(u.wav, speaker.sample_rate))
        if make_sample(speaker.codec, speaker.vocab, u.text, logmel) is None:
            skipped += 1
            continue
        texts.append(u.text)
        mels.append(logmel)
        wavs.append(u.wav)
        own.append(u.speaker if u.speaker in speaker.voices else speaker.voices[0])
    if not texts:
        voice = f" in voice {asked[0]}" if matched and args.voice is not None else ""
        raise UserError(f"{args.data}: no utterance the Talker can speak{voice}")
    rows = {v: [i for i in range(len(texts)) if not matched or own[i] == v] for v in asked}   # voice -> its rows
    rows = {v: idx for v, idx in rows.items() if idx}   # a voice the manifest does not speak in is left out
    samples = [make_sample(speaker.codec, speaker.vocab, t, m, speaker.tokenizer, speaker.voices.index(v))
               for t, m, v in zip(texts, mels, own)]
    with torch.no_grad():
        se = n = 0.0
        for s in samples:
            x = s["mel"].float()[None].to(device)
            y = speaker.codec.decode(s["codes"].long()[None].to(device))[:, :x.shape[1]]
            se, n = se + float((y - x).pow(2).sum()), n + x.numel()
        groups = rows if matched else {None: range(len(samples))}   # teacher forcing in each row's own voice
        ces = {v: code_cross_entropy(speaker.talker, [samples[i] for i in idx], args.batch_size)
               for v, idx in groups.items()}
    frames = {v: sum(samples[i]["codes"].shape[0] for i in idx) for v, idx in groups.items()}
    ce = sum(ces[v] * frames[v] for v in groups) / sum(frames.values())
    size = speaker.codec.cfg.codebook_size
    usage = usage_perplexity(torch.cat([s["codes"].long() for s in samples]), size)
    t0 = time.time()
    said = [(v, i) for v, idx in rows.items() for i in idx]
    mine = {v: [k for k, (w, _) in enumerate(said) if w == v] for v in rows}   # voice -> its utterances in `said`
    gl = GriffinLim(speaker.features)
    codes = [c for v, idx in rows.items()
             for c in speaker.speak_codes([texts[i] for i in idx], temperature=args.temperature, top_k=args.top_k,
                                          seed=0, voice=v)]
    spoken_mels = [speaker.codes_to_logmel(c) for c in codes]
    spoken = [(speaker.vocoder or gl)(m) for m in spoken_mels]
    seconds = time.time() - t0
    audio_s = sum(w.numel() for w in spoken) / speaker.sample_rate
    result = {"recon_mse": se / n, "code_perplexity": float(ce.mean().exp()),
              "code_perplexity_per_book": [round(float(c.exp()), 3) for c in ce], "n": len(texts),
              "skipped": skipped, "real_time_factor": seconds / audio_s,
              "codebook_usage_ppl": [round(u, 1) for u in usage], "usage_min_fraction": min(usage) / size}
    result["voices"] = {v: {"n": len(idx), **({"code_perplexity": float(ces[v].mean().exp())} if matched else {})}
                        for v, idx in rows.items()}
    if asr_path:
        a = load_artifact(asr_path, "audio_enc", device)
        asr = (a.model, a.vocab, LogMel(a.features))
        refs = [spoken_form(t) for t in texts]   # "3 stars" is heard as "three stars"
        heard = {}
        said_refs = [refs[i] for _, i in said]
        bounds = [] if args.no_bounds else [
            ("griffinlim", [gl(m) for m in mels], refs),
            ("codec", [gl(speaker.codes_to_logmel(s["codes"].long())) for s in samples], refs)]
        also = [("roundtrip_griffinlim", [gl(m) for m in spoken_mels], said_refs)] if speaker.vocoder else []
        for key, audio, ref in (("roundtrip", spoken, said_refs), ("original", wavs, refs), *bounds, *also):
            m, heard[key] = evaluate_utterances(*asr, audio, ref, args.batch_size, device)
            result[f"{key}_wer"], result[f"{key}_cer"] = m["wer"], m["cer"]
        for v, idx in rows.items():
            ref, orig = [refs[i] for i in idx], [heard["original"][i] for i in idx]
            rt = [heard["roundtrip"][k] for k in mine[v]]
            result["voices"][v].update(roundtrip_wer=wer(ref, rt), roundtrip_cer=cer(ref, rt),
                                       original_wer=wer(ref, orig), original_cer=cer(ref, orig))
        result["asr_ckpt"] = str(asr_path)
    else:
        result["roundtrip_wer"] = None  # no recogniser: say so rather than guess
    voice_id_data = args.voice_id_data or speaker.config.get("train_csv", "")
    if len(speaker.voices) > 1 and voice_id_data and (args.voice_id_data or Path(voice_id_data).exists()):
        ident = fit_on_manifest(voice_id_data, speaker.voices, speaker.features)
        named, original = ident.name(spoken), ident.name(wavs) if matched else None
        for v, idx in rows.items():
            result["voices"][v]["identity"] = sum(named[k] == v for k in mine[v]) / len(mine[v])
            if original:   # the classifier on the voice's own recordings of these sentences: the ceiling
                result["voices"][v]["original_identity"] = sum(original[i] == v for i in idx) / len(idx)
        result["voice_id_data"] = str(voice_id_data)
    elif len(speaker.voices) > 1:
        print(f"no voice identity: the voices' recordings ({voice_id_data or 'train_csv'}) are not here; "
              "give --voice_id_data", file=sys.stderr)
    return {**result, "vocoder": speaker.rendered_by, "ckpt_dir": str(args.ckpt), "data": str(args.data)}


def eval_vocoder(args) -> dict:
    """The vocoder beside Griffin-Lim on a TTS/ASR manifest: from true mels and from the codec's reconstruction
    of them (with --codec, or the codec the vocoder was trained with): log-mel L1, multi-resolution STFT
    distance, real-time factor, wideband PESQ and STOI (requirements-eval.txt), and round-trip WER / CER through
    Stage B (--asr_ckpt, or the codec's Talker config's). Griffin-Lim runs 32 iterations, and again followed by
    the vocoder's mel-consistency iterations where it has them."""
    from omni.data.speech import read_manifest
    from omni.infer.asr import evaluate_utterances
    from omni.infer.vocoder import compare_voices_split, load_vocoder
    from omni.perceptual import available

    device = resolve_device(args.device)
    codec_path = args.codec or load_vocoder(args.ckpt).config.get("codec_ckpt", "")
    utts = read_manifest(args.data)[:args.max_utterances or None]
    perceptual = available()
    if not perceptual:
        print("no PESQ / STOI: pip install -r requirements-eval.txt", file=sys.stderr)
    describe, metrics, voiced = compare_voices_split(args.ckpt, codec_path, [u.wav for u in utts], device,
                                                     perceptual, workers=min(2, os.cpu_count() or 1))
    result = {"n": len(utts), "vocoder_setup": describe, **metrics}
    codec = load_artifact(codec_path, "rvq_codec") if codec_path else None
    asr_path = args.asr_ckpt
    if not asr_path and codec is not None:
        talker_cfg = Path(codec.path).parent / "talker.pt"
        asr_path = load_artifact(talker_cfg, "talker").config.get("audio_enc_ckpt", "") if talker_cfg.exists() else ""
    if asr_path:
        a = load_artifact(asr_path, "audio_enc", device)
        asr = (a.model, a.vocab, LogMel(a.features))
        texts = [u.text for u in utts]
        for name in metrics:
            for prefix, audio in voiced[name].items():
                m, _ = evaluate_utterances(*asr, audio, texts, args.batch_size, device)
                result[name][f"{prefix}wer"], result[name][f"{prefix}cer"] = m["wer"], m["cer"]
        result["asr_ckpt"] = str(asr_path)
    return {**result, "ckpt": str(args.ckpt), "codec": str(codec_path), "data": str(args.data)}


def eval_sft(args) -> dict:
    """Stage E on an SFT JSONL: per-task accuracy / word F1 / WER / perplexity, overall question accuracy,
    and the same questions with images and audio shuffled among rows (the grounding check)."""
    import time

    from omni.data.sft import load_media, read_sft
    from omni.infer.omni import load_omni
    from omni.infer.sft_eval import evaluate_sft

    device = resolve_device(args.device)
    omni = load_omni(args.ckpt, device)
    examples = read_sft(args.data, omni.system)
    media = load_media(examples, omni.model, omni.mel, device, True, True, progress=False)
    t0 = time.time()
    with torch.no_grad():
        r = evaluate_sft(omni.model, omni.template, examples, media, device, args.batch_size,
                         args.max_new_tokens, samples=args.samples)
    return {**r, "seconds": round(time.time() - t0, 1), "ckpt": str(args.ckpt), "data": str(args.data)}


def eval_ocr(args) -> dict:
    """OCR on a CSV image,text: CER, WER and line accuracy (exact match) of the readings (--decoding), CER per
    line-length bucket, the longest reading over its reference, the CTC head's CER beside them, and lines read
    per second on this machine."""
    import time

    from omni.data.ocr import read_manifest
    from omni.infer.ocr import DECODING, evaluate_lines

    device = resolve_device(args.device)
    a = load_artifact(args.ckpt, "ocr", device)
    rows = read_manifest(args.data)
    t0 = time.time()
    m, _ = evaluate_lines(a.model, a.vocab, [p for p, _ in rows], [t for _, t in rows], args.batch_size, device,
                          ctc=True, decoding=args.decoding or DECODING)
    return {**m, "lines_per_s": round(m["n"] / (time.time() - t0), 1), "ckpt": str(args.ckpt),
            "data": str(args.data)}


STAGES = {"text": eval_text, "vision": eval_vision, "asr": eval_asr, "tts": eval_tts, "sft": eval_sft,
          "ocr": eval_ocr, "vocoder": eval_vocoder}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--ckpt", "--ckpt_dir", required=True,
                   help="final artifact of the stage (tts: the folder holding talker.pt and rvq_codec.pt; "
                        "sft: omni_final.pt or its folder)")
    p.add_argument("--data", required=True, help="held-out data in the stage's format")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--asr_ckpt", default="", help="tts: Stage B's audio_enc.pt (default: the Talker config's)")
    p.add_argument("--vocoder", default=None,
                   help="tts: hifigan.pt to voice with ('' = Griffin-Lim; default: one beside the Talker, if any)")
    p.add_argument("--codec", default="", help="vocoder: rvq_codec.pt or its folder (default: the vocoder's codec)")
    p.add_argument("--max_utterances", type=int, default=0, help="vocoder: the first N of --data (0 = all)")
    p.add_argument("--temperature", type=float, default=0.0, help="tts: sampling temperature (0 = greedy)")
    p.add_argument("--top_k", type=int, default=20, help="tts: sample among the k likeliest codes")
    p.add_argument("--voice", default=None, help="tts: speak in this voice only (default: each of the Talker's)")
    p.add_argument("--no_bounds", action="store_true",
                   help="tts: skip the recogniser on Griffin-Lim copies of the true and the codec's mels")
    p.add_argument("--voice_id_data", default="",
                   help="tts: recordings of the voices (a manifest with speakers) to fit the voice classifier on "
                        "(default: the Talker's train_csv)")
    p.add_argument("--max_new_tokens", type=int, default=48, help="sft: longest reply")
    p.add_argument("--probe_train", default="", help="vision: the manifest the probes fit on (default: the run's "
                                                     "train_file)")
    p.add_argument("--decoding", default="", choices=["", "greedy", "ctc_bound", "ctc", "joint"],
                   help="ocr: how lines are read (default: omni.infer.ocr.DECODING)")
    p.add_argument("--samples", type=int, default=0, help="sft: also print the first N replies beside the answers")
    args = p.parse_args(argv)
    with exit_on_user_error():
        result = STAGES[args.stage](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
