"""
Run model-written Python in a limited child process and say which answers pass their checks (and which parse).

    from sandbox import defines_function, run_checks
    run_checks([("def f(x):\n    return x + 1", ["f(1) == 2", "f(-1) == 0"])], 2.0, 512)   # [True]

run_checks starts this file as a program (python -I -S sandbox.py: no site-packages, no environment variables
read) in a process group of its own (setsid), with an empty environment, in a temporary directory that is removed
afterwards. That process limits its own address space to memory_mb and every file it writes to 1 MiB, then forks
one process per answer: its own process group (setsid), its own subdirectory, stdin, stdout and stderr on /dev/null,
a CPU limit, and a wall-clock deadline after which its process group is killed. An answer passes only by a byte
written to a pipe after every check was true, so printing, exiting early with status 0 or crashing never passes. An
answer that hangs, crashes or runs out of memory fails, and nothing the answers do raises in the caller.

This guards against the mistakes of a small model (endless loops, runaway memory, stray files, junk output); it is
not a security boundary for hostile code. What it does NOT do:
- isolate the network: an answer can open sockets and reach whatever this machine reaches;
- isolate the filesystem beyond the working directory: an answer runs as the calling user and can read, write and
  delete any file that user can by its absolute path (the home directory, the repository, checkpoints);
- limit the number of processes: an answer can fork, a forked process that calls setsid leaves the process group that
  is killed at the deadline, and any of them can signal the user's other processes;
- limit memory and CPU for an answer's processes together: the limits hold for each process alone;
- run anywhere but POSIX (os.fork, setsid, the resource module; tested on Linux): where the child cannot run, every
  answer counts as failed and one line says so;
- distrust the checks: they run in the answer's process and are trusted to be the caller's own.
Run code you do not trust in a container or a virtual machine.
"""
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def defines_function(answer):
    """Whether an answer parses as Python and defines a function (the parse rate counts these)."""
    try:
        tree = ast.parse(answer)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: a NUL byte
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(tree))


def run_checks(jobs, seconds, memory_mb):
    """For each (answer, checks) of jobs, whether the answer runs and makes every check (a Python expression) true.
    Each answer has a wall-clock and CPU limit of seconds; the child process that runs them all, an address space of
    memory_mb."""
    if not jobs:
        return []
    workdir = tempfile.mkdtemp(prefix="answers-")
    try:
        child = [sys.executable, "-I", "-S", os.path.abspath(__file__), str(seconds), str(memory_mb << 20)]
        result = subprocess.run(child, input=json.dumps(jobs), capture_output=True, text=True, env={}, cwd=workdir,
                                timeout=len(jobs) * (seconds + 1) + 30, start_new_session=True)
        passed = json.loads(result.stdout)
    except (subprocess.TimeoutExpired, ValueError, OSError) as e:
        print(f"the checks could not run ({type(e).__name__}); every answer counts as failed")
        passed = [False] * len(jobs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return passed


# -----------------------------------------------------------------------------
# the child process, run by run_checks in its temporary directory

def judge_answer(answer, checks, seconds, folder):
    """Run answer and then its checks in a forked process, in folder; True only if it reports every check true
    before a deadline of seconds."""
    import resource  # POSIX only; imported here so that run_checks and defines_function import everywhere
    os.mkdir(folder)
    verdict, verdict_out = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()  # its own process group, so that whatever it starts is killed with it
            os.close(verdict)
            os.chdir(folder)
            resource.setrlimit(resource.RLIMIT_CPU, (int(seconds) + 1, int(seconds) + 1))
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            namespace = {}
            exec(answer, namespace)
            if all(bool(eval(check, namespace)) for check in checks):
                os.write(verdict_out, b"1")
        except BaseException:
            pass
        finally:
            os._exit(0)
    os.close(verdict_out)
    deadline = time.monotonic() + seconds
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the answer started and left running
    except (ProcessLookupError, PermissionError):
        pass
    os.set_blocking(verdict, False)
    try:
        passed = os.read(verdict, 1) == b"1"
    except BlockingIOError:  # a process the answer started still holds the pipe, empty
        passed = False
    os.close(verdict)
    return passed


def judge_answers(seconds, memory):
    """Read [[answer, checks], ...] as JSON on stdin and print a JSON list of whether each answer passed, running each
    in a forked process with a limit of seconds; memory (bytes) limits this process and every process it forks."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    passed = [judge_answer(answer, checks, seconds, str(i)) for i, (answer, checks) in enumerate(json.load(sys.stdin))]
    print(json.dumps(passed))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("sandbox.py is the child process of run_checks: python -I -S sandbox.py SECONDS MEMORY_BYTES, "
                         "with [[answer, checks], ...] as JSON on stdin")
    judge_answers(float(sys.argv[1]), int(sys.argv[2]))
