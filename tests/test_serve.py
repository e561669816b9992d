"""serve.py's API through a real client (the `openai` package) on conftest's tiny random models: every kind of
message, spoken replies, streaming, transcription, the queue under concurrent requests, and each bad input as
OpenAI's error shape with its 4xx, the server answering the next request. One server for the module."""
from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, serving, tone_speech

openai = pytest.importorskip("openai", reason="the API tests need the openai package: "
                                              "pip install -r requirements-test.txt (make test does)")

KEY = "test-key"


@pytest.fixture(scope="module")
def url(runs):
    with serving(runs, "--api_key", KEY, "--max_body_mb", "4") as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def image_part(path) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(path)}"}}


def audio_part(path) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(path), "format": "wav"}}


def ask(client, content, **kw):
    return client.chat.completions.create(model="uomni", messages=[{"role": "user", "content": content}],
                                          **{"max_tokens": 8, **kw})


def test_models_lists_the_model_and_its_voices(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["uomni"]
    card = models[0].model_dump()
    assert card["voices"] == ["default"] and card["output"] == ["text", "audio"] and card["ocr"] is True


@pytest.mark.parametrize("kind", ["text", "picture", "spoken question"])
def test_each_kind_of_message_is_answered(client, runs, kind):
    content = {"text": "the red circle",
               "picture": [{"type": "text", "text": "what colour is it?"}, image_part(runs / "red.png")],
               "spoken question": [image_part(runs / "red.png"), audio_part(runs / "q.wav")]}[kind]
    r = ask(client, content)
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    if kind != "text":   # media tokens count in the prompt
        assert u.prompt_tokens > ask(client, "what colour is it?").usage.prompt_tokens


def test_a_spoken_reply_is_a_wav_and_its_id_recalls_it(client):
    r = ask(client, "the red circle", modalities=["text", "audio"], audio={"voice": "default", "format": "wav"})
    m = r.choices[0].message
    wav, sr = sf.read(io.BytesIO(base64.b64decode(m.audio.data)))
    assert sr == SR and len(wav) > 0 and np.abs(wav).max() > 0
    assert m.audio.transcript == m.content and m.audio.id and m.audio.expires_at > r.created
    # a later turn may name the spoken reply by its id, as OpenAI's clients do
    follow = client.chat.completions.create(model="uomni", max_tokens=4, messages=[
        {"role": "user", "content": "the red circle"}, {"role": "assistant", "audio": {"id": m.audio.id}},
        {"role": "user", "content": "and the blue star?"}])
    assert follow.usage.prompt_tokens > len(m.content.split())


def test_streamed_chunks_join_to_the_reply(client):
    messages = [{"role": "system", "content": "answer briefly."}, {"role": "user", "content": "the blue star"}]
    whole = client.chat.completions.create(model="uomni", messages=messages, max_tokens=12)
    chunks = list(client.chat.completions.create(model="uomni", messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_streamed_spoken_reply_comes_in_playable_pieces(client):
    chunks = list(ask(client, "the red circle. the blue star.", stream=True, modalities=["text", "audio"],
                      max_tokens=24))
    pieces = [a for c in chunks if c.choices and (a := c.choices[0].delta.model_dump().get("audio"))]
    assert pieces and len({p["id"] for p in pieces}) == 1
    for p in pieces:
        wav, sr = sf.read(io.BytesIO(base64.b64decode(p["data"])))
        assert sr == SR and len(wav) > 0 and p["transcript"].strip()


def test_transcription(client, runs):
    with open(runs / "q.wav", "rb") as f:
        r = client.audio.transcriptions.create(model="uomni", file=f)
    assert isinstance(r.text, str)


def test_concurrent_requests_each_get_their_own_reply(client):
    prompts = [f"the {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "star")]
    alone = {p: ask(client, p).choices[0].message.content for p in prompts}
    got, errors = {}, []

    def one(p):
        try:
            got[p] = ask(client, p).choices[0].message.content
        except Exception as e:   # reported below, with the prompt
            errors.append((p, e))

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == alone


def post(url: str, body: bytes, key: str | None = KEY, path="/v1/chat/completions", **headers):
    req = urllib.request.Request(f"{url}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **headers,
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wav_b64(seconds: float) -> str:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * SR), np.float32), SR, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def user(*parts) -> bytes:
    return json.dumps({"model": "uomni", "max_tokens": 4, "messages": [{"role": "user", "content": list(parts)}]}
                      ).encode()


TEXT = {"type": "text", "text": "what is it?"}
BAD = {
    "malformed JSON": (b'{"messages": [', 400, None),
    "unknown part type": (user(TEXT, {"type": "video_url", "video_url": {"url": "x"}}), 400,
                          "messages[0].content[1].type"),
    "a data URL that is not an image": (user(TEXT, {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a picture").decode()}}), 400,
        "messages[0].content[1].image_url.url"),
    "a picture by URL": (user(TEXT, {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}), 400,
                         "messages[0].content[1].image_url.url"),
    "audio that is not a WAV": (user(TEXT, {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFF not a wav at all").decode(), "format": "wav"}}), 400,
        "messages[0].content[1].input_audio.data"),
    "audio too long": (user(TEXT, {"type": "input_audio", "input_audio": {"data": wav_b64(31), "format": "wav"}}),
                       400, "messages[0].content[1].input_audio.data"),
    "a conversation over the context": (user({"type": "text", "text": "the red circle is on the left and " * 20}),
                                        400, "messages"),
    "unknown voice": (json.dumps({"model": "uomni", "messages": [{"role": "user", "content": "hi"}],
                                  "modalities": ["text", "audio"], "audio": {"voice": "nobody"}}).encode(), 400,
                      "audio.voice"),
    "a body over the size limit": (b"{" + b" " * (5 << 20) + b"}", 413, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_in_openai_shape_and_serving_goes_on(url, case):
    body, status, param = BAD[case]
    code, reply = post(url, body)
    assert code == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["param"] == param
    code, reply = post(url, user(TEXT))
    assert code == 200 and reply["choices"][0]["message"]["role"] == "assistant"


def test_truncation_auto_forgets_the_oldest_exchanges(client):
    long = "the red circle is on the left and the blue star is at the top " * 3
    messages = [{"role": "user", "content": long}, {"role": "assistant", "content": long}] * 2 + [
        {"role": "user", "content": "and now?"}]
    with pytest.raises(openai.BadRequestError, match="no room for a reply"):
        client.chat.completions.create(model="uomni", messages=messages, max_tokens=4)
    r = client.chat.completions.create(model="uomni", messages=messages, max_tokens=4,
                                       extra_body={"truncation": "auto"})
    assert r.model_extra["truncated_messages"] in (2, 4)


def test_the_api_key_is_enforced(url):
    assert post(url, user(TEXT), key=None)[0] == 401
    code, reply = post(url, user(TEXT), key="wrong")
    assert code == 401 and reply["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with urllib.request.urlopen(f"{url}/") as r:   # the page itself holds nothing: it asks for the key
        assert r.status == 200 and "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_a_request_for_another_host_is_refused(url):
    """A web page that points its own domain at 127.0.0.1 (DNS rebinding) cannot reach the model."""
    code, reply = post(url, user(TEXT), Host="evil.example")
    assert code == 403 and "localhost" in reply["error"]["message"]


def test_a_server_failure_is_a_500_and_the_server_goes_on(runs):
    """In-process, with the model's generation broken for one prompt."""
    from omni.infer.chat import load_chat
    from omni.serve.server import App, make_server
    chat = load_chat(runs)
    stream = chat.omni.stream

    def broken(turns, *a, **kw):
        if turns[-1].content == "break":
            raise RuntimeError("shape mismatch in the Thinker")
        return stream(turns, *a, **kw)

    chat.omni.stream = broken
    server = make_server(App(chat), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://localhost:{server.server_address[1]}"
        code, reply = post(url, user({"type": "text", "text": "break"}), key=None)
        assert code == 500 and reply["error"]["type"] == "server_error" and "shape mismatch" in reply["error"]["message"]
        assert post(url, user(TEXT), key=None)[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_listening_beyond_this_machine_warns():
    from serve import host_warning
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "SSH tunnel" in host_warning("0.0.0.0")


def test_a_spoken_question_needs_no_words(client, runs, tmp_path):
    """A clip alone is transcribed (the prompt the model was trained with); stereo at 44.1 kHz is fine."""
    stereo = np.stack([tone_speech("abc", 44100)] * 2, axis=1)
    sf.write(tmp_path / "st.wav", stereo, 44100)
    r = ask(client, [audio_part(tmp_path / "st.wav")])
    assert r.usage.prompt_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")


def test_the_reply_is_spoken_sentence_by_sentence_as_it_is_written():
    """Each sentence is voiced once it is complete, before the next is generated: the first audio does not
    wait for the whole reply."""
    import torch
    from types import SimpleNamespace

    from omni.chat import Turn
    from omni.infer.chat import Chat
    from omni.serve.api import ChatRequest, reply_events

    class Omni:
        device = "cpu"

        def stream(self, turns, *a, stats=None, **kw):
            stats.update(prompt_tokens=5, tokens=6, stopped=True)
            yield from ["the red", " circle.", " the blue", " star!", " ok"]

    speaker = SimpleNamespace(speak=lambda texts, **kw: [torch.full((len(texts[0]),), 0.1)])
    events = list(reply_events(Chat(Omni(), speaker), ChatRequest([Turn("user", "hi")], audio=True)))
    assert [e[0] if e[0] != "audio" else f"audio:{e[2].strip()}" for e in events] == [
        "text", "text", "text", "audio:the red circle.", "text", "text", "audio:the blue star!", "audio:ok", "done"]
    assert events[-1][1:] == ({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}, "stop", 0)
