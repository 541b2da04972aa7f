"""Stop a run cleanly on a signal: save a checkpoint first, then exit with a resumable status."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from fpt.runs.health import STOP_SIGNALS, StopForSignal, say
from fpt.training.callbacks import is_final_step


class GracefulStop(Callback):
    """Catches SIGINT/SIGTERM/SIGUSR2 (runs.health.STOP_SIGNALS) during ``fit``; saves ``last.ckpt`` at a step boundary and stops.

    Installed with :meth:`installed` around training. Lightning registers its own SIGTERM notifier
    when ``trainer.fit`` starts (it raises ``SIGTERMException`` at the end of the next batch, before
    that step's validation and without a checkpoint); ``on_train_start`` puts this handler back in
    its place, so a stop always happens where Lightning's own checkpoints are taken.
    """

    def __init__(self, last: Path, eval_every: int):
        self.last = Path(last)
        self.eval_every = eval_every
        self.signum: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    # handler
    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            say(f"fpt: second {signal.Signals(signum).name}: stopping now; the last checkpoint ({self.last}) stays intact")
            self._restore()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        say(f"fpt: received {signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
             "(send it again to stop at once)")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in STOP_SIGNALS:
            if s not in self._previous:
                self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @contextmanager
    def installed(self):
        self._install()
        try:
            yield self
        finally:
            self._restore()

    # callback
    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                signal.signal(s, self._handler)  # replaces Lightning's SIGTERM notifier for the training loop

    on_test_start = on_train_start  # a signal during the test lets it finish (seconds), then the run ends normally

    def _stop(self, trainer) -> None:
        trainer.save_checkpoint(self.last, weights_only=False)
        self.saved_step = int(trainer.global_step)
        # Leave by an exception, not trainer.should_stop: stopping "normally" runs the epoch-end and
        # train-end hooks (a checkpoint callback's on_train_end would overwrite last.ckpt with the
        # state of a finished epoch, which resumes with every logged step one late).
        raise StopForSignal(self.signum, self.saved_step)

    def _requested(self, trainer, sync_point: bool) -> bool:
        """Whether to stop here. With several processes every rank must decide alike (they save and
        leave together), so the flag is reduced across ranks, only at ``sync_point``s: steps where
        fpt reads device values anyway (every ``log_every_n_steps``) and validation ends."""
        if self.saved_step is not None:
            return False
        if trainer.world_size <= 1:
            return self.signum is not None
        if not sync_point:
            return False
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            self.signum = self.signum or int(signal.SIGTERM)  # another rank received it
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None and trainer.world_size <= 1:
            return
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # mid-accumulation: stop at the optimizer step
        step = int(trainer.global_step)
        if step % self.eval_every == 0 or is_final_step(trainer):
            return  # a validation runs after this batch: save after it (where fpt's checkpoints are taken)
        if self._requested(trainer, sync_point=step % max(1, trainer.log_every_n_steps) == 0):
            self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._requested(trainer, sync_point=True):
            self._stop(trainer)
