"""The device's runner as a process (pipeline/runtime/device.py `main`): one JSON answer per request line, and it
ends when its stdin closes or when nobody asks anything for IDLE_S."""

import base64
import json
import subprocess
import sys
import time

RUNNER = "import sys; from pipeline.runtime import device; device.IDLE_S = {idle}; sys.exit(device.main([sys.argv[1]]))"


def start(cache, idle: float = 60.0) -> subprocess.Popen:
    command = [sys.executable, "-c", RUNNER.format(idle=idle), str(cache)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ask(runner: subprocess.Popen, request: dict) -> dict:
    runner.stdin.write(base64.b64encode(json.dumps(request).encode()) + b"\n")
    runner.stdin.flush()
    return json.loads(runner.stdout.readline())


def test_the_runner_answers_each_request_and_ends_when_its_stdin_closes(tmp_path):
    runner = start(tmp_path)
    try:
        first, second = ask(runner, {"op": "environment"}), ask(runner, {"op": "environment"})
        assert first == second and first["cores"] >= 1 and runner.poll() is None  # still up for the next
        runner.stdin.close()
        assert runner.wait(10) == 70  # the ssh session is gone: nobody would read another answer
    finally:
        runner.kill()


def test_a_runner_nobody_asks_anything_ends_by_itself(tmp_path):
    runner = start(tmp_path, idle=0.5)
    try:
        assert ask(runner, {"op": "environment"})["cores"] >= 1
        started = time.monotonic()
        assert runner.wait(10) == 0 and time.monotonic() - started < 5  # its stdin still open
    finally:
        runner.kill()
