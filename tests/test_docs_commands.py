"""Every shell command in README.md and docs/*.md works: each ```bash line is run or checked, in document order.

The commands run in one scratch directory whose `configs`, `scripts`, `research` and `docs` link to the
repository's, so relative paths work as documented and `runs/` lands in the scratch directory. Each
command is classified; one that fits no class fails its test, so none is silently skipped:

- set-up, checked and not run: `python3 -m venv .venv`; `.venv/bin/pip install -e '.[extras]'` (every
  extra must exist in pyproject.toml); `.venv/bin/python -m pytest` (the whole command must be what
  `.ci/run` runs). The other parts of a `&&` chain still run.
- the Sphinx build (`.venv/bin/python -m sphinx ... docs OUT`): run as written, then the site it built is
  checked page by page (tests/api_docs.py).
- training (`scripts/train.py`, `scripts/sweep.py` or `scripts/launch.py TARGET` with `--config configs/X.py ...`):
  at smoke scale, `configs/X.py:smoke`, with every documented override kept as written.
- a real SLURM run (`research.launch.slurm_cluster` or `scripts/launch.py slurm` without `--dry_run`; the
  documented demo runs in tests/test_slurm.py): skipped, saying why, only where slurm-wlm is not installed
  (.ci/run installs it).
- a server (`.venv/bin/tensorboard --logdir DIR`, `.venv/bin/python scripts/serve.py ...`, a trailing `&`
  allowed): started on a free port, asked over HTTP for its logdir or its readiness. It stays up for the
  `curl` commands that follow it on its page, then gets SIGTERM (scripts/serve.py must then exit 0).
- `curl ...` right after a server: run as written against it (`127.0.0.1:8000` becomes its port), and must
  get a 2xx (the test adds `--fail-with-body`).
- `NAME=$(command)`: the command is run as its class says, and its output is $NAME for the page's later
  commands (e.g. `KEY=$(... --add_key ...)`, then `curl -H "Authorization: Bearer $KEY" ...`).
- anything else that runs `.venv/bin/python scripts/*.py` (evaluate, export, --verify, --help, benchmark
  --quick) or `.venv/bin/python -m module` (the Sphinx build): as written.

A command that another test runs as documented and checks more closely (`RUN_ELSEWHERE`: the SLURM demo, whose
parameters tests/test_slurm.py compares with one process's) runs there and not here; that test finds it with
`documented()`, so it runs what the page says.

A command identical to one that already ran here, alone or in a `&&` chain (e.g. the quick start's training
and export, repeated in docs/training.md and docs/export.md; the runs docs/tensorboard.md's tour revisits), is
not run twice; only a training command repeated on its own page runs again, since that shows a resume.

`.venv/bin/<tool>` becomes the tool beside sys.executable. Every command runs through bash (so `&`,
`;` and `wait` work as written) with 1 simulated CPU device per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from research.launch import slurm_cluster
from tests import api_docs, helpers

ROOT = helpers.ROOT
PAGES = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))  # README first
COMMAND_FENCES = {"bash"}
OTHER_FENCES = {"", "console", "text", "python", "{toctree}"}  # output, diagrams, code: not commands
TIMEOUT_S = 300
TRAINING = r"scripts/(?:train|sweep|launch)\.py (?!--help)"
BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Command:
  page: str
  line: int
  text: str  # continuations joined; for an unknown fence, its language
  fence: str = "bash"

  @property
  def id(self) -> str:
    return f"{self.page}:{self.line}"


def extract(page: str) -> list[Command]:
  """Every command of a page's ```bash fences (continuations joined), and every fence of an unknown language."""
  commands, fence, pending, start = [], None, "", 0
  for number, raw in enumerate((ROOT / page).read_text().splitlines(), 1):
    line = raw.strip()
    if line.startswith("```"):
      if fence is None:
        fence = line[3:].strip()
        if fence not in COMMAND_FENCES | OTHER_FENCES:
          commands.append(Command(page, number, fence, fence=fence))
      else:
        assert not pending, f"{page}:{start}: a command ends in a backslash at the end of its fence"
        fence = None
      continue
    if fence not in COMMAND_FENCES or (not pending and (not line or line.startswith("#"))):
      continue
    start = start if pending else number
    if line.endswith("\\"):
      pending += line[:-1].strip() + " "
      continue
    commands.append(Command(page, start, pending + line))
    pending = ""
  return commands


COMMANDS = [c for page in PAGES for c in extract(page)]
# A marker of each documented command another test runs as written -> that test (which calls `documented(marker)`).
RUN_ELSEWHERE = {"research.launch.slurm_cluster start": "tests/test_slurm.py",
                 "scripts/launch.py slurm --tasks_per_node 2": "tests/test_slurm.py",
                 "research.launch.slurm_cluster stop": "tests/test_slurm.py"}


def runs_elsewhere(command: Command) -> bool:
  return any(marker in command.text for marker in RUN_ELSEWHERE)


