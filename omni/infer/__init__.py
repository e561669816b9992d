"""Using trained models: each module a small layer over artifacts loaded by omni.artifacts.load_artifact.

    asr.py       transcription (greedy CTC), manifest evaluation; `python -m omni.asr`
    tts.py       speaking: Talker codes -> codec mel -> waveform; `python -m omni.tts`
    generate.py  Thinker text generation from token ids or input embeddings (KV-cached)

Nothing here imports the training engine.
"""
