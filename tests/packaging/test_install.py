"""The package installed the way a user installs it: wheel, fresh virtualenv, startproject, the README's steps.

Everything runs outside the repository: the wheel is built from it, installed into a new
virtualenv (no system site-packages), and a project made by `django-admin startproject mysite`
gets exactly the steps of the README's "Add to an existing project", read from README.md, so
this test fails when the README and the package drift apart. Then the project's own broker,
worker and web server run, a task of the project's own app is enqueued, and its progress is
read over the WebSocket by a raw STOMP client logged in with a session cookie.

Dependencies come from the package index once and are kept as wheels in a wheelhouse
(PACKAGING_WHEELHOUSE, default ~/.cache/django-live-jobs/wheelhouse), so later runs install
offline.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from importlib.metadata import packages_distributions
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest
from packaging.version import Version  # hatchling's dependency

from notifications.codec import HEARTBEAT, Frame, FrameParser, encode_frame
from tests.conftest import free_port, port_open

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Add to an existing project"
PROJECT = "mysite"  # the name the README's steps use
APPS = ("jobs", "notifications")
USERNAME, PASSWORD = "alice", "a-long-test-password-4711"

# Generous: this runs on a loaded 2-core machine.
COMMAND_TIMEOUT = 300
START_TIMEOUT = 120
JOB_TIMEOUT = 120

# The project's own app and task, as a user writes them (see the README's "Using it from your code").
USER_TASKS = '''\
"""Tasks of the project's own app."""
import time

from django.tasks import task

from jobs.progress import report_progress


@task
def count_to(n: int) -> dict:
    for i in range(1, n + 1):
        time.sleep(0.4)
        report_progress(i, n, f"counted {i} of {n}")
    return {"counted": n}