def documented(marker: str) -> str:
  """The text of the one documented command that contains `marker` (one of `RUN_ELSEWHERE`'s)."""
  found = [c.text for c in COMMANDS if marker in c.text]
  assert marker in RUN_ELSEWHERE and len(found) == 1, f"{marker!r} is in {len(found)} documented commands"
  return found[0]


def make_scratch(directory: Path) -> Path:
  """`directory` with the repository's configs, scripts, research and docs linked in: relative paths work."""
  for name in ("configs", "scripts", "research", "docs"):
    (directory / name).symlink_to(ROOT / name)
  return directory


# ---- set-up commands: checked, not run


def extras_defined() -> set[str]:
  return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_venv(words: list[str]) -> None:
  assert words == ["python3", "-m", "venv", ".venv"], f"unexpected venv command: {' '.join(words)}"


def check_pip_install(words: list[str]) -> None:
  """`.venv/bin/pip install [-q] -e .[a,b]`: every extra must exist (other installs belong in prose)."""
  args = [w for w in words[2:] if w not in ("-q", "-e")]
  assert words[1] == "install" and len(args) == 1, f"unexpected pip command: {' '.join(words)}"
  match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[0])
  assert match, f"pip installs {args[0]!r}, not this project: documented installs are of '.[extras]'"
  unknown = set((match.group(1) or "").split(",")) - {""} - extras_defined()
  assert not unknown, f"extras {sorted(unknown)} are not in pyproject.toml ({sorted(extras_defined())})"


def check_pytest(command: str) -> None:
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert command in ci, f".ci/run does not run the documented test command {command!r}; it runs:\n" + "\n".join(ci)


def split_setup(command: str) -> tuple[list, str]:
  """(checks to make, the rest of the command to run): set-up parts of a `&&` chain are checked."""
  checks, rest = [], []
  for part in command.split(" && "):
    words = shlex.split(part)
    if words[:3] == ["python3", "-m", "venv"]:
      checks.append(lambda w=words: check_venv(w))
    elif words[0] == ".venv/bin/pip":
      checks.append(lambda w=words: check_pip_install(w))
    elif words[:3] == [".venv/bin/python", "-m", "pytest"]:
      checks.append(lambda: check_pytest(command))
    else:
      rest.append(part)
  return checks, " && ".join(rest)


# ---- commands that run


def local_tools(command: str) -> str:
  """`.venv/bin/<tool>` -> the tool beside the interpreter running the tests."""
  return re.sub(r"\.venv/bin/([\w.-]+)",
                lambda m: shlex.quote(sys.executable if m.group(1) == "python" else str(BIN / m.group(1))), command)


def smoke_scale(command: str) -> str:
  """`--config configs/X.py` -> `--config configs/X.py:smoke`, unless a variant is given."""
  return re.sub(r"(--config[ =]configs/\w+\.py)(?=\s|$)", r"\1:smoke", command)


def classify(command: str) -> str:
  """'server', or 'script' when every program it starts is `.venv/bin/python scripts/*.py` or `-m module`."""
  words = shlex.split(command.replace("&", " & ").replace(";", " ; "))
  programs = [words[0]] + [w for prev, w in zip(words, words[1:]) if prev in ("&", ";")]
  programs = [p for p in programs if p not in ("&", ";", "wait")]
  if len(programs) == 1 and (words[0] == ".venv/bin/tensorboard" or (
      words[:2] == [".venv/bin/python", "scripts/serve.py"] and "--add_key" not in words)):
    return "server"
  scripts = re.findall(r"\.venv/bin/python (?:scripts/\w+\.py|-m [\w.]+)", command)
  assert len(scripts) == len(programs), (
      f"a command this test cannot run (not .venv/bin/python scripts/*.py or -m module): {command}")
  return "script"


def run(command: str, cwd: Path, timeout: float = TIMEOUT_S, variables: dict | None = None) -> str:
  env = {**helpers.env_with_devices(1), **(variables or {})}
  proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: `&` starts more than one process
    out, err = proc.communicate()
    pytest.fail(f"timed out after {timeout}s: {command}\n{err[-3000:]}")
  assert proc.returncode == 0, f"exit {proc.returncode}: {command}\nstdout:\n{out[-1500:]}\nstderr:\n{err[-3000:]}"
  return out


@dataclasses.dataclass
class Live:
  """A documented server, running."""
  command: str
  proc: subprocess.Popen
  port: int
  page: str

  def stop(self) -> None:
    os.killpg(self.proc.pid, signal.SIGTERM)
    try:
      _, err = self.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      _, err = self.proc.communicate()
    if "scripts/serve.py" in self.command:
      assert self.proc.returncode == 0, (self.command, self.proc.returncode, err[-3000:])


