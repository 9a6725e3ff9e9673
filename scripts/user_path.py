"""Walk a new user's path before the test suite runs (scripts/test.sh calls this first).

1. README's set-up command, verbatim, in a copy of the tree: a fresh venv and a plain
   install with no extras. Then `pd-gateway --help` and every subcommand's `--help`;
   `loadtest` without its extra answers with the extra to install (exit 2); `plan` on a
   topology; README's `serve` (on a free port) answers one streamed request to each pool
   (data-parallel and prefill/decode); `up` on the simulated topology does the same.
2. Each image: a wheel built from exactly the paths the Dockerfile's build stage COPYs,
   with the spec its `pip wheel` line names, installed alone into a fresh venv, and its
   entrypoint run, the nearest a machine without a container runtime gets to the image.

Standard library only: it runs before any venv exists. Any failure exits non-zero.
Usage: python3 scripts/user_path.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PD_TOPOLOGY = "deploy/topologies/sim-1p1d-2dp.yaml"
IMAGE_CONFIG = {"/etc/pd-gateway/gateway.yaml": "deploy/k8s/base/gateway-config.yaml"}


class PathBroken(RuntimeError):
    """A step of the user's path failed; the message says which and why."""


def step(name: str) -> None:
    print(f"[user-path] {name}", flush=True)


