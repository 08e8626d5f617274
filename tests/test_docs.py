"""Docs that run: every ```python block of README.md and docs/ (workflows included) is
executed, so a block that breaks fails CI.

The convention (also in the README's Development section):

* a ```python block runs;
* a block right after ``<!-- skip: REASON -->`` (user data, a signature, hours of work)
  is skipped with that reason; right after ``<!-- xfail: REASON -->`` it is expected to
  fail until REASON is fixed;
* each block runs on its own (it imports what it uses) in a namespace that starts from
  the prelude, in a fresh temporary folder (files it writes land there).

The prelude holds tiny stand-ins for what the docs call the user's things: the shipped
digits reference segmenter and a few embedded-world scenes (96 x 96, 11 classes, logits
at stride 4):

* ``model``, ``segmenter``, ``build_my_segmenter()``: the reference segmenter (eval
  mode, CPU); ``mask2former``: a tiny stand-in with a mask-classification model's
  outputs (``class_queries_logits``, ``masks_queries_logits``);
* ``train_loader`` / ``loader``: 4 training scenes, batches of 2 ``(images, labels)``;
* ``val_loader``: 2 test scenes (with OOD objects); ``test_logits`` ``(2, 11, 24, 24)``
  of those scenes;
* ``images`` ``(4, 3, 96, 96)``, ``logits`` ``(4, 11, 24, 24)``, ``features``
  ``(4, 64, 24, 24)`` (the classifier's input) and ``labels`` ``(4, 96, 96)`` of the
  training scenes (so images and labels pair up, as the docs' comments say);
  ``s_logits``, ``s_features`` of their noisy copies;
* ``det``: a FED-C detector fitted for 2 steps on ``loader`` (its numbers mean nothing),
  also saved as ``det.safetensors`` in each block's folder;
* ``torch`` and ``FlowEneDet``, imported.

To keep the file fast, the default preset's fit length is cut to 20 steps while the
blocks run (``flowenedet.config.PRESETS["default"]`` patched; detectors read it when
built), so a block's ``.fit(loader)`` / ``.fit_logits(...)`` without ``steps=`` trains
20 steps, not :data:`~flowenedet.config.DEFAULT_STEPS`; its numbers mean nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from . import api_signatures

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*(skip|xfail|signature):\s*(.*?)\s*-->\s*\Z", re.S)


@dataclass(frozen=True)
class Block:
    """One ```python block: its file, first line (1-based), code and mark."""

    path: Path
    line: int
    code: str
    mark: tuple[str, str] | None  # ("skip" | "xfail", reason)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The ```python blocks of ``path`` with the mark on the line before each, if any."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for found in FENCE.finditer(text):
        before = text[: found.start()].rstrip()
        last = before.rsplit("\n", 1)[-1]
        mark = MARK.search(last)
        line = text.count("\n", 0, found.start()) + 1
        kind = (mark.group(1), mark.group(2)) if mark else None
        blocks.append(Block(path, line, found.group(1), kind))
    return blocks


BLOCKS = [block for path in DOC_FILES for block in extract(path)]


