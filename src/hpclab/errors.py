"""Every failure hpclab reports: a message, a hint that says what to change, an exit code.

`cli.main` is the one place that turns these into output and a process exit status.
"""

from __future__ import annotations


class ExitCode:
    OK = 0
    ERROR = 1  # a bug or an unexpected failure
    CONFIG = 2  # bad profile, flag, usage or Jupyter config: nothing was started or left running
    CONNECT = 3  # the login node could not be reached, or refused us
    SCHEDULER = 4  # the scheduler refused or failed a request
    JOB_FAILED = 5  # the job ended before Jupyter was ready
    MAX_WAIT = 6  # --max-wait ran out while the job was pending
    JOB_ENDED = 7  # the job ended while the lab was in use (cancelled, node failure, ...)
    TIME_LIMIT = 8  # the job reached its time limit
    NOT_FOUND = 9  # no such session
    INTERRUPTED = 130  # Ctrl-C, SIGTERM or SIGHUP


class HpclabError(Exception):
    """Base of every error hpclab reports to the user."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(HpclabError):
    exit_code = ExitCode.CONFIG


class UnsafeLabError(ConfigError):
    """The lab would answer without its token (a Jupyter config hpclab cannot neutralize, a
    jupyter_server too old to hold to it); the session was stopped."""


class ConnectError(HpclabError):
    exit_code = ExitCode.CONNECT


class HostKeyError(ConnectError):
    """A host's key is unknown or differs from the one trusted: nothing was sent to it."""


class LoginRefused(ConnectError):
    """The host answered and refused us (authentication, pam_slurm_adopt, a closed connection)."""


class Unreachable(ConnectError):
    """No answer at all: DNS, routing, a timeout; trying again later may work."""


class MasterGone(ConnectError):
    """The SSH master a command relied on is gone, and hpclab will not log in again by itself."""


class RemoteError(HpclabError):
    """A command on the cluster failed; carries what it said."""

    exit_code = ExitCode.ERROR

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ForwardTaken(RemoteError):
    """The local port of a forward is held by another program: hpclab sends it nothing."""


class SchedulerError(RemoteError):
    exit_code = ExitCode.SCHEDULER


class ProtocolError(HpclabError):
    """A file the job wrote on the cluster is not what this version of hpclab reads."""


class JobFailedError(HpclabError):
    exit_code = ExitCode.JOB_FAILED


class MaxWaitError(HpclabError):
    exit_code = ExitCode.MAX_WAIT


class JobEndedError(HpclabError):
    exit_code = ExitCode.JOB_ENDED


class TimeLimitError(JobEndedError):
    exit_code = ExitCode.TIME_LIMIT


class NotFoundError(HpclabError):
    exit_code = ExitCode.NOT_FOUND


class Interrupted(HpclabError):
    """Raised in the main thread by SIGINT, SIGTERM or SIGHUP."""

    exit_code = ExitCode.INTERRUPTED
