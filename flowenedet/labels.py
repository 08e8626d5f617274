"""Label conventions shared by every loader, metric and detector in flowenedet.

Label maps are integer tensors of shape ``(B, H, W)``:

* ``0 .. K-1`` -- an in-distribution class the segmenter knows;
* ``UNLABELLED_ID`` (253) -- an in-distribution pixel whose class is not annotated
  (anomaly benchmarks such as Fishyscapes or SegmentMeIfYouCan label only
  "anomaly / not anomaly"); it counts as a negative for OOD detection and is left out
  of misclassification (IDM) metrics;
* ``OOD_INDEX`` (254) -- a pixel of an object class the segmenter never saw;
* ``IGNORE_INDEX`` (255) -- void; left out of everything.
"""

from __future__ import annotations

IGNORE_INDEX: int = 255
OOD_INDEX: int = 254
UNLABELLED_ID: int = 253
