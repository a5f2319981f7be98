"""The seed papers' learning-rate schedule and early-stop rule.

Two modes:

* **fixed iterations** (short runs, tests, benchmarks): constant learning rate for the first
  half, then linear decay to zero over the second half — CycleGAN's reference schedule
  (n_epochs = n_epochs_decay) expressed in iterations.
* **epochs** (the papers' long runs, Wang et al. 2018/2021): constant learning rate for
  ``constant_epochs`` (100) epochs, or until the monitored loss has not improved for
  ``patience_constant`` (10) epochs, whichever comes first; then linear decay over
  ``decay_epochs`` (100). Training stops when the loss has not improved for ``patience_decay``
  (20) epochs in decay, when the decay reaches zero, or at ``max_epochs``.

The state is a plain dict so it travels in a checkpoint's JSON.
"""


class Schedule:
    def __init__(self, config, epoch_length):
        self.epoch_length = int(epoch_length)
        self.fixed = config.get("iterations") is not None
        self.total_iterations = int(config["iterations"]) if self.fixed else int(config["max_epochs"]) * self.epoch_length
        self.constant_epochs = int(config.get("constant_epochs", 100))
        self.patience_constant = int(config["patience_constant"])
        self.patience_decay = int(config["patience_decay"])
        self.decay_epochs = int(config["decay_epochs"])
        self.state = {"phase": "constant", "epochs": 0, "best": None, "since_best": 0, "decay_start_iteration": None, "stopped": False}

    def lr_factor(self, iteration):
        """Multiplier of the base learning rate at ``iteration`` (0-based)."""
        if self.fixed:
            half = self.total_iterations / 2.0
            if iteration < half:
                return 1.0
            return max(0.0, 1.0 - (iteration - half) / max(self.total_iterations - half, 1.0))
        start = self.state["decay_start_iteration"]
        if start is None:
            return 1.0
        span = self.decay_epochs * self.epoch_length
        return max(0.0, 1.0 - (iteration - start) / max(span, 1))

    def end_epoch(self, loss, iteration):
        """Record an epoch's mean monitored loss; returns (improved, stop)."""
        s = self.state
        s["epochs"] = s.get("epochs", 0) + 1
        improved = s["best"] is None or loss < s["best"]
        if improved:
            s["best"], s["since_best"] = float(loss), 0
        else:
            s["since_best"] += 1
        if self.fixed:
            return improved, False
        plateau = s["since_best"] >= self.patience_constant
        if s["phase"] == "constant" and (plateau or s["epochs"] >= self.constant_epochs):
            s["phase"], s["since_best"], s["decay_start_iteration"] = "decay", 0, int(iteration)
        elif s["phase"] == "decay" and (s["since_best"] >= self.patience_decay or self.lr_factor(iteration) <= 0.0):
            s["stopped"] = True
        return improved, s["stopped"]

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state.update(state)
