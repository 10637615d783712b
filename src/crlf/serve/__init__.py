"""Serving a trained run to people: nearest-neighbour search over its images (:mod:`.search`) and the web demo
(:mod:`.demo`)."""
