"""A synthetic BirdCLEF-style dataset: species-specific calls in pink noise and wind rumble.

Used by the demo, the tests and the benchmark, so that they need no download. Each species has a
call shape of its own (whistles, trills, chirps, buzzes, warbles, hoots, ...), varied per
recording in pitch, tempo and level; some recordings carry a quieter second species (listed in
`secondary_labels`); recordings differ in format, sample rate, channels and length, as real data does.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from birdsed.data.metadata import AUDIO_DIR, METADATA_FILE

CallMaker = Callable[[np.random.Generator, int, float], np.ndarray]


def _tone(frequency: np.ndarray, sample_rate: int, harmonics: Sequence[float] = (1.0,)) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    return sum(weight * np.sin((order + 1) * phase) for order, weight in enumerate(harmonics))


def _envelope(length: int, attack: float = 0.1) -> np.ndarray:
    ramp = max(1, int(length * attack))
    window = np.ones(length)
    window[:ramp] = np.linspace(0, 1, ramp)
    window[-ramp:] = np.linspace(1, 0, ramp)
    return window


def _seconds(sample_rate: int, seconds: float) -> np.ndarray:
    return np.arange(int(seconds * sample_rate)) / sample_rate


def descending_whistle(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 0.35)
    frequency = pitch * (4200 - 1800 * t / t[-1])
    return _tone(frequency, sample_rate, (1.0, 0.2)) * _envelope(len(t))


def fast_trill(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 0.9)
    pulses = (np.sin(2 * np.pi * 22 * t) > 0.3).astype(float)
    return _tone(np.full(len(t), 5200 * pitch), sample_rate) * pulses * _envelope(len(t), 0.05)


def rising_chirp(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 0.12)
    frequency = pitch * (2000 + 3500 * (t / t[-1]) ** 2)
    return _tone(frequency, sample_rate) * _envelope(len(t), 0.2)


def two_notes(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    high = _tone(np.full(int(0.22 * sample_rate), 3300 * pitch), sample_rate, (1.0, 0.3))
    low = _tone(np.full(int(0.3 * sample_rate), 2500 * pitch), sample_rate, (1.0, 0.3))
    gap = np.zeros(int(0.08 * sample_rate))
    return np.concatenate([high * _envelope(len(high)), gap, low * _envelope(len(low))])


def buzz(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 0.6)
    carrier = _tone(np.full(len(t), 7000 * pitch), sample_rate) + 0.7 * _tone(
        np.full(len(t), 7600 * pitch), sample_rate
    )
    modulation = 0.5 * (1 + np.sin(2 * np.pi * 90 * t))
    return carrier * modulation * _envelope(len(t))


def warble(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 1.1)
    frequency = pitch * (3600 + 700 * np.sin(2 * np.pi * 11 * t + rng.uniform(0, 6.3)))
    return _tone(frequency, sample_rate, (1.0, 0.4, 0.1)) * _envelope(len(t), 0.08)


def hoot(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    t = _seconds(sample_rate, 0.45)
    return _tone(np.full(len(t), 650 * pitch), sample_rate, (1.0, 0.6, 0.3)) * _envelope(len(t), 0.3)


def click_series(rng: np.random.Generator, sample_rate: int, pitch: float) -> np.ndarray:
    length = int(0.7 * sample_rate)
    clicks = np.zeros(length)
    for start in range(0, length - 200, int(0.07 * sample_rate)):
        burst = rng.normal(size=120) * np.hanning(120)
        clicks[start : start + 120] += burst
    # band-limit the clicks to 2-6 kHz so they sound (and look) like a dry rattle
    spectrum = np.fft.rfft(clicks)
    frequencies = np.fft.rfftfreq(length, 1 / sample_rate)
    spectrum[(frequencies < 2000 * pitch) | (frequencies > 6000 * pitch)] = 0
    return np.fft.irfft(spectrum, n=length)


SPECIES: dict[str, CallMaker] = {
    "dwnwhi1": descending_whistle,
    "trillr1": fast_trill,
    "chirpy1": rising_chirp,
    "twonot1": two_notes,
    "buzzer1": buzz,
    "warble1": warble,
    "hooter1": hoot,
    "rattle1": click_series,
}


def pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Noise with power falling as 1/f, unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=length))
    scale = np.ones(len(spectrum))
    scale[1:] = 1 / np.sqrt(np.arange(1, len(spectrum)))
    noise = np.fft.irfft(spectrum * scale, n=length)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def wind_rumble(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Slowly gusting low-frequency noise, unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=length))
    spectrum[np.fft.rfftfreq(length, 1 / sample_rate) > 300] = 0
    rumble = np.fft.irfft(spectrum, n=length)
    gusts = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * np.arange(length) / sample_rate)
    rumble *= gusts
    return rumble / (np.sqrt(np.mean(rumble**2)) + 1e-12)


def place_calls(
    track: np.ndarray, species: str, rng: np.random.Generator, sample_rate: int, level: float, spacing: float
) -> None:
    """Add bouts of `species` calls along the track, about every `spacing` seconds."""
    pitch = rng.uniform(0.92, 1.08)
    time = rng.uniform(0.0, min(1.0, spacing))
    while time < len(track) / sample_rate:
        for _ in range(int(rng.integers(1, 4))):
            call = SPECIES[species](rng, sample_rate, pitch * rng.uniform(0.98, 1.02))
            start = int(time * sample_rate)
            if start >= len(track):
                return
            end = min(len(track), start + len(call))
            track[start:end] += level * rng.uniform(0.6, 1.0) * call[: end - start]
            time += len(call) / sample_rate + rng.uniform(0.05, 0.2)
        time += rng.uniform(0.5, 1.5) * spacing


def synthesize_recording(
    rng: np.random.Generator, primary: str, secondary: Sequence[str], seconds: float, sample_rate: int
) -> np.ndarray:
    """A mono recording: background noise, the primary species, quieter secondary species."""
    length = int(seconds * sample_rate)
    track = 0.03 * rng.uniform(0.5, 1.5) * pink_noise(rng, length)
    track += 0.03 * rng.uniform(0.3, 1.5) * wind_rumble(rng, length, sample_rate)
    place_calls(track, primary, rng, sample_rate, level=0.25, spacing=rng.uniform(1.0, 2.0))
    for other in secondary:
        place_calls(track, other, rng, sample_rate, level=0.08, spacing=rng.uniform(2.5, 4.0))
    peak = np.max(np.abs(track)) + 1e-9
    return (track / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


FORMATS = {
    ".ogg": ("OGG", "VORBIS"),
    ".flac": ("FLAC", "PCM_16"),
    ".wav": ("WAV", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def make_dataset(
    root: Path,
    species: int = 6,
    recordings_per_species: int = 12,
    seconds: tuple[float, float] = (4.0, 15.0),
    sample_rates: Sequence[int] = (32000, 44100, 48000, 22050),
    formats: Sequence[str] = (".ogg", ".flac", ".wav", ".mp3"),
    seed: int = 0,
) -> Path:
    """Write `train_metadata.csv` and `train_audio/<label>/<file>` under `root`; returns `root`."""
    if not 1 <= species <= len(SPECIES):
        raise ValueError(f"species must be between 1 and {len(SPECIES)}")
    rng = np.random.default_rng(seed)
    labels = list(SPECIES)[:species]
    rows = []
    for label in labels:
        (root / AUDIO_DIR / label).mkdir(parents=True, exist_ok=True)
        for number in range(recordings_per_species):
            rows.append(_write_recording(root, label, labels, number, rng, seconds, sample_rates, formats))
    with open(root / METADATA_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _write_recording(
    root: Path,
    label: str,
    labels: list[str],
    number: int,
    rng: np.random.Generator,
    seconds: tuple[float, float],
    sample_rates: Sequence[int],
    formats: Sequence[str],
) -> dict[str, str]:
    others = [other for other in labels if other != label]
    secondary = list(rng.choice(others, size=1)) if others and rng.random() < 0.3 else []
    sample_rate = int(sample_rates[(number // 2) % len(sample_rates)])
    suffix = formats[number % len(formats)]
    waveform = synthesize_recording(rng, label, secondary, rng.uniform(*seconds), sample_rate)
    if number % 3 == 2:
        # Stereo, with the channels a little different, as a real two-microphone recording is.
        waveform = np.stack([waveform, 0.8 * waveform], axis=1)
    filename = f"{label}/XC{100000 + 1000 * labels.index(label) + number}{suffix}"
    container, subtype = FORMATS[suffix]
    write_audio(root / AUDIO_DIR / filename, waveform, sample_rate, container, subtype)
    rating = "" if rng.random() < 0.15 else f"{rng.choice([2.5, 3.0, 3.5, 4.0, 4.5, 5.0]):.1f}"
    return {
        "primary_label": label,
        "secondary_labels": str([str(other) for other in secondary]),
        "type": "['song']",
        "latitude": f"{rng.uniform(-30, 50):.4f}",
        "longitude": f"{rng.uniform(-120, 120):.4f}",
        "scientific_name": f"Synthetica {label}",
        "common_name": f"Synthetic {label}",
        "author": "birdsed",
        "license": "Creative Commons Attribution 4.0",
        "rating": rating,
        "url": "",
        "filename": filename,
    }


# ---- soundscapes: long passive recordings with a domain shift from the focal clips ----

SOUNDSCAPE_LABELS_FILE = "soundscape_labels.csv"


def insect_chorus(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Cicada-like stridulation: a band of noise high in the spectrum, pulsing tens of times a second; unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=length))
    frequencies = np.fft.rfftfreq(length, 1 / sample_rate)
    centre = min(rng.uniform(3500, 7000), 0.85 * sample_rate / 2)  # where trills, chirps and rattles sing too
    spectrum[np.abs(frequencies - centre) > rng.uniform(300, 900)] = 0
    band = np.fft.irfft(spectrum, n=length)
    t = np.arange(length) / sample_rate
    pulses = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(25, 70) * t)) ** 2
    swells = 0.4 + 0.6 * (0.5 * (1 + np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6.3))))
    chorus = band * pulses * swells
    return chorus / (np.sqrt(np.mean(chorus**2)) + 1e-12)


def rain(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Drops on leaves: short broadband clicks at random times, some loud; unit RMS."""
    drops = np.zeros(length)
    count = int(rng.uniform(15, 50) * length / sample_rate)
    decay = np.exp(-np.arange(int(0.004 * sample_rate)) / (0.0008 * sample_rate))
    for start in rng.integers(0, max(1, length - len(decay)), size=count):
        drops[start : start + len(decay)] += rng.pareto(3.0) * rng.normal(size=len(decay)) * decay
    return drops / (np.sqrt(np.mean(drops**2)) + 1e-12)


