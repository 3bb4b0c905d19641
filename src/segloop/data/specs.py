"""The one parser of data specs: what ``--data`` (and ``--eval-data``) names, for every command.

``load_samples(spec)`` gives a sequence of ``Sample``s for any of ``SPEC_FORMS``; ``decode`` turns them into
``Item``s (arrays), and ``SPEC_HELP`` is the line every command's ``--help`` shows. A ``synth:`` spec names
the scenes ``segloop synth`` would write with those settings (same ids, pixels and masks), generated when a
sample is used instead of read from disk: data without a bound on its size or its memory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from segloop.data.readers import (
    COD_QUERY,
    SOD_QUERY,
    DatasetError,
    read_manifest,
    read_mask_folder,
    read_reasonseg,
    read_refcoco,
    write_manifest,
)
from segloop.data.sample import Item, Sample, SceneRef
from segloop.data.synth import DIFFICULTIES, MIN_SIZE, generate_scene, scene_request, scene_seed
from segloop.tools.images import save_image, save_mask

SYNTH_FORM = "synth:DIFFICULTY:SIZE:SEED:N[:NO_TARGET_RATE]"
# Every form a data spec takes, with what it names.
SPEC_FORMS: dict[str, str] = {
    "PATH": "a manifest (JSON lines; a folder stands for PATH/manifest.jsonl)",
    SYNTH_FORM: f"N scenes of the synthetic world ({', '.join(DIFFICULTIES)}; SIZE px), generated when used",
    "reasonseg:DIR[:all]": "ReasonSeg (LISA's layout; :all, one sample per text)",
    "refcoco:ROOT:DATASET:SPLITBY:SPLIT[:IMAGES]": "RefCOCO/+/g (the refer layout)",
    "cod:IMAGES:MASKS": "camouflaged-object images and mask PNGs, matched by file stem",
    "sod:IMAGES:MASKS": "salient-object images and mask PNGs, matched by file stem",
}
SPEC_HELP = "; ".join(f"{form} ({what})" for form, what in SPEC_FORMS.items())


class SynthSamples(Sequence[Sample]):
    """The ``n`` scenes of a ``synth:`` spec. Indexing makes the sample (its query, a few milliseconds); its
    pixels are drawn when it is loaded."""

    def __init__(self, difficulty: str, size: int, seed: int, n: int, no_target_rate: float = 0.0) -> None:
        if difficulty not in DIFFICULTIES or size < MIN_SIZE or n < 1 or not 0 <= no_target_rate <= 1:
            raise DatasetError(f"synth:{difficulty}:{size}:{seed}:{n}:{no_target_rate}: need DIFFICULTY one of "
                               f"{', '.join(DIFFICULTIES)}, SIZE >= {MIN_SIZE}, N >= 1 and a rate in [0, 1]")
        self.difficulty, self.size, self.seed, self.n, self.no_target_rate = difficulty, size, seed, n, no_target_rate

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(self.n)[index]]
        if not -self.n <= index < self.n:
            raise IndexError(index)
        index %= self.n
        scene = SceneRef(seed=scene_seed(self.seed, index), size=self.size, difficulty=self.difficulty,
                         no_target_rate=self.no_target_rate)
        query, kind = scene_request(**scene.model_dump())
        return Sample(id=f"synth_{self.seed}_{index:05d}", query=query, kind=kind, scene=scene)


def _synth(text: str, parts: list[str]) -> SynthSamples:
    try:
        if len(parts) not in (4, 5):
            raise ValueError
        rate = float(parts[4]) if len(parts) == 5 else 0.0
        return SynthSamples(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), rate)
    except ValueError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{text}: expected {SYNTH_FORM}") from None


def load_samples(spec: str | Path) -> Sequence[Sample]:
    """The samples ``spec`` names (one of ``SPEC_FORMS``); ``DatasetError`` says what is wrong with it."""
    text = str(spec)
    scheme, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if scheme == "synth":
        return _synth(text, parts)
    if scheme == "reasonseg":
        if len(parts) == 1 or (len(parts) == 2 and parts[1] == "all"):
            return read_reasonseg(parts[0], all_texts=len(parts) == 2)
        raise DatasetError(f"{text}: expected reasonseg:DIR or reasonseg:DIR:all")
    if scheme == "refcoco":
        if len(parts) in (4, 5):
            return read_refcoco(*parts)
        raise DatasetError(f"{text}: expected refcoco:ROOT:DATASET:SPLITBY:SPLIT[:IMAGES]")
    if scheme in ("cod", "sod"):
        if len(parts) == 2:
            query = COD_QUERY if scheme == "cod" else SOD_QUERY
            return read_mask_folder(parts[0], parts[1], query=query, kind=scheme)
        raise DatasetError(f"{text}: expected {scheme}:IMAGES:MASKS")
    path = Path(text)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DatasetError(f"{text}: no such manifest file, and not a data spec (one of: {', '.join(SPEC_FORMS)})")
    return read_manifest(path)


class _Generated(Sequence[Item]):
    """Synthetic samples as items, each generated when indexed."""

    def __init__(self, samples: SynthSamples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> list[Item]: ...

    def __getitem__(self, index: int | slice) -> Item | list[Item]:
        if isinstance(index, slice):
            return [sample.load() for sample in self.samples[index]]
        return self.samples[index].load()


def decode(samples: Sequence[Sample]) -> Sequence[Item]:
    """The samples as items: files decoded now, once (decoding PNGs every episode would dominate a CPU
    rollout); synthetic scenes generated each time one is indexed (no bound on their number)."""
    if isinstance(samples, SynthSamples):
        return _Generated(samples)
    return [sample.load() for sample in samples]


def load_items(spec: str | Path) -> Sequence[Item]:
    """``decode(load_samples(spec))``."""
    return decode(load_samples(spec))


def first_items(spec: str | Path, n: int) -> list[Item]:
    """The first ``n`` items of ``spec`` (a held-out set), decoded once."""
    samples = load_samples(spec)
    return [sample.load() for sample in samples[: min(n, len(samples))]]


def spec_identity(spec: str) -> str:
    """The spec as a result file records it: a path (or a reader spec's paths) made absolute, so the same data
    named from another folder is the same configuration."""
    if Path(spec).exists():
        return str(Path(spec).resolve())
    head, sep, rest = spec.partition(":")
    if not sep:
        return spec
    parts = [str(Path(p).resolve()) if p and Path(p).exists() else p for p in rest.split(":")]
    return f"{head}:{':'.join(parts)}"


def write_world(out: Path, n: int, seed: int, size: int, difficulty: str, no_target_rate: float,
                progress: bool = True) -> Path:
    """Write the scenes of ``synth:DIFFICULTY:SIZE:SEED:N:NO_TARGET_RATE`` as ``images/``, ``masks/`` and
    ``manifest.jsonl`` under ``out`` (what ``segloop synth`` does)."""
    from tqdm import tqdm

    scenes = SynthSamples(difficulty, size, seed, n, no_target_rate)
    samples = []
    for index in tqdm(range(n), desc="synth", unit="scene", disable=not progress, file=sys.stderr):
        named = scenes[index]
        scene = generate_scene(**named.scene.model_dump())
        image = save_image(scene.image, out / "images" / f"{named.id}.png")
        mask = None if scene.mask is None else save_mask(scene.mask, out / "masks" / f"{named.id}.png")
        meta = {k: v for k, v in scene.meta.items() if k not in ("kind", "objects")}
        samples.append(Sample(id=named.id, image=image, query=scene.query, mask=mask, kind=named.kind, meta=meta))
    return write_manifest(samples, out / "manifest.jsonl")
