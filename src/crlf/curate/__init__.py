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
