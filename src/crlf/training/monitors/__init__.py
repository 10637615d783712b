"""What watches a run while it trains, without changing it: the online linear probe, the kNN monitor, the
collapse watch and TensorBoard. None of them draws from the run's random streams."""
