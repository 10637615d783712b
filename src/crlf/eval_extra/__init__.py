"""Evaluation beyond the linear probe and kNN (issue 4): label efficiency, few-shot episodes, retrieval and
clustering on frozen features; opt-in fine-tuning and a supervised baseline; the one-page HTML report;
seed sweeps and run comparison. Each module does one job; ``pipeline.evaluate_run`` calls the cheap ones."""
