"""Talk to μOmni in a browser, or through an OpenAI-compatible API: one model in memory, requests in turn.

    python serve.py --ckpt_dir runs/demo/export              # then open http://127.0.0.1:8000/
    python serve.py --ckpt_dir runs/demo --port 8080 --api_key "$(openssl rand -hex 16)"

--ckpt_dir: an export folder or training folders, as infer_chat.py takes them. The page (GET /) chats with
pictures, speech from the microphone and spoken replies; the API is OpenAI's /v1/chat/completions (text,
image_url and input_audio parts, `modalities: ["text", "audio"]`, streaming), /v1/audio/transcriptions and
/v1/models. It listens on 127.0.0.1 unless --host says otherwise: from another machine, reach it through an
SSH tunnel (browsers allow the microphone only on localhost or https). --api_key (or the UOMNI_API_KEY
environment variable) makes every /v1/ route ask for `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import argparse
import os
import sys

from omni.errors import exit_on_user_error
from omni.infer.chat import load_chat, voices
from omni.serve.server import App, is_loopback, make_server


def host_warning(host: str) -> str | None:
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}: anyone who can reach this machine can use the model. Prefer the "
            f"default 127.0.0.1 and an SSH tunnel (ssh -L 8000:127.0.0.1:8000 this-machine); otherwise set "
            f"--api_key. Browsers allow the page's microphone only on localhost or https.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve μOmni: a chat page and an OpenAI-compatible API.")
    p.add_argument("--ckpt_dir", required=True, help="an export folder, a runs folder or Stage E's save_dir")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--api_key", default=os.environ.get("UOMNI_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $UOMNI_API_KEY, else none)")
    p.add_argument("--max_body_mb", type=float, default=20, help="the largest request body accepted")
    p.add_argument("--talker_ckpt", help="Stage D's folder, if not in --ckpt_dir")
    p.add_argument("--vocoder_ckpt", help="hifigan.pt to voice with (default: the one found, else Griffin-Lim)")
    p.add_argument("--griffin_lim", action="store_true", help="voice with Griffin-Lim even if a vocoder is found")
    p.add_argument("--ocr_ckpt", help="ocr.pt, if not in --ckpt_dir")
    args = p.parse_args(argv)
    with exit_on_user_error():
        chat = load_chat(args.ckpt_dir, args.device, args.talker_ckpt, args.vocoder_ckpt, args.ocr_ckpt,
                         args.griffin_lim)
    app = App(chat, args.api_key, int(args.max_body_mb * 2**20), local=is_loopback(args.host))
    server = make_server(app, args.host, args.port)
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    host, port = server.server_address[:2]
    url = f"http://{'localhost' if is_loopback(host) else host}:{port}/"
    parts = ", ".join(f"{k}: {v}" for k, v in chat.where.items())
    print(f"μOmni ({parts}; voices: {', '.join(voices(chat)) or 'none'}{'; API key required' if args.api_key else ''})",
          file=sys.stderr)
    print(f"serving on {url}  (the page; the API at {url}v1)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
