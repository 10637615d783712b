"""Pretraining: :func:`crlf.training.pretrain.pretrain` assembles a run and the loop (:mod:`.loop`) trains it
under one :mod:`.schedule` (by epochs or by a time budget, :mod:`.budget_planner`), with one step for every
method (:mod:`.step`), the measured precision (:mod:`.precision`), checkpoints, several processes
(:mod:`.distributed`, :mod:`.launch`), the optimisers and the monitors that watch a run (:mod:`.monitors`)."""