def serve(command: str, cwd: Path, page: str, timeout: float = 90) -> Live:
  """Starts the server on a free port and waits until it answers (TensorBoard with its --logdir, scripts/serve.py
  ready); the caller stops it."""
  command = command.strip().removesuffix("&").strip()
  words = shlex.split(command)
  tensorboard = words[0].endswith("tensorboard")
  port = helpers.free_port()
  command = re.sub(r"--port[ =]\d+", "", command) + f" --port {port}"
  url = f"http://localhost:{port}/data/logdir" if tensorboard else f"http://127.0.0.1:{port}/v2/health/ready"
  env = helpers.env_with_devices(1)
  env = helpers.env_without_tensorflow(env) if tensorboard else env  # as without the tf extra: a quicker start
  proc = subprocess.Popen(["bash", "-c", "exec " + local_tools(command)], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
  live = Live(command, proc, port, page)
  deadline, answer = time.time() + timeout, None
  while answer is None and time.time() < deadline and proc.poll() is None:
    try:
      with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    except OSError:
      time.sleep(0.2)
  if answer is None:
    live.stop()
    pytest.fail(f"{command} never answered on port {port}:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}")
  if tensorboard:
    logdir = words[words.index("--logdir") + 1]
    assert answer["logdir"].rstrip("/").endswith(logdir.rstrip("/")), answer
  else:
    assert answer == {"ready": True}, answer
  return live


# ---- the test


ALREADY_RUN: dict[str, str] = {}  # a command line that ran -> the id of its first place in the docs
LIVE: list[Live] = []  # the server the next curl commands call
VARIABLES: dict[str, dict[str, str]] = {}  # page -> NAME -> the output of its `NAME=$(command)`
CURL_ADDRESS = "127.0.0.1:8000"  # the documented server's address, in the docs' curl commands


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
  """One directory for every command, in document order: later commands use the runs of earlier ones."""
  directory = make_scratch(tmp_path_factory.mktemp("docs"))
  yield directory
  while LIVE:
    LIVE.pop().stop()


def test_commands_were_found():
  ids = [c.id for c in COMMANDS]
  assert len(ids) == len(set(ids)), "two commands on one line"
  assert any(c.page == "README.md" for c in COMMANDS) and any(c.page.startswith("docs/") for c in COMMANDS)
  for marker, test in RUN_ELSEWHERE.items():  # each is one documented command, and its test runs it
    assert documented(marker) and f'documented("{marker}")' in (ROOT / test).read_text(), (marker, test)


def is_curl(command: Command) -> bool:
  return command.text.startswith("curl ")


HERE = [c for c in COMMANDS if not runs_elsewhere(c)]


@pytest.mark.parametrize("command", HERE, ids=[c.id for c in HERE])
def test_documented_command(command: Command, scratch: Path):
  assert command.fence in COMMAND_FENCES, (
      f"a ```{command.fence} fence: write shell commands in ```bash fences (run by this test), and output or "
      f"code in ```console, ```text or ```python")
  if is_curl(command):
    assert LIVE and LIVE[0].page == command.page, f"a curl command with no documented server before it: {command.text}"
    assert CURL_ADDRESS in command.text, f"curl must call the documented server at {CURL_ADDRESS}: {command.text}"
    run(command.text.replace("curl ", "curl --fail-with-body ", 1).replace(CURL_ADDRESS, f"127.0.0.1:{LIVE[0].port}"),
        scratch, variables=VARIABLES.get(command.page))
    return
  while LIVE:
    LIVE.pop().stop()
  name, text = None, command.text
  if found := re.fullmatch(r"([A-Z_]+)=\$\((.*)\)", text):
    name, text = found.groups()
  checks, rest = split_setup(text)
  for check in checks:
    check()
  if not rest:
    return
  needs_slurm = "slurm_cluster" in rest or ("launch.py slurm" in rest and "--dry_run" not in rest)
  if needs_slurm and slurm_cluster.missing_binaries():
    pytest.skip(f"SLURM is not installed ({', '.join(slurm_cluster.missing_binaries())} missing): "
                f"apt-get install slurm-wlm")
  if classify(rest) == "server":
    live = serve(rest, scratch, command.page)
    following = COMMANDS[COMMANDS.index(command) + 1:]
    if following and is_curl(following[0]) and following[0].page == command.page:
      LIVE.append(live)  # stopped after the curl commands, before the next other command
    else:
      live.stop()
    return
  # training at smoke scale (the rewrite changes only `--config configs/X.py`), the rest as written
  smoke = smoke_scale(rest)
  trainings = re.findall(TRAINING, smoke)
  assert len(re.findall(r"--config[ =]configs/\w+\.py:\w+", smoke)) == len(trainings), (
      f"a training command this test cannot bring to smoke scale (--config configs/X.py[:variant]): {rest}")
  for part in local_tools(smoke).split(" && "):  # in order, each to exit 0: the chain as bash runs it
    repeated_here = ALREADY_RUN.get(part, "").startswith(command.page + ":")
    if part in ALREADY_RUN and not name and not (re.search(TRAINING, part) and repeated_here):
      continue  # it ran at ALREADY_RUN[part] in this directory (a training repeated on its own page resumes)
    out = run(part, scratch, timeout=900 if "benchmark.py" in part else TIMEOUT_S, variables=VARIABLES.get(command.page))
    ALREADY_RUN[part] = command.id
    if built := re.search(r"-m sphinx .* docs (\S+)$", part):
      api_docs.check_site(scratch / built.group(1))
    if name:
      VARIABLES.setdefault(command.page, {})[name] = out.strip()
