"""serve.py's server: the chat page and an OpenAI-compatible API over one model in memory.

    api.py       OpenAI's Chat Completions (a subset) read into μOmni's turns, and the replies written back
    worker.py    the queue: one thread runs the model, requests in the order they came
    server.py    the HTTP routes (standard library only): the page, /v1/..., auth, size limits
    static/      index.html, the page (its own CSS and JavaScript, nothing fetched from elsewhere)
"""
