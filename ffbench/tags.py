"""The names of ffbench's MLflow run tags, each defined here once and imported by the modules
that write or read it. Stores and the committed run records (docs/records/) hold these names:
a value never changes. It imports nothing (no torch, no MLflow).

In a search's filter a dotted tag name is quoted with backticks: f"tags.`{SETTINGS_HASH}`".
"""

# What the run is: the settings of its result, and how to run it again
SETTINGS_HASH = "ffbench.settings_hash"  # the settings its result depends on (settings.py)
OVERRIDES = "ffbench.overrides"  # the command line's overrides, space-separated
GIT_COMMIT = "ffbench.git_commit"  # the code's commit, "-dirty" if it had changes
JOB_NUM = "ffbench.job_num"  # its number in its sweep
SKIPPED = "ffbench.skipped"  # not trained: its metrics are another run's (RESULT_RUN_ID)
RESULT_RUN_ID = "ffbench.result_run_id"  # the FINISHED run a skipped job copies
PEAK_RSS_METHOD = "ffbench.peak_rss_method"  # how the memory meter read the peak RSS

# How it ended, and how it goes on
ERROR = "ffbench.error"  # why it failed (its job's error, or liveness's "process lost")
CHECKPOINT = "ffbench.checkpoint"  # the file of its last checkpoint (a rerun resumes from it)
RESUMED = "ffbench.resumed"  # how many times a later job continued it
JOURNAL_ID = "ffbench.journal_id"  # the journal it was recorded from (journal.py)

# Where and how it ran: the machine's and the process's, not the result's (records.py
# leaves them out of a record)
OUTPUT_DIR = "ffbench.output_dir"  # its Hydra job folder
SWEEP_DIR = "ffbench.sweep_dir"  # a sweep's parent run: its Hydra sweep folder
JOBS_PLANNED = "ffbench.jobs_planned"  # a sweep's parent run: how many jobs it launches
PROCESS = "ffbench.process"  # HOST:PID of the job
SLURM_JOB_ID = "ffbench.slurm_job_id"  # the SLURM job it ran in (ARRAY_TASK for an array)
BEAT = "ffbench.heartbeat"  # its last sign of life, in seconds since the epoch (liveness.py)
EVERY = "ffbench.heartbeat_s"  # its heartbeat's interval, so that any process can judge it
