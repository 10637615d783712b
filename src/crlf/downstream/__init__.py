"""Evaluations of frozen features beyond the linear probe and kNN (``crlf.evaluate``): label efficiency,
few-shot episodes, retrieval and clustering, the protocol guards, and the opt-in fine-tuning and supervised
baseline. Each module does one job; ``pipeline.evaluate_run`` calls the cheap ones through ``metrics``."""
