"""Synthetic speech for the built-in dataset: espeak-ng (8 English accents x ~100 variants) and flite.

Every file is 16 kHz mono 16-bit PCM WAV. espeak-ng speaks at 22.05 kHz and is resampled by sox; flite's
16 kHz voices are written directly. Synthesis runs one short subprocess per utterance, spread over a
process pool (about 60 utterances per second per core for espeak, 20 for flite).

    voices = espeak_voices()                       # [Voice("espeak", "en-us+Alex"), ...]
    utts = [Utterance("the circle is red", Voice("flite", "slt"), "/tmp/a.wav")]
    seconds = synthesize_all(utts, workers=2)      # list of durations, in the order given
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import soundfile as sf

from omni.builtin.text import MissingSource
from omni.text_norm import normalize_transcript

SAMPLE_RATE = 16000
FLITE_VOICES = ("slt", "awb", "kal16", "rms")  # flite's 16 kHz voices (`kal` is 8 kHz: left out)
# Whispered and croaking variants carry almost no voicing; a tiny CTC model trained on them learns noise.
EXCLUDED_VARIANTS = {"whisper", "female_whisper", "croak"}
TOOLS = {"espeak-ng": "espeak-ng", "sox": "sox", "flite": "flite"}  # program -> Debian package


@dataclass(frozen=True)
class Voice:
    """engine "espeak" with name "<accent>+<variant>" (e.g. "en-gb-scotland+Alex"), or engine "flite"."""
    engine: str
    name: str

    @property
    def speaker(self) -> str:
        """The manifest's `speaker` value, e.g. "espeak:en-us+Alex" or "flite:slt"."""
        return f"{self.engine}:{self.name}"

    @property
    def accent(self) -> str:
        return self.name.split("+")[0]


@dataclass(frozen=True)
class Utterance:
    """What to say, by whom, where to write it; rate (words per minute) applies to both engines (flite
    stretches its durations by 175 / rate), pitch (0-99) to espeak."""
    text: str
    voice: Voice
    path: str
    rate: int = 175
    pitch: int = 50


def require_tools(programs=tuple(TOOLS)) -> None:
    """Raise MissingSource naming the Debian package and the install command for a missing program."""
    for prog in programs:
        if shutil.which(prog) is None:
            pkg = TOOLS[prog]
            raise MissingSource(f"the `{prog}` program is needed for the built-in speech: install it with "
                                f"`sudo apt-get install -y {pkg}` (or run `bash scripts/setup_system.sh`)")


def espeak_accents() -> list[str]:
    """English accents of espeak-ng's own voices (gmw/…), e.g. en-gb, en-us, en-gb-scotland, en-029; the
    mbrola voices it also lists need extra packages and are skipped."""
    require_tools(["espeak-ng"])
    out = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    accents = []
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) >= 5 and f[4].startswith("gmw/") and f[1] not in accents:
            accents.append(f[1])
    return accents


def espeak_variants() -> list[str]:
    """Variant names (e.g. "Alex", "f3", "klatt2") minus EXCLUDED_VARIANTS, in espeak's order."""
    require_tools(["espeak-ng"])
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[3] for line in out.splitlines()[1:] if len(line.split()) >= 5]
    return [n for n in names if n not in EXCLUDED_VARIANTS]


def espeak_voices(accents: list[str] | None = None) -> list[Voice]:
    """Every accent x variant combination (~8 x 95)."""
    variants = espeak_variants()
    return [Voice("espeak", f"{a}+{v}") for a in (accents or espeak_accents()) for v in variants]


def synthesize(u: Utterance) -> float:
    """Write one utterance as 16 kHz mono 16-bit WAV; return its duration in seconds."""
    try:
        return _synthesize(u)
    except subprocess.CalledProcessError as e:  # say which voice and sentence, not just the exit status
        err = (e.stderr or b"").decode(errors="replace").strip()[:200]
        raise RuntimeError(f"{e.cmd[0]} failed (exit {e.returncode}) for {u.voice.speaker} saying {u.text!r} "
                           f"-> {u.path}: {err}") from None


def _synthesize(u: Utterance) -> float:
    Path(u.path).parent.mkdir(parents=True, exist_ok=True)
    if u.voice.engine == "espeak":
        wav = subprocess.run(["espeak-ng", "-v", u.voice.name, "-s", str(u.rate), "-p", str(u.pitch),
                              "--stdin", "--stdout"], input=u.text.encode(), capture_output=True, check=True).stdout
        # -R: sox dithers the 16-bit output with a fresh random seed each run; repeatable builds need a fixed one
        subprocess.run(["sox", "-R", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", u.path],
                       input=wav, capture_output=True, check=True)
    elif u.voice.engine == "flite":
        stretch = ["--setf", f"duration_stretch={175 / u.rate:.3f}"] if u.rate != 175 else []
        subprocess.run(["flite", "-voice", u.voice.name, *stretch, "-t", u.text, "-o", u.path], capture_output=True,
                       check=True)
        if sf.info(u.path).samplerate != SAMPLE_RATE:  # a voice at another rate: resample in place
            tmp = u.path + ".tmp.wav"
            subprocess.run(["sox", "-R", u.path, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", tmp], check=True,
                           capture_output=True)
            Path(tmp).replace(u.path)
    else:
        raise ValueError(f"unknown speech engine {u.voice.engine!r} (expected espeak or flite)")
    info = sf.info(u.path)
    if info.frames == 0:
        raise RuntimeError(f"{u.voice.speaker} produced empty audio for {u.text!r} ({u.path})")
    return info.frames / info.samplerate


def synthesize_all(utts: list[Utterance], workers: int = 2, desc: str = "speech") -> list[float]:
    """Synthesize on `workers` processes; returns durations (seconds) in input order."""
    engines = {u.voice.engine for u in utts}
    require_tools((["espeak-ng", "sox"] if "espeak" in engines else []) + (["flite"] if "flite" in engines else []))
    if workers <= 1 or len(utts) < 8:
        return [synthesize(u) for u in utts]
    from tqdm import tqdm
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(synthesize, utts, chunksize=16), total=len(utts), desc=desc, leave=False,
                         mininterval=2.0))


# ---------------------------------------------------------------- transcripts

_ABBREV = re.compile(r"\b(mr|mrs|ms|dr|st|jr|sr|vs|etc|e\.g|i\.e|no)\.", re.I)
_SPEAKABLE = re.compile(r"^[A-Za-z' ,.;:!?\"()\-]+$")  # no digits or symbols whose spoken form is ambiguous


def speakable_sentences(document: str, min_words: int = 4, max_words: int = 16) -> list[str]:
    """Sentences of a document that a synthesizer says exactly as their normalized transcript reads:
    4–16 words, only letters and plain punctuation, no abbreviations."""
    out = []
    for s in re.split(r"(?<=[.!?;:])\s+", document):
        s = s.strip().strip("\"'()").strip()
        if not s or not _SPEAKABLE.match(s) or _ABBREV.search(s):
            continue
        if min_words <= len(normalize_transcript(s).split()) <= max_words:
            out.append(s)
    return out
