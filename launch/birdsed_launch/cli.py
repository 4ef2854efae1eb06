"""What the launcher's commands share: one-line errors on stderr, exit codes, logging to stderr.

stdout carries only each command's result (a URI, a job name, the dry-run JSON), so that scripts
can capture it; progress goes through `logging` to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from birdsed_launch.checks import LaunchError

# Loggers of the libraries underneath, quiet unless --verbose: the launcher reports what matters itself
# (errors included), and the SDK's own warnings mislead here (e.g. "No region provided" when one is).
# "sagemaker.config" is named because the SDK sets it to INFO at import when it finds it unset.
QUIET_LOGGERS = {
    "sagemaker": logging.ERROR,
    "sagemaker.config": logging.ERROR,
    "botocore": logging.WARNING,
    "boto3": logging.WARNING,
    "s3transfer": logging.WARNING,
    "urllib3": logging.WARNING,
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: ...` line (exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


class _LevelPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(verbose: bool) -> None:
    """Progress to stderr; leaves an already configured root logger (pytest's, an embedding app's) alone."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelPrefixFormatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else level)


def first_lines(text: str, count: int) -> list[str]:
    return [line.strip() for line in str(text).splitlines() if line.strip()][:count]


def first_line(text: str) -> str:
    return " ".join(first_lines(text, 1))


def fail(message: str) -> None:
    print(f"error: {first_line(message)}", file=sys.stderr)


def run_command(body: Callable[[], int], verbose: bool) -> int:
    """Run a command; every failure becomes one line on stderr and a non-zero exit, never a traceback.

    With --verbose an unexpected exception keeps its traceback, for bug reports.
    """
    try:
        return body()
    except LaunchError as error:
        fail(str(error))
        return error.exit_code
    except (ClientError, BotoCoreError) as error:
        fail(f"AWS: {error}")
        return 1
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except Exception as error:
        if verbose:
            raise
        fail(f"{type(error).__name__}: {first_line(str(error))} (run with --verbose for the traceback)")
        return 1
