"""``fpt sweep``: many runs of one preset, one run directory per trial, best setting picked on validation.

::

    fpt sweep bit-xor-small --lr 1e-4,1e-3,1e-2 --seeds 3            # a learning-rate sweep, 3 seeds each
    fpt sweep bit-xor-small --experiment table1                       # FPT vs full transformer vs full LSTM
    fpt sweep mnist-small --experiment rothermel --parallel 2         # lr x {frozen, unfrozen} x 3 seeds
    fpt sweep bit-xor-small --grid init=pretrained,random --grid layers=1,2 --set steps=300

A sweep is a *base config* (a preset or YAML file, plus ``--set KEY=VALUE`` overrides), optionally
an *experiment* (named variants, each a set of overrides, from ``fpt/presets/experiments/NAME.yaml``),
a *grid* (``--grid KEY=V1,V2,...`` and its shorthand ``--lr``; cartesian product) and *seeds*
(``--seeds N``: seeds 0..N-1). Every combination is one trial, written to
``SWEEP_DIR/<setting>/s<seed>/`` (a normal run directory: ``fpt test``, ``fpt report`` work on it);
the default ``SWEEP_DIR`` is ``runs/sweeps/<preset>[-<experiment>][-<swept keys>]``.

Model selection is on **validation** (``results.json`` ``val.best``: accuracy, or RMSE for
regression tasks, :mod:`fpt.model.objectives`), averaged over seeds: within each experiment variant, the
grid setting with the best mean validation value (highest accuracy, lowest RMSE) is *chosen*, and
its test value *at the best validation point* (``at_best_val``: the weights kept in
``best.safetensors``, as Rothermel et al. 2021 select and evaluate) is reported as mean and
standard deviation over seeds (per setting too); the test at the final weights is shown beside it.
Test numbers never choose anything. With ``--set protocol=paper`` the protocol may override the
preset's keys (not ``--set``, ``--grid`` or an experiment's), as for ``fpt fit``.

Re-running the same command skips finished trials (``results.json`` present), resumes a trial that
was interrupted after its first checkpoint (``fit(..., resume=True)``) and restarts one that was
interrupted before it (the partial directory is moved aside to ``<dir>.old-<timestamp>``). A trial
directory that holds a run with *different* settings is an error, never silently reused.
``SWEEP_DIR/sweep.json`` and ``sweep.md`` are rewritten after every trial; each trial's output
goes to ``SWEEP_DIR/<setting>/s<seed>.log`` (a failed trial's last line there says why).
``SWEEP_DIR/plan.json`` holds every trial's full config, so that the sweep directory alone is the
source of truth: ``fpt sweep --status SWEEP_DIR`` (trials pending / running / finished / failed /
interrupted, read from the files) and ``fpt sweep SWEEP_DIR --summarize`` (sweep.json and sweep.md
rebuilt) need nothing else.

``--launcher local`` (default) runs the trials here, ``--parallel`` at a time; ``--launcher slurm``
submits every pending trial as a SLURM job array through submitit (:mod:`fpt.experiments.slurm`).

Experiments may name *sources*: runs trained once before the trials, whose directory a variant
uses as ``backbone: run:@NAME`` (the bit-memory-pretrained initialisation). A source is a preset
(its ``-small`` version when the swept preset is a ``-small`` one) with the experiment's overrides,
on the swept config's backbone, depth and LSTM width, seed 0, in ``SWEEP_DIR/sources/NAME``.
"""