class _TinyMaskClassifier(torch.nn.Module):
    """A stand-in for the user's Mask2Former: 3 queries over 11 classes (plus "no
    object"), masks at stride 4 from the pixel decoder's mask features."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = torch.nn.Module()
        self.decoder.mask_projection = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.queries = torch.nn.Parameter(torch.randn(3, 8))
        self.classes = torch.nn.Parameter(torch.randn(3, 12))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        masks = torch.einsum("qf,bfhw->bqhw", self.queries, self.decoder.mask_projection(images))
        classes = self.classes.expand(images.shape[0], -1, -1)
        return {"class_queries_logits": classes, "masks_queries_logits": masks}


def _prelude() -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from flowenedet import FlowEneDet
    from flowenedet.evaluation.worlds.digits import make_scenes
    from flowenedet.hooks import SegmenterTap
    from flowenedet.zoo import load_reference_segmenter

    torch.manual_seed(0)
    model = load_reference_segmenter()
    train, test = make_scenes("train", 4, seed=1), make_scenes("test", 2, seed=1)
    noisy = make_scenes("train", 4, seed=1, corruption="gaussian_noise", severity=2)
    tap = SegmenterTap(model, "classifier:input")
    with torch.no_grad():
        logits, features = tap(train.to_float())
        s_logits, s_features = tap(noisy.to_float())
        test_logits, _ = tap(test.to_float())
    loader = DataLoader(train, batch_size=2)
    det = FlowEneDet(model).fit(loader, steps=2, pixels_per_image=256, progress=False)
    return {
        "torch": torch,
        "FlowEneDet": FlowEneDet,
        "model": model,
        "segmenter": model,
        "build_my_segmenter": lambda: model,
        "mask2former": _TinyMaskClassifier().eval(),
        "train_loader": loader,
        "loader": loader,
        "val_loader": DataLoader(test, batch_size=2),
        "images": train.to_float(),
        "logits": logits,
        "features": features,
        "labels": train.labels,
        "s_logits": s_logits,
        "s_features": s_features,
        "test_logits": test_logits,
        "det": det,
    }


SHORT_FIT = ({}, {"steps": 20})  # the default preset while blocks run (see the header)


@pytest.fixture(scope="module")
def prelude(tmp_path_factory):
    pytest.importorskip("skimage")  # the embedded world's scenes need the bench extra
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    names = _prelude()
    saved = names["det"].save(tmp_path_factory.mktemp("prelude") / "det.safetensors")
    yield names, saved.read_bytes()
    torch.set_num_threads(threads)


def _run(block: Block, prelude: dict[str, Any]) -> None:
    exec(compile(block.code, block.name, "exec"), dict(prelude))


def _params() -> list[Any]:
    params = []
    for block in BLOCKS:
        marks: list[Any] = []
        if block.mark and block.mark[0] == "signature":
            continue  # checked against the code by test_api_signature_matches_the_code
        if block.mark and block.mark[0] == "skip":
            marks.append(pytest.mark.skip(reason=block.mark[1]))
        elif block.mark:
            marks.append(pytest.mark.xfail(reason=block.mark[1], strict=False))
        params.append(pytest.param(block, id=block.name, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_docs_block_runs(block, prelude, tmp_path, monkeypatch):
    from flowenedet import config

    names, saved_det = prelude
    if "flowenedet.export" in block.code or ".export(" in block.code:  # docs/deploy.md
        for module in ("onnx", "onnxruntime"):
            pytest.importorskip(module, reason=f"{block.name} needs the export extra")
    monkeypatch.setitem(config.PRESETS, "default", SHORT_FIT)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "det.safetensors").write_bytes(saved_det)
    _run(block, names)


def test_the_convention_finds_runnable_and_marked_blocks():
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert readme and readme[0].mark is None and "FlowEneDet(model)" in readme[0].code
    marked = [b for b in BLOCKS if b.mark]
    assert marked and all(b.mark[1] for b in marked)  # every mark gives its reason
    assert len([b for b in BLOCKS if not b.mark]) >= 10


@pytest.mark.parametrize(
    ("path", "text"), api_signatures.blocks(api_signatures.API.read_text(encoding="utf-8"))
)
def test_api_signature_matches_the_code(path, text):
    """``docs/api.md``'s signatures are the code's (``python -m tests.api_signatures
    --write`` rewrites them)."""
    expected = api_signatures.render(path)
    assert api_signatures.normalised(text) == api_signatures.normalised(expected), (
        f"docs/api.md's signature of {path} differs from the code's:\n{expected}"
    )


def test_a_drifted_signature_is_caught():
    block = "fit(loader: Iterable[Any], *, device: str | None = None) -> FlowEneDet"
    rendered = api_signatures.render("flowenedet.detector.FlowEneDet.fit")
    assert api_signatures.normalised(block) != api_signatures.normalised(rendered)
    assert "timer: StageTimer | None = None" in rendered


LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s#]*)(?:#([^)\s]+))?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of ``path``'s headings: lower case, punctuation dropped, spaces
    to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(doc):
    """A reader who follows a link between the docs lands on a file and heading that
    exist (a renamed section breaks its links loudly)."""
    broken = []
    for target, anchor in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        file = (doc.parent / target).resolve() if target else doc
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}#{anchor} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"
