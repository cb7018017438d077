"""Runs a command of the pack as N CPU processes through ``accelerate launch`` (the gloo backend, loopback only).

``accelerate launch --cpu --num_processes N`` starts the processes through ``mpirun`` only (accelerate 1.x); without
MPI the same multi-process gloo run is ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N``,
which is what the README tells CPU users and what these tests run."""
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(target: list[str], *, processes: int = 2, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """``target`` (``["-m", "cococo_core", ...]`` or ``[script, ...]``) in ``processes`` CPU processes; the tests'
    folder is importable in them (recipes of the test helpers), one OpenMP thread each."""
    done = accelerate_launch(["--multi_gpu", "--num_processes", str(processes)], target, cwd=cwd, timeout=timeout,
                             env={"ACCELERATE_USE_CPU": "true"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def accelerate_launch(flags: list[str], target: list[str], *, cwd, timeout: int = 600,
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch <flags> <target>`` as it is (the exit status is the caller's to check)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]), "OMP_NUM_THREADS": "1",
           **(env or {})}
    command = [sys.executable, "-m", "accelerate.commands.launch", *flags,
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *target]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
