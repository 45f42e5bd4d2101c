"""The error a user can fix. A leaf module: data, models and downloads raise it without
importing Hydra; the CLI prints its message (one line) and exits 1."""


class FFBenchError(Exception):
    """A problem the user can fix; the message says what to change."""


class TrackingUnreachable(FFBenchError):
    """The MLflow tracking server does not answer."""
