"""The HTTP side of serve.py, on the standard library's ThreadingHTTPServer: each connection has a thread that
reads and checks its request, queues the model's work on the one worker and writes the reply (JSON, or
server-sent events as the worker produces them).

    GET  /                          the chat page (static/index.html)
    GET  /v1/models                 the model, its voices and what it takes and gives
    POST /v1/chat/completions       OpenAI's Chat Completions (omni.serve.api)
    POST /v1/audio/transcriptions   multipart WAV -> {"text": ...}, as OpenAI's
    GET  /health                    {"status": "ok", "queued": N}

With an API key every /v1/ route needs `Authorization: Bearer KEY`. Bound to a loopback address, requests
must name a loopback host (a web page that rebinds its own domain to 127.0.0.1 cannot reach the model).
"""
from __future__ import annotations

import hmac
import json
import sys
from email import message_from_bytes
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit

from omni.infer.chat import Chat
from omni.serve.api import (MODEL_ID, APIError, ChatRequest, Reply, Transcripts, decode_wav, encode_audio,
                            model_card, read_chat_request, reply_events)
from omni.serve.worker import Worker

PAGE = Path(__file__).parent / "static" / "index.html"
# the page may talk to this server alone, and load nothing from anywhere else
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self' data: blob:; media-src 'self' data: blob:; base-uri 'none'; form-action 'none'")


