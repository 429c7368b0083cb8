"""The ablation: ``mmrope ablate`` trains every arm of a grid for the same budget and reports what each buys.

    plan.py       a grid file and preset resolved into runs: which arms, seeds, steps, and how they are scored
    runner.py     each run as a train subprocess, resumable, scored from its last checkpoint
    reuse.py      finished runs copied from another preset's folder (``--reuse DIR``) instead of trained again
    scoring.py    a run's last checkpoint scored at every split, size and protocol; predictions.csv
    processes.py  the child processes (runs, workers), with Ctrl-C and SIGTERM passed on to them
    parallel.py   several runs at once (``parallel: N``), each in a worker process
    worker.py     a private entry that trains and scores one run, or one arm's seeds stacked
    cluster.py    the same runs as tasks of a Ray cluster (``--cluster ray``)
    progress.py   OUT/ablate.log: what the command said on stderr, each line with its time
    stats.py      mean and Student-t 95% interval across seeds
    paired.py     per-scene paired tests across arms, Holm's correction, the smallest detectable difference
    scenes.py     a grid's per-scene outcomes, and the statistics read from them
    curves.py     each run's validation scores during training, and the step each first reached the threshold
    plots.py      accuracy against size (or frames), bars at and beyond the training size, learning curves
    report.py     results.csv and results.md
"""
