"""Label conventions shared by every loader, metric and detector in flowenedet.

Label maps are integer tensors of shape ``(B, H, W)``:

* ``0 .. K-1`` -- an in-distribution class the segmenter knows;
* ``UNLABELLED_ID`` (253) -- an in-distribution pixel whose class is not annotated
  (anomaly benchmarks such as Fishyscapes or SegmentMeIfYouCan label only
  "anomaly / not anomaly"); it counts as a negative for OOD detection and is left out
  of misclassification (IDM) metrics;
* ``OOD_INDEX`` (254) -- a pixel of an object class the segmenter never saw;
* ``IGNORE_INDEX`` (255) -- void; left out of every metric. In training scenes void
  often holds objects of no known class (Cityscapes' ego vehicle, static and dynamic
  objects), so a detector may learn from it as "miss" (``void_as_miss``);
* ``PADDING_INDEX`` (-1) -- no image at all: the border a loader or a fit-time
  augmentation (random crop past the image) adds. Left out of everything, also with
  ``void_as_miss``. It never occurs in a label file (PNG labels are non-negative).
"""

from __future__ import annotations

IGNORE_INDEX: int = 255
OOD_INDEX: int = 254
UNLABELLED_ID: int = 253
PADDING_INDEX: int = -1