def is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class App:
    """What every request thread shares: the model, the queue, the settings."""

    def __init__(self, chat: Chat, api_key: str | None = None, max_body: int = 20 * 2**20, local: bool = True,
                 log: bool = True):
        self.chat, self.api_key, self.max_body, self.local, self.log = chat, api_key, max_body, local, log
        self.worker, self.transcripts = Worker(), Transcripts()
        self.page = PAGE.read_bytes()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive for clients that send many requests
    server_version = "uomni"
    app: App                        # set on the subclass make_server builds

    # --- plumbing -------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, e: APIError) -> None:
        self._json(e.status, e.body())

    def _body(self) -> bytes:
        n = self.headers.get("Content-Length")
        if n is None or not n.isdigit():
            self.close_connection = True
            raise APIError(411, "a request body needs a Content-Length")
        n = int(n)
        if n > self.app.max_body:
            self.close_connection = True
            if n <= 4 * self.app.max_body:   # read it, so that the client hears the answer instead of a reset
                while n > 0:
                    n -= len(self.rfile.read(min(n, 1 << 20)) or b"\0" * n)
            raise APIError(413, f"the request body is over the server's limit of "
                                f"{self.app.max_body / 2**20:g} MB (serve.py --max_body_mb)", code="body_too_large")
        return self.rfile.read(n)

    def _check(self) -> None:
        """The host a browser thinks it talks to, and the API key."""
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        if self.app.local and not is_loopback(host):
            raise APIError(403, f"this server answers requests for localhost only, not {host!r} (serve.py --host "
                                f"to serve other hosts)")
        key = self.app.api_key
        if key and self.path.startswith("/v1/"):
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                                    "(the key given to serve.py --api_key)", code="invalid_api_key")

    def log_message(self, fmt, *args):   # one line per request, on stderr
        if self.app.log:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    # --- routes ---------------------------------------------------------------------------------------------
    def do_GET(self):
        self._route({"/": self._page, "/index.html": self._page, "/health": self._health,
                     "/favicon.ico": lambda: self._send(204, b"", "image/x-icon"),
                     "/v1/models": self._models, f"/v1/models/{MODEL_ID}": self._model})

    do_HEAD = do_GET

    def do_POST(self):
        self._route({"/v1/chat/completions": self._chat, "/v1/audio/transcriptions": self._transcribe})

    def _route(self, routes: dict) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check()
            if path not in routes:
                other = "POST" if self.command != "POST" else "GET"
                raise APIError(405 if path in _ROUTES[other] else 404,
                               f"{self.command} {path}: no such route" + (f" (use {other})" if path in _ROUTES[other]
                                                                           else ""))
            routes[path]()
        except APIError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):   # the client went away
            self.close_connection = True

    def _page(self):
        self._send(200, self.app.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer"})

    def _health(self):
        self._json(200, {"status": "ok", "queued": self.app.worker.waiting()})

    def _models(self):
        self._json(200, {"object": "list", "data": [model_card(self.app.chat)]})

    def _model(self):
        self._json(200, model_card(self.app.chat))

    def _chat(self):
        try:
            body = json.loads(self._body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        req = read_chat_request(body, self.app.chat, self.app.transcripts)
        job = self.app.worker.submit(lambda: reply_events(self.app.chat, req))
        events = iter(job)
        try:
            first = next(events)   # an error before the first event is a plain error reply, not a stream
        except StopIteration:
            raise APIError(500, "the model produced nothing") from None
        try:
            if req.stream:
                self._stream(req, first, events)
            else:
                self._complete(req, first, events)
        except (BrokenPipeError, ConnectionResetError):
            job.cancel()
            raise

    def _audio(self, req: ChatRequest, wavs: list, transcript: str) -> dict:
        import torch
        sr = self.app.chat.speaker.sample_rate
        audio_id, expires = self.app.transcripts.add(transcript)
        return {"id": audio_id, "data": encode_audio(torch.cat(wavs), sr, req.audio_format),
                "transcript": transcript, "expires_at": expires}

    def _complete(self, req: ChatRequest, first, events) -> None:
        reply, text, wavs = Reply(), [], []
        for event in (first, *events):
            if event[0] == "text":
                text.append(event[1])
            elif event[0] == "audio":
                wavs.append(event[1])
            else:
                _, usage, finish, dropped = event
        content = "".join(text).strip()
        audio = self._audio(req, wavs, content) if req.audio and wavs else None
        self._json(200, reply.completion(content, audio, usage, finish, dropped))

    def _stream(self, req: ChatRequest, first, events) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")   # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        reply, said = Reply(), []
        audio_id = expires = None
        sr = self.app.chat.speaker.sample_rate if req.audio else 0

        def send(obj) -> None:
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        send(reply.chunk({"role": "assistant", "content": ""}))
        try:
            for event in chain([first], events):
                if event[0] == "text":
                    said.append(event[1])
                    send(reply.chunk({"content": event[1]}))
                elif event[0] == "audio":
                    if audio_id is None:   # one id for the whole spoken reply, as OpenAI's chunks carry
                        audio_id, expires = self.app.transcripts.add("")
                    send(reply.chunk({"audio": {"id": audio_id, "data": encode_audio(event[1], sr, req.audio_format),
                                                "transcript": event[2], "expires_at": expires,
                                                "sample_rate": sr}}))
                else:
                    _, usage, finish, dropped = event
            if audio_id is not None:
                self.app.transcripts.by_id[audio_id] = ("".join(said).strip(), expires)
            send(reply.chunk({}, finish, dropped))
            if req.include_usage:
                send(reply.usage_chunk(usage))
        except APIError as e:   # the failure of a stream already under way: an error event (clients raise it)
            send(e.body())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _transcribe(self):
        kind = self.headers.get("Content-Type", "")
        if not kind.startswith("multipart/form-data"):
            raise APIError(400, "send the audio as multipart/form-data with a 'file' field (as OpenAI's API)")
        form = read_form(kind, self._body())
        if "file" not in form:
            raise APIError(400, "no 'file' field: the WAV to transcribe", "file")
        import base64
        wav = decode_wav(base64.b64encode(form["file"]).decode(), "file", self.app.chat.omni.mel.sample_rate)
        fmt = form.get("response_format", b"json").decode()
        if fmt not in ("json", "text"):
            raise APIError(400, f"response_format must be json or text, got {fmt!r}", "response_format")
        try:
            temperature = float(form.get("temperature", b"0"))
        except ValueError:
            raise APIError(400, "temperature must be a number", "temperature") from None
        req = ChatRequest([_user_audio(wav)], temperature=temperature)
        text = "".join(e[1] for e in self.app.worker.submit(lambda: reply_events(self.app.chat, req))
                       if e[0] == "text").strip()
        if fmt == "text":
            self._send(200, (text + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._json(200, {"text": text})


_ROUTES = {"GET": ("/", "/index.html", "/health", "/favicon.ico", "/v1/models", f"/v1/models/{MODEL_ID}"),
           "POST": ("/v1/chat/completions", "/v1/audio/transcriptions")}


def _user_audio(wav):
    from omni.chat import Turn
    return Turn("user", "", [], [wav])   # no words: user_turn asks the model to transcribe


def read_form(content_type: str, body: bytes) -> dict[str, bytes]:
    """multipart/form-data -> {field name: its bytes}."""
    msg = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=HTTP)
    if not msg.is_multipart():
        raise APIError(400, "the multipart body could not be read")
    form = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            form[name] = part.get_payload(decode=True) or b""
    return form


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
