"""Talk to μOmni: text, pictures and speech in; text (streamed) and speech out.

    python infer_chat.py --ckpt_dir merged_model "what can you do?"
    python infer_chat.py --ckpt_dir merged_model --image scene.png "what colour is the star?"
    python infer_chat.py --ckpt_dir merged_model --image scene.png --audio_in question.wav   # spoken question
    python infer_chat.py --ckpt_dir merged_model --audio_in speech.wav                      # transcription
    python infer_chat.py --ckpt_dir merged_model "hello" --audio_out reply.wav              # spoken reply
    python infer_chat.py --ckpt_dir merged_model --list_voices       # then --voice NAME with --audio_out
    python infer_chat.py --ckpt_dir merged_model --ocr --image line.png ["question about it"]
    python infer_chat.py --ckpt_dir runs/demo                                                # interactive

--ckpt_dir: an export folder (export.py) or training folders (a runs folder with omni_sft/, talker/,
vocoder/, ocr/, or Stage E's save_dir with --talker_ckpt / --ocr_ckpt). Without a prompt, --audio_in
alone asks for a transcription and --image with --audio_in for the answer to the spoken question (the
prompts the model was trained with). --ocr reads the image with the OCR model and puts its text in the
prompt (without a prompt the reply is the reading). With no prompt and no --audio_in, a conversation
starts: /image PATH and /audio PATH attach media to the next message, /reset forgets the history, /quit ends.
Errors of the input (a missing file, audio that is not audio, a corrupt image, an empty prompt, a part the
model lacks) print one line and exit with status 1; in a conversation they print and the conversation goes on.
Any other error is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from omni.chat import Turn
from omni.errors import UserError, exit_on_user_error, one_line
from omni.infer.chat import (Chat, ChatError, check_inputs, forget_oldest, load_chat, speak as speak_text,
                             user_turn, voices)
from omni.infer.omni import ContextFull
from omni.text_norm import unsayable

def respond(chat: Chat, history: list[Turn], args, stream: bool, audio_out: str | None,
            given: str | None = None) -> dict:
    """Generates the reply to history (ending with the user's turn; `given`: a reply already known, the OCR
    reading), streaming it to stdout when asked, speaks it to audio_out; returns the record (reply, timings,
    paths)."""
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    t0, first, pieces = time.perf_counter(), None, []
    if given is not None:
        pieces, first = [given], 0.0
        if stream:
            print(given, end="", flush=True)
    else:
        for piece in chat.omni.stream(history, args.max_new_tokens, args.temperature, args.top_k, args.top_p, gen,
                                         args.compile):
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(piece)
            if stream:
                print(piece, end="", flush=True)
    if stream:
        print(flush=True)
    reply = "".join(pieces).strip()
    total = time.perf_counter() - t0
    n_tok = len(chat.omni.tokenizer.encode(reply)) if reply and given is None else 0   # given: none generated
    out = {"reply": reply, "time_to_first_token_s": None if given is not None else round(first or total, 4),
           "reply_s": round(total, 4),
           "tokens": n_tok, "tokens_per_s": round(n_tok / total, 1) if total and n_tok else None}
    if audio_out:
        out.update(speak(chat, reply, audio_out, args))
        # the reply is spoken once it is complete, and its wav written whole: the first audio is ready then
        out["time_to_first_audio_s"] = round(total + out["speech_s"], 4)
    return out


def speak(chat: Chat, text: str, path: str, args) -> dict:
    import soundfile as sf
    sp = chat.need("speaker", "export with --talker_ckpt, or give --talker_ckpt (train_talker.py's folder)")
    missing = unsayable(text)
    if missing:
        print(f"note: no reading for {missing!r}; left out of the speech", file=sys.stderr)
    t0 = time.perf_counter()
    wav = speak_text(chat, text, args.temperature, args.top_k or 20, args.seed, args.voice)
    took = time.perf_counter() - t0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.numpy(), sp.sample_rate)
    seconds = wav.numel() / sp.sample_rate
    return {"audio_out": path, "audio_s": round(seconds, 3), "speech_s": round(took, 4),
            "speech_rtf": round(took / seconds, 4) if seconds else None, "voice": sp.voice_name(args.voice),
            "vocoder": sp.rendered_by}


def repl(chat: Chat, args) -> int:
    history: list[Turn] = [Turn("system", args.system)] if args.system else []
    image = audio = None
    n = 0
    print("μOmni chat. /image PATH, /audio PATH attach to the next message; /reset; /quit.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        cmd, _, rest = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            return 0
        if cmd == "/reset":
            history, image, audio = history[:1] if args.system else [], None, None
            print("(history cleared)", file=sys.stderr)
            continue
        if cmd in ("/image", "/audio"):
            try:
                check_inputs([rest] if cmd == "/image" else [], [rest] if cmd == "/audio" else [])
            except ChatError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            image, audio = (rest, audio) if cmd == "/image" else (image, rest)
            print(f"(attached {rest})", file=sys.stderr)
            continue
        if not line and not audio:
            continue
        try:
            turn, _ = user_turn(chat, line, [image] if image else [], [audio] if audio else [])
            print("omni> ", end="", flush=True)
            path = None
            if args.audio_out:
                p = Path(args.audio_out)
                path, n = str(p.with_name(f"{p.stem}_{n}{p.suffix}")), n + 1
            while True:
                try:
                    rec = respond(chat, history + [turn], args, True, path)
                    break
                except ContextFull:   # forget the oldest exchange (the system turn stays) and try again
                    if not forget_oldest(history):
                        raise
                    print("(context full: the oldest exchange is forgotten)", file=sys.stderr)
            if path:
                print(f"(spoken: {path})", file=sys.stderr)
        except UserError as e:   # a bad turn (ChatError, ContextFull, unreadable media): say so, go on
            print(f"error: {one_line(e)}", file=sys.stderr)
            continue
        history += [turn, Turn("assistant", rec["reply"])]
        image = audio = None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Talk to μOmni (text, image and speech in; text and speech out).")
    p.add_argument("prompt", nargs="?", help="the message (or --text)")
    p.add_argument("--ckpt_dir", required=True, help="an export folder, a runs folder or Stage E's save_dir")
    p.add_argument("--text", help="the message")
    p.add_argument("--image", help="a picture to ask about (or, with --ocr, a line of text to read)")
    p.add_argument("--audio_in", help="speech: a spoken question (with --image) or speech to transcribe")
    p.add_argument("--audio_out", help="speak the reply to this WAV")
    p.add_argument("--ocr", action="store_true", help="read --image with the OCR model into the prompt")
    p.add_argument("--system", default="", help="a system prompt")
    p.add_argument("--talker_ckpt", help="Stage D's folder (talker.pt + rvq_codec.pt), if not in --ckpt_dir")
    p.add_argument("--vocoder_ckpt", help="hifigan.pt to voice with (default: the one found, else Griffin-Lim)")
    p.add_argument("--griffin_lim", action="store_true", help="voice with Griffin-Lim even if a vocoder is found")
    p.add_argument("--voice", help="the voice of --audio_out (default: the Talker's first; see --list_voices)")
    p.add_argument("--list_voices", action="store_true", help="print the Talker's voices, the default first, and exit")
    p.add_argument("--ocr_ckpt", help="ocr.pt, if not in --ckpt_dir")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile graph: faster tokens after a one-off build (REPL, long replies)")
    p.add_argument("--json", action="store_true", help="print one JSON object (reply, timings, paths)")
    args = p.parse_args(argv)
    if args.prompt and args.text:
        p.error("give the message once: as the argument or as --text")
    args.prompt_text = (args.text if args.text is not None else args.prompt)
    one_shot = args.prompt_text is not None or args.audio_in or args.ocr
    media = ([args.image] if args.image else [], [args.audio_in] if args.audio_in else [])
    with exit_on_user_error():
        if one_shot:   # inputs are checked before the models load
            check_inputs(*media)
        chat = load_chat(args.ckpt_dir, args.device, args.talker_ckpt, args.vocoder_ckpt, args.ocr_ckpt,
                         args.griffin_lim)
        if args.list_voices or args.voice:
            sp = chat.need("speaker", "export with --talker_ckpt, or give --talker_ckpt (train_talker.py's folder)")
            args.voice = sp.voice_name(args.voice)   # an unknown voice fails here, listing the voices
            if args.list_voices:
                print("\n".join(voices(chat)))
                return 0
        if chat.speaker is not None and args.audio_out:
            print(chat.speaker.rendered_by, file=sys.stderr)
        if not one_shot:
            if args.image:
                p.error("--image needs a prompt (or --audio_in); in a conversation use /image PATH")
            return repl(chat, args)
        if args.audio_out:
            chat.need("speaker", "export with --talker_ckpt, or give --talker_ckpt (train_talker.py's folder)")
        history = [Turn("system", args.system)] if args.system else []
        turn, extra = user_turn(chat, (args.prompt_text or "").strip(), *media, args.ocr)
        rec = respond(chat, history + [turn], args, not args.json, args.audio_out, extra.pop("reply", None))
    rec = {**extra, **rec, "parts": chat.where}
    if args.json:
        print(json.dumps(rec))
    elif args.audio_out:
        print(f"(spoken: {rec['audio_out']}, {rec['audio_s']:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
