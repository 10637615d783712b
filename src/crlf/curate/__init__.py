"""Curation of a folder of images with a run's encoder: ``crlf curate`` (``crlf classify``, a probe from a
few labels, is :mod:`crlf.classify`, beside the evaluation whose probe it fits).

Small modules of plain functions over ``(N, D)`` embedding arrays:

* :mod:`~crlf.curate.graph`: the k-nearest-neighbour graph (faiss), exact or approximate with measured recall;
* :mod:`~crlf.curate.duplicates`: exact copies by hash, near-copies proposed by embeddings, confirmed by pixels;
* :mod:`~crlf.curate.outliers`: embedding and pixel-statistics scores, the largest counts; the flags;
* :mod:`~crlf.curate.select`: what to label first (TypiClust ``typical``, k-center ``diverse``, ``random``);
* :mod:`~crlf.curate.label_issues`: confident learning on out-of-fold probe probabilities;
* :mod:`~crlf.curate.page`: ``curation.html``; :mod:`~crlf.curate.source`: images, labels, embeddings;
* :mod:`~crlf.curate.command`: ``crlf curate`` (:class:`~crlf.curate.command.CurateOptions` in,
  :class:`~crlf.curate.command.Curation` out); :mod:`~crlf.curate.arguments`: its flags (and classify's).
"""

DUP_THRESHOLD = 0.85  # cosine similarity of duplicate candidates: calibrated in bench/curate.py
PIXEL_THRESHOLD = 0.90  # correlation of aligned thumbnails that confirms one: bench/curate.py
EDGE_THRESHOLD = 0.80  # correlation of the aligned thumbnails' edges that confirms one: bench/curate.py

# Outlier score from which an image is kept out of the selection: bench/curate_loso.py, leave-one-set-out
# over sixteen planted sets with a 2-epoch and a 62.1 %-linear encoder: 2.5 on 14 of the 16 held-out sets
# (3.0 on the others); it keeps 4-8 % of ordinary images out, the least typical (BENCHMARKS.md, issue 27).
FLAG_Z = 2.5
# ... and from which an image is never called a near-copy (crlf.curate.duplicates): chosen with the rule on
# 14 of the 15 held-out sets it was measured on (50k-blank has too many pairs to score). Higher than FLAG_Z:
# a copy of an unusual photograph is unusual too, and the 5 % past 2.5 would take their copies with them
# (near-copy recall 0.90-0.94 on five sets, fourteen-set protocol).
COPY_FLAG_Z = 3.5