'''


def _run(argv, *, cwd, env=None, timeout=COMMAND_TIMEOUT, what=None) -> str:
    """Run a command to completion and return its standard output; fail with all it said if it fails."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{what or ' '.join(map(str, argv))} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    if proc.stderr.strip():
        logger.info("%s said on stderr:\n%s", what or argv, proc.stderr)
    return proc.stdout


# --- the README's steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One file edit of the README: append `text`, or replace `old` by `text`."""

    path: str
    text: str
    old: str | None = None


@dataclass(frozen=True)
class Steps:
    edits: list[Edit]
    commands: list[str]


def readme_steps(readme: str) -> Steps:
    """The edits and commands of the README's section; any code block it cannot place is an error."""
    if SECTION not in readme:
        raise AssertionError(f"README.md has no section {SECTION!r}")
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    edits, commands = [], []
    position = 0
    for block in re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.M | re.S):
        prose = section[position:block.start()].strip().split("\n\n")[-1].replace("\n", " ")
        position = block.end()
        language, code = block.group(1), block.group(2)
        if language == "sh":
            for line in code.splitlines():
                command = line.split(" #", 1)[0].strip()
                if command:
                    commands.append(command)
        elif append := re.search(r"Add to the end of `([^`]+)`:$", prose):
            edits.append(Edit(append.group(1), code))
        elif replace := re.search(r"In `([^`]+)`, replace `([^`]+)` with:$", prose):
            edits.append(Edit(replace.group(1), code, old=replace.group(2)))
        else:
            raise AssertionError(f"the test cannot apply this block of the README's {SECTION!r}:\n{prose}\n{code}")
    return Steps(edits, commands)


def apply_edit(root: Path, edit: Edit) -> None:
    target = root / edit.path
    assert target.is_file(), f"the README edits {edit.path}, which startproject does not make"
    content = target.read_text()
    if edit.old is None:
        target.write_text(content.rstrip("\n") + "\n\n" + edit.text)
    else:
        assert content.count(edit.old) == 1, f"{edit.path} made by startproject does not hold {edit.old!r} once"
        target.write_text(content.replace(edit.old, edit.text.rstrip("\n")))


def test_the_readme_steps_edit_settings_urls_and_asgi_and_run_broker_worker_and_server():
    steps = readme_steps((REPO / "README.md").read_text())
    assert sorted({edit.path for edit in steps.edits}) == [f"{PROJECT}/asgi.py", f"{PROJECT}/settings.py", f"{PROJECT}/urls.py"]
    assert [command.split()[2] for command in steps.commands] == ["migrate", "check", "stompbroker", "jobworker", "runserver"]


# --- dependencies ----------------------------------------------------------------------------


def _declared() -> dict:
    """pyproject.toml's [project] table."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_module_the_apps_import_is_a_declared_dependency():
    project = _declared()
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {_canonical(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}
    distributions = packages_distributions()
    undeclared = set()
    for path in sorted(p for app in APPS for p in (REPO / app).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in {*APPS, "__future__"}:
                    continue
                names = distributions.get(top, [top])
                if not {_canonical(name) for name in names} & declared:
                    undeclared.add(f"{path.relative_to(REPO)} imports {module} ({', '.join(names)})")
    assert not undeclared, "pyproject.toml does not declare:\n" + "\n".join(sorted(undeclared))


# --- the wheel -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the install test makes its own SQLite project; it runs in the suite's SQLite pass")
    out = tmp_path_factory.mktemp("dist")
    try:
        import hatchling  # noqa: F401  (the build backend, from requirements-dev.txt)
    except ImportError:
        pytest.fail("hatchling is not installed: pip install -r requirements-dev.txt")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", out, REPO],
         cwd=REPO, what="building the wheel")
    [built] = out.glob("django_live_jobs-*.whl")
    return built


def _package_files() -> set[str]:
    files = set()
    for app in APPS:
        for path in (REPO / app).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(REPO).as_posix())
    return files


def test_the_wheel_holds_every_file_of_both_apps_and_nothing_of_the_demo(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packaged = {name for name in names if ".dist-info/" not in name}
    assert packaged == _package_files()
    for expected in (
        "jobs/migrations/0001_initial.py",
        "jobs/management/commands/jobworker.py",
        "jobs/templatetags/jobs_live.py",
        "jobs/templates/jobs/detail.html",
        "jobs/static/jobs/job-live.js",
        "notifications/migrations/0001_initial.py",
        "notifications/management/commands/stompbroker.py",
        "notifications/templatetags/notifications_live.py",
        "notifications/static/notifications/stomp-client.js",
    ):
        assert expected in names
    assert not [name for name in names if name.split("/")[0] in {"project", "tests", "bench", "templates", "static"}]


def test_a_wheel_built_from_the_sdist_holds_the_same_files(wheel, tmp_path):
    _run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", tmp_path / "sdist"], cwd=REPO,
         what="building the sdist")
    [sdist] = (tmp_path / "sdist").glob("django_live_jobs-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp_path / "wheel",
          sdist], cwd=tmp_path, what="building a wheel from the sdist")
    [rebuilt] = (tmp_path / "wheel").glob("django_live_jobs-*.whl")
    with zipfile.ZipFile(wheel) as direct, zipfile.ZipFile(rebuilt) as from_sdist:
        assert sorted(from_sdist.namelist()) == sorted(direct.namelist())


def test_the_wheel_declares_version_ranges_not_pins_and_the_changelog_has_its_version(wheel):
    with zipfile.ZipFile(wheel) as archive:
        [metadata_name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    version = re.search(r"^Version: (.+)$", metadata, re.M).group(1)
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    names = {_canonical(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r}
    assert names == {_canonical(name) for name in lowest_versions()}
    assert {"django", "channels", "daphne", "stomp-py"} <= names
    assert not [r for r in requires if "==" in r.split(";")[0]]
    assert f"## {version} " in (REPO / "CHANGELOG.md").read_text()


# --- a fresh virtualenv and project ----------------------------------------------------------


def _wheelhouse() -> Path:
    configured = os.environ.get("PACKAGING_WHEELHOUSE")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "django-live-jobs" / "wheelhouse"


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment a user's shell would have: this test run's Django, Python and broker settings removed."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTHON", "STOMP_", "PYTEST", "E2E_"))
        and key not in {"VIRTUAL_ENV", "DATABASE_URL", "NOTIFICATIONS", "JOBS_SETTINGS_JSON"}
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def lowest_versions() -> dict[str, str]:
    """The oldest version of every dependency that pyproject.toml claims to support (its >= bound)."""
    versions = {}
    for requirement in _declared()["dependencies"]:
        bound = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        assert bound, f"the dependency {requirement!r} declares no lower bound"
        versions[bound.group(1)] = bound.group(2)
    return versions


@pytest.fixture(scope="module", params=["newest", "lowest"], ids=["newest-dependencies", "lowest-dependencies"])
def venv(request, wheel, tmp_path_factory) -> Path:
    """A new virtualenv with the wheel and its dependencies, from the wheelhouse (filled from the index once).

    Twice: with the newest dependencies the wheelhouse has, and with the oldest that
    pyproject.toml claims (each `>=` bound pinned), so a claim the code outgrew fails here.
    This run's pip installs into it (`pip --python`): the same packages a `pip install` inside it
    would, without the minutes ensurepip and byte-compiling take on a loaded machine.
    """
    root = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent, what="python -m venv")
    env = _clean_env(root)
    house = _wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--python", root / "bin" / "python"]
    constraints = []
    if request.param == "lowest":
        pins = root.parent / "lowest.txt"
        pins.write_text("".join(f"{name}=={version}\n" for name, version in lowest_versions().items()))
        constraints = ["--constraint", pins]
    install = [*pip, "install", "--quiet", "--no-compile", "--no-index", "--find-links", house, *constraints, wheel]
    offline = subprocess.run(install, cwd=root, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if offline.returncode != 0:
        logger.info("wheelhouse %s lacks dependencies (%s); filling it from the package index", house,
                    offline.stderr.strip().splitlines()[-1:] or "")
        _run([*pip, "wheel", "--quiet", "-w", house, "--find-links", house, *constraints, wheel],
             cwd=root, env=env, what="fetching the dependencies into the wheelhouse")
        for stale in house.glob("django_live_jobs-*.whl"):  # only the wheel under test is installed
            stale.unlink()
        _run(install, cwd=root, env=env, what="installing the wheel into the fresh virtualenv")
    if request.param == "lowest":
        installed = _run([root / "bin" / "python", "-c", (
            "from importlib.metadata import version\n"
            f"for name in {sorted(lowest_versions())!r}: print(name, version(name))"
        )], cwd=root, env=env)
        found = dict(line.split(" ", 1) for line in installed.splitlines())
        assert {name: Version(v) for name, v in found.items()} == {
            name: Version(v) for name, v in lowest_versions().items()
        }
    return root


@dataclass
class Site:
    """The fresh project, its environment and the processes started from it."""

    root: Path
    venv: Path
    env: dict[str, str]
    web_port: int
    broker_port: int
    outputs: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def manage(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        output = _run([self.python, "manage.py", *args], cwd=self.root, env=self.env, timeout=timeout,
                      what=f"manage.py {' '.join(args)}")
        self.outputs[" ".join(args)] = output
        return output

    def start(self, name: str, argv: list) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (kept open while the process runs)
        self.procs[name] = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def logs(self) -> str:
        parts = [f"--- {name} (exit {proc.poll()}) ---\n{(self.root / f'{name}.log').read_text(errors='replace')[-6000:]}"
                 for name, proc in self.procs.items()]
        return "\n".join(parts)

    def wait_for_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open("127.0.0.1", port):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not listen on port {port}\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for name, proc in reversed(self.procs.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs.items()):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in 30 s after SIGTERM; killing it", name)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def site(venv, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    env = _clean_env(venv)
    env.update(DJANGO_SUPERUSER_USERNAME=USERNAME, DJANGO_SUPERUSER_PASSWORD=PASSWORD,
               DJANGO_SUPERUSER_EMAIL="alice@example.com")
    site = Site(root=root, venv=venv, env=env, web_port=free_port(), broker_port=free_port())
    _run([venv / "bin" / "django-admin", "startproject", PROJECT, root], cwd=root, env=env, what="django-admin startproject")
    steps = readme_steps((REPO / "README.md").read_text())
    for edit in steps.edits:
        apply_edit(root, edit)
    # What the test adds for itself: its own ports (RabbitMQ may hold 61613 here) and its own app.
    site.manage("startapp", "reports")
    (root / "reports" / "tasks.py").write_text(USER_TASKS)
    with open(root / PROJECT / "settings.py", "a") as settings:
        settings.write(
            "\n# Added by tests/packaging: the project's own app, ports of this test run.\n"
            'INSTALLED_APPS += ["reports"]\n'
            f'NOTIFICATIONS = {{"BROKER_URL": "stomp://127.0.0.1:{site.broker_port}", '
            f'"EMBEDDED_BROKER": {{"PORT": {site.broker_port}}}}}\n'
        )
    try:
        for command in steps.commands:
            argv = command.split()
            assert argv[:2] == ["python", "manage.py"], f"the test runs manage.py commands only, not {command!r}"
            name = argv[2]
            if name in {"stompbroker", "jobworker", "runserver"}:
                if name == "runserver":
                    argv += ["--noreload", f"127.0.0.1:{site.web_port}"]
                site.start(name, [site.python, *argv[1:]])
                if name == "stompbroker":
                    site.wait_for_port(name, site.broker_port)
            else:
                site.manage(*argv[2:])
        site.wait_for_port("runserver", site.web_port)
        site.manage("createsuperuser", "--noinput")
        yield site
    finally:
        site.stop()
        if site.procs:
            logger.info("processes of the fresh project:\n%s", site.logs())


def test_the_apps_in_the_fresh_project_come_from_the_wheel_not_the_repository(site):
    out = _run([site.python, "-c", "import jobs, notifications; print(jobs.__file__); print(notifications.__file__)"],
               cwd=site.root, env=site.env)
    for line in out.split():
        assert Path(line).is_relative_to(site.venv), line


def test_the_fresh_project_passes_manage_py_check_with_no_issue(site):
    assert site.outputs["check"].strip() == "System check identified no issues (0 silenced)."


def test_every_management_command_of_the_apps_loads_in_the_fresh_project(site):
    commands = sorted(
        (app, path.stem) for app in APPS for path in (REPO / app / "management" / "commands").glob("*.py")
        if not path.name.startswith("_")
    )
    listed = site.manage("help", "--commands").split()
    assert {name for _, name in commands} <= set(listed)
    # What `manage.py <command> --help` does, for all of them in one process.
    helps = site.manage("shell", "--no-imports", "-c", (
        "from django.core.management import load_command_class\n"
        f"for app, name in {commands!r}:\n"
        "    usage = load_command_class(app, name).create_parser('manage.py', name).format_usage()\n"
        "    print(name, usage.split()[0])\n"
    ))
    assert helps.split("\n")[:-1] == [f"{name} usage:" for _, name in commands]


# --- progress over the WebSocket -------------------------------------------------------------


class RawStomp:
    """A STOMP 1.2 client over a plain WebSocket (websockets' sync client), with the project codec."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.parser = FrameParser()
        self.frames: list[Frame] = []

    def send(self, command: str, **headers: str) -> None:
        self.ws.send(encode_frame(Frame(command, tuple(headers.items()))).decode())

    def next_frame(self, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no STOMP frame within {timeout} s")
            data = self.ws.recv(timeout=remaining)
            self.parser.receive_data(data.encode() if isinstance(data, str) else data)
            self.frames.extend(event for event in self.parser.events_received() if event is not HEARTBEAT)
        return self.frames.pop(0)


def _log_in(site: Site):
    """Log in through the admin's login page, as a person would: an opener with the session, and its cookie."""
    jar = CookieJar()
    opener = build_opener(HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{site.web_port}"
    page = opener.open(f"{base}/admin/login/", timeout=START_TIMEOUT).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urlencode({"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/admin/"})
    opener.open(Request(f"{base}/admin/login/?next=/admin/", data=form.encode()), timeout=START_TIMEOUT).read()
    cookies = {cookie.name: cookie.value for cookie in jar}
    assert "sessionid" in cookies, f"the admin login set no session cookie: {sorted(cookies)}"
    return opener, f"sessionid={cookies['sessionid']}"


def _enqueue(site: Site, n: int) -> str:
    """Enqueue the project's own task for the user, from `manage.py shell` as a person would; the job id."""
    out = site.manage(
        "shell", "--no-imports", "-c",
        "from django.contrib.auth import get_user_model\n"
        "from jobs.api import enqueue_for\n"
        "from reports.tasks import count_to\n"
        f"print('job', enqueue_for(get_user_model().objects.get(username={USERNAME!r}), count_to, {n}).id)",
    )
    return re.search(r"^job ([0-9a-f-]{36})$", out, re.M).group(1)


def test_the_apps_pages_admin_and_static_files_serve_in_the_fresh_project(site):
    """The pages come with their own base template: the project has none of the demo's templates."""
    opener, _ = _log_in(site)
    job_id = _enqueue(site, 1)
    base = f"http://127.0.0.1:{site.web_port}"
    pages = {}
    for path in ("/jobs/", f"/jobs/{job_id}/", "/notifications/", "/admin/jobs/job/", f"/admin/jobs/job/{job_id}/change/",
                 "/static/jobs/job-live.js", "/static/notifications/stomp-client.js", "/static/notifications/ui.css"):
        with opener.open(f"{base}{path}", timeout=START_TIMEOUT) as response:
            assert response.status == 200, (path, response.status)
            pages[path] = response.read().decode()
    with build_opener().open(f"{base}/jobs/", timeout=START_TIMEOUT) as anonymous:  # LOGIN_URL from the README
        assert (anonymous.status, anonymous.url) == (200, f"{base}/admin/login/?next=/jobs/")
    assert "reports.tasks.count_to" in pages[f"/jobs/{job_id}/"]
    assert job_id in pages["/jobs/"]
    assert job_id in pages["/admin/jobs/job/"]


def test_progress_of_a_task_of_the_projects_own_app_arrives_over_the_websocket(site):
    from websockets.sync.client import connect

    url, (_, cookie) = f"ws://127.0.0.1:{site.web_port}/ws/stomp/", _log_in(site)
    with connect(url, subprotocols=["v12.stomp"], additional_headers={"Cookie": cookie}, proxy=None,
                 open_timeout=START_TIMEOUT) as ws:
        client = RawStomp(ws)
        client.send("CONNECT", **{"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"})
        connected = client.next_frame(START_TIMEOUT)
        assert connected.command == "CONNECTED", (connected, site.logs())
        client.send("SUBSCRIBE", id="mine", destination="/user/queue/jobs", receipt="subscribed")
        while (frame := client.next_frame(START_TIMEOUT)).command != "RECEIPT":
            assert frame.command == "MESSAGE", (frame, site.logs())

        job_id = _enqueue(site, 5)

        events = []
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (events and events[-1]["final"]):
            try:
                frame = client.next_frame(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                pytest.fail(f"job {job_id} did not finish live within {JOB_TIMEOUT} s: {events}\n{site.logs()}")
            assert frame.command == "MESSAGE", (frame, site.logs())
            event = json.loads(frame.body)
            if event.get("id") == job_id:
                events.append(event)

    assert events[0]["task"] == "reports.tasks.count_to"
    running = [e["progress"]["done"] for e in events if e["status"] == "RUNNING"]
    assert [done for done in running if 0 < done < 5], f"no progress while running: {events}"
    assert running == sorted(running)
    final = events[-1]
    assert (final["status"], final["progress"]["done"], final["progress"]["total"]) == ("SUCCESSFUL", 5, 5)
    assert final["message"] == "counted 5 of 5"