def place_call_events(
    track: np.ndarray,
    species: str,
    rng: np.random.Generator,
    sample_rate: int,
    level: tuple[float, float],
    spacing: tuple[float, float],
) -> list[tuple[float, float]]:
    """Add bouts of `species` calls at random times; returns each call's (start, end) in seconds."""
    pitch = rng.uniform(0.92, 1.08)
    events = []
    time = rng.uniform(0.0, spacing[1])
    while time < len(track) / sample_rate:
        for _ in range(int(rng.integers(1, 4))):
            call = SPECIES[species](rng, sample_rate, pitch * rng.uniform(0.98, 1.02))
            start = int(time * sample_rate)
            if start >= len(track):
                break
            end = min(len(track), start + len(call))
            track[start:end] += rng.uniform(*level) * call[: end - start]
            events.append((start / sample_rate, end / sample_rate))
            time += len(call) / sample_rate + rng.uniform(0.05, 0.3)
        time += rng.uniform(*spacing)
    return events


def synthesize_soundscape(
    rng: np.random.Generator,
    labels: Sequence[str],
    seconds: float,
    sample_rate: int,
    level: tuple[float, float] = (0.02, 0.07),
) -> tuple[np.ndarray, dict[str, list[tuple[float, float]]]]:
    """A passive recording unlike the focal clips: insects, rain, pink noise and wind, with quieter calls
    of 2-4 species whose bouts overlap; returns the waveform and each species' calls (start, end)."""
    length = int(seconds * sample_rate)
    track = 0.03 * rng.uniform(0.5, 1.2) * pink_noise(rng, length)
    track += 0.03 * rng.uniform(0.3, 1.2) * wind_rumble(rng, length, sample_rate)
    track += 0.03 * rng.uniform(0.3, 1.0) * insect_chorus(rng, length, sample_rate)
    if rng.random() < 0.5:
        track += 0.02 * rng.uniform(0.3, 1.0) * rain(rng, length, sample_rate)
    present = rng.choice(list(labels), size=min(len(labels), int(rng.integers(2, 5))), replace=False)
    events = {str(label): place_call_events(track, label, rng, sample_rate, level, (4.0, 16.0)) for label in present}
    peak = np.max(np.abs(track)) + 1e-9
    return (track / peak * rng.uniform(0.3, 0.9)).astype(np.float32), events


