"""The ablation: ``mmrope ablate`` trains every arm of a grid for the same budget and reports what each buys.

    plan.py     a grid file and preset resolved into runs: which arms, seeds, steps, and how they are scored
    runner.py   each run as a train subprocess, resumable, scored from its last checkpoint
    cluster.py  the same runs as tasks of a Ray cluster (``--cluster ray``)
    stats.py    mean and Student-t 95% interval across seeds
    report.py   results.csv, results.md and the plots
"""
