"""Running the algorithm: what a run's settings build (`setup`), the training loop
(`training`), the run directory (`directory`), its checkpoints (`checkpoint`) and metrics
(`metrics_log`), a graceful stop (`stop_signals`) and atomic file writes (`io`).

The algorithm itself (`reptorch.algorithms`, `reptorch.meta`, ...) never imports this package.
"""