def run(argv: list[str] | str, cwd: Path, expect: int = 0, timeout: float = 600, **kw: object) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, shell=isinstance(argv, str), **kw
    )
    if proc.returncode != expect:
        shown = argv if isinstance(argv, str) else shlex.join(argv)
        raise PathBroken(f"`{shown}` exited {proc.returncode} (expected {expect}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_setup_command() -> tuple[str, str]:
    """README's first set-up command, split into its install part and the command it runs."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.strip().startswith("python3 -m venv") and "pd-gateway serve" in line:
            install, _, serve = line.strip().rpartition(" && ")
            return install, serve
    raise PathBroken("README.md has no set-up line that starts with `python3 -m venv` and runs `pd-gateway serve`")


def copy_tree(dest: Path) -> None:
    """The files a clone has (tracked, and untracked ones git does not ignore)."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def wait_serving(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until `url` answers 200; fails if the process exits first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise PathBroken(f"{shlex.join(proc.args)} exited {proc.returncode} before serving {url}")
        try:
            if get(url) == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise PathBroken(f"{url} did not answer 200 within {timeout_s:.0f} s")


def streamed_completion(base: str, model: str) -> str:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 8, "stream": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    if not text.endswith("data: [DONE]\n\n") or '"text"' not in text:
        raise PathBroken(f"streamed request to {model} did not end well:\n{text[-500:]}")
    return text


class Served:
    """A long-running command whose output goes to a log file; stopped with SIGINT (Ctrl-C)."""

    def __init__(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if exc[0] is not None:
            print(self.log.read_text()[-3000:], file=sys.stderr)


def check_install(work: Path) -> None:
    install, serve = readme_setup_command()
    step(f"README set-up: {install}")
    t0 = time.monotonic()
    run(["bash", "-c", install], work)
    dists = run([".venv/bin/python", "-m", "pip", "list", "--format=freeze"], work).split()
    step(f"plain install: {len(dists)} distributions in {time.monotonic() - t0:.1f} s")
    cli = str(work / ".venv/bin/pd-gateway")
    usage = run([cli, "--help"], work)
    commands = re.search(r"\{([a-z,]+)\}", usage)
    if commands is None:
        raise PathBroken(f"`pd-gateway --help` lists no subcommands:\n{usage}")
    for command in commands.group(1).split(","):
        run([cli, command, "--help"], work)
    step(f"--help of pd-gateway and of {commands.group(1)}: ok")
    hint = run([cli, "loadtest", "--base-url", "http://127.0.0.1:9"], work, expect=2)
    if "pd-gateway[loadtest]" not in hint or "Traceback" in hint:
        raise PathBroken(f"loadtest without its extra should name it in one line, said:\n{hint}")
    step("loadtest without its extra: names the extra, exit 2")
    run([cli, "plan", PD_TOPOLOGY], work)
    step("plan: ok")
    check_serve(work, shlex.split(serve))
    check_up(work, cli)


def check_serve(work: Path, serve: list[str]) -> None:
    port = free_port()
    with Served([*serve, "--port", str(port)], work, work / "serve.log") as served:
        ready = wait_serving(f"http://127.0.0.1:{port}/health", served.proc, 60)
        step(f"README's `{shlex.join(serve)}` serving after {ready:.2f} s")
        for model in ("sim-model", "sim-pd-model"):
            streamed_completion(f"http://127.0.0.1:{port}", model)
        step("one streamed request each to the data-parallel and the prefill/decode pool: ok")


def check_up(work: Path, cli: str) -> None:
    topology = work / "up-topology.yaml"
    ports = [free_port() for _ in range(4)]
    rewrite = (
        "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); g, p, dd, r = map(int, sys.argv[3:]);"
        "d['gateway']['port'] = g; pd, dp = d['pools']; pd['prefill']['base_port'] = p;"
        "pd['decode']['base_port'] = dd; dp['base_port'] = r; yaml.safe_dump(d, open(sys.argv[2], 'w'))"
    )
    run([".venv/bin/python", "-c", rewrite, PD_TOPOLOGY, str(topology), *map(str, ports)], work)
    argv = [cli, "up", str(topology), "--log-dir", str(work / "up-logs")]
    with Served(argv, work, work / "up.log") as up:
        ready = wait_serving(f"http://127.0.0.1:{ports[0]}/ready", up.proc, 90)
        for model in ("sim-dp", "sim-pd"):
            streamed_completion(f"http://127.0.0.1:{ports[0]}", model)
        step(f"up: ready after {ready:.2f} s, one streamed request to each pool: ok")


def dockerfile_build(dockerfile: Path) -> tuple[list[str], str, list[str]]:
    """The build stage's COPY sources, its `pip wheel` spec, and the final ENTRYPOINT + CMD."""
    copies: list[str] = []
    spec = ""
    entry: list[str] = []
    cmd: list[str] = []
    stage = 0
    for line in dockerfile.read_text().splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            stage += 1
        elif word == "COPY" and stage == 1 and not rest.startswith("--from"):
            copies += shlex.split(rest)[:-1]
        elif word == "RUN" and "pip wheel" in rest:
            spec = shlex.split(rest)[-1]
        elif word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    if not copies or not spec or not (entry or cmd):
        raise PathBroken(f"{dockerfile.name}: no COPY lines, `pip wheel` spec or ENTRYPOINT/CMD found")
    return copies, spec, entry + cmd


def check_image(dockerfile: Path, tree: Path, scratch: Path) -> None:
    """`tree`: the files of a clone, which the image's build context also is."""
    copies, spec, command = dockerfile_build(dockerfile)
    src, wheels, venv = scratch / "src", scratch / "wheels", scratch / "venv"
    src.mkdir(parents=True)
    for rel in copies:
        (shutil.copytree if (tree / rel).is_dir() else shutil.copy2)(tree / rel, src / rel)
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([sys.executable, "-m", "venv", str(venv)], scratch)
    run([*pip, "wheel", "--wheel-dir", str(wheels), spec], src)
    run([*pip, "install", "--no-index", *map(str, wheels.glob("*.whl"))], scratch)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    command = [str(tree / IMAGE_CONFIG[a]) if a in IMAGE_CONFIG else a for a in command]
    if command[0] == "pd-gateway":
        run([*command, "--check-config"], scratch, env=env)
    else:
        port = str(free_port())
        argv = [{"0.0.0.0": "127.0.0.1", "8000": port}.get(a, a) for a in command]
        with Served(argv, scratch, scratch / "image.log", env) as served:
            wait_serving(f"http://127.0.0.1:{port}/health", served.proc, 60)
    step(f"{dockerfile.name}: a wheel from its COPY lines ({' '.join(copies)}) runs `{shlex.join(command)}`")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and leave it (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="pd-user-path-"))
    try:
        tree = work / "tree"
        copy_tree(tree)
        check_install(tree)
        for dockerfile in sorted(ROOT.glob("Dockerfile*")):
            check_image(dockerfile, tree, work / dockerfile.name)
    except (PathBroken, subprocess.TimeoutExpired) as err:
        print(f"[user-path] FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    step("the user's path holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