def window_labels(events: dict[str, list[tuple[float, float]]], start: float, end: float) -> list[str]:
    """Species with a call overlapping [start, end) by more than 50 ms."""
    return sorted(label for label, calls in events.items() if any(min(end, b) - max(start, a) > 0.05 for a, b in calls))


def make_soundscapes(
    root: Path,
    species: int = 6,
    files: int = 4,
    seconds: float = 60.0,
    labelled: bool = True,
    window: float = 5.0,
    sample_rate: int = 32000,
    formats: Sequence[str] = (".ogg", ".flac"),
    level: tuple[float, float] = (0.02, 0.07),
    seed: int = 0,
) -> Path:
    """Write `files` soundscapes under `root` (in two site folders), and with `labelled` their
    `soundscape_labels.csv` of consecutive `window`-second windows; returns `root`."""
    if not 1 <= species <= len(SPECIES):
        raise ValueError(f"species must be between 1 and {len(SPECIES)}")
    rng = np.random.default_rng(seed)
    labels = list(SPECIES)[:species]
    rows = []
    for number in range(files):
        waveform, events = synthesize_soundscape(rng, labels, seconds, sample_rate, level)
        name = f"site{number % 2}/SC{seed:04d}_{number:03d}{formats[number % len(formats)]}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        container, subtype = FORMATS[formats[number % len(formats)]]
        write_audio(root / name, waveform, sample_rate, container, subtype)
        for index in range(int(np.ceil(seconds / window - 1e-9))):
            start, end = index * window, min((index + 1) * window, seconds)
            rows.append(
                {
                    "filename": name,
                    "start": f"{start:g}",
                    "end": f"{end:g}",
                    "labels": " ".join(window_labels(events, start, end)),
                }
            )
    if labelled:
        with open(root / SOUNDSCAPE_LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["filename", "start", "end", "labels"])
            writer.writeheader()
            writer.writerows(rows)
    return root


# Frames per write call: libvorbis allocates its work buffer on the stack for all frames of one call, and one
# call with a minute of audio overflows it (a segmentation fault; libsndfile issue 1095). Chunks stay far below.
WRITE_CHUNK_FRAMES = 1 << 16


def write_audio(path: Path, waveform: np.ndarray, sample_rate: int, container: str, subtype: str) -> None:
    """`soundfile.write` in chunks, so that long OGG Vorbis files are written without crashing libvorbis."""
    channels = 1 if waveform.ndim == 1 else waveform.shape[1]
    with sf.SoundFile(path, "w", sample_rate, channels, subtype=subtype, format=container) as handle:
        for start in range(0, len(waveform), WRITE_CHUNK_FRAMES):
            handle.write(waveform[start : start + WRITE_CHUNK_FRAMES])
