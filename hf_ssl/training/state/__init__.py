"""What a run keeps and decides across its life: checkpoints and resume, run control (signals, time budget, early
stopping) and the metric history."""
