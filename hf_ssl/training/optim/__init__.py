"""Optimisers (AdamW, SGD, LARS), learning-rate and other schedules as pure functions of the step, and the EMA
update of teacher networks."""
