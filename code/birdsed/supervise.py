"""Why a training process died when it could not say so itself (killed by a signal: the out-of-memory killer).

A process killed with SIGKILL writes nothing, and the toolkit then reports only "ExitCode -9". So
`train.py` runs the job in a child process and waits for it here: when the child dies of a signal,
this parent writes the reason to `output/failure`. With several processes, torchrun's agent is that
child and `describe_failures` turns its report on the dead ranks into the same reason. Standard
library only: the parent stays small (no torch) while the child holds the memory.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence

from birdsed import sm_env

# Set for the child, so that it runs the job instead of supervising again (torchrun's ranks inherit it).
SUPERVISED_ENV = "BIRDSED_SUPERVISED"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def needs_supervisor(environ: Mapping[str, str]) -> bool:
    """False in the supervised child, and under a torchrun that is not ours (its agent is the parent)."""
    return SUPERVISED_ENV not in environ and "TORCHELASTIC_RUN_ID" not in environ and "LOCAL_RANK" not in environ


def killed_reason(what: str, signal_number: int) -> str:
    """The failure reason for `what` (e.g. "The training process") ended by `signal_number`."""
    if signal_number == signal.SIGKILL:
        return (
            f"{what} was killed by SIGKILL (signal 9), most likely by the out-of-memory killer: the instance ran out "
            "of memory. Lower batch_size, or num_workers (every DataLoader worker holds batches of its own), or use "
            "an instance type with more memory; the checkpoints let a restarted job resume."
        )
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    return f"{what} died of {name} (signal {signal_number}) without a message; see the job's log for its last lines."


def run(command: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run `command` as the supervised child; forward stop signals to it; explain its death by a signal.

    Returns the child's exit code, or 128 + the signal's number when a signal ended it (as a shell does).
    """
    output_dir = sm_env.output_dir_from(environ)
    child = subprocess.Popen(list(command), env={**environ, SUPERVISED_ENV: "1"})
    previous = {
        number: signal.signal(number, lambda number, _: child.send_signal(number)) for number in FORWARDED_SIGNALS
    }
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if code >= 0:
        return code
    # A SIGKILL left the child no chance to write; anything already there (a rank's report) is less true.
    sm_env.write_failure(output_dir, killed_reason("The training process", -code), replace=-code == signal.SIGKILL)
    return 128 - code


def describe_failures(failures: Mapping[int, object]) -> tuple[str | None, int]:
    """(failure reason or None, exit code) for torchrun's dead ranks: {rank: ProcessFailure}.

    Only deaths by a signal get a reason here; a rank that exited with a code wrote its own reason.
    """
    ranks = sorted(failures)
    for rank in ranks:
        code = failures[rank].exitcode
        if code < 0:
            return killed_reason(f"Training process rank {rank} (of torchrun)", -code), 128 - code
    return None, failures[ranks[0]].exitcode if ranks else 1
