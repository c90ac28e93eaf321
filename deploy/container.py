"""Build and run the service's container images with Docker or podman (`make container` runs `build`).

    python deploy/container.py build [--gpu]        # bento (bentofile.yaml / bentofile-gpu.yaml) -> image
    python deploy/container.py run IMAGE [--port 3000] [--gpus] [--detach] [-e GAN_FIELD=value ...]
    python deploy/container.py base                 # only the Debian base image (see --base)

Two images from the same service code and shipped models: `gan` (onnxruntime, the CPU) and `gan-gpu`
(onnxruntime-gpu with CUDA and cuDNN from PyPI: a GPU with the host's NVIDIA driver, else the CPU). Both are
BentoML's Dockerfile with deploy/Dockerfile.template, which keeps BentoML's compiler toolchain out of them.

The engine is Docker when its daemon answers, else podman. The base image is python:3.11-slim when the engine
has it or can pull it; else (no registry reachable) a Debian bookworm image with Python 3.11 built here from
the machine's Debian mirror with mmdebstrap (or debootstrap), trusting the machine's extra CA certificates
(/usr/local/share/ca-certificates) so that pip inside the build reaches the package index through a proxy
that re-signs TLS. That base image is kept (`localhost/gan-base:bookworm`) and reused by later builds.

`build` prints the image's name last (gan:<bento version>, also tagged gan:latest unless --tag names it).
`run` is `docker run` / `podman run` with the port published; under podman it keeps the container's file and
process limits within the host's (podman's defaults exceed them on some hosts: runc "error setting rlimits").
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENTOFILES = {"cpu": REPO / "bentofile.yaml", "gpu": REPO / "bentofile-gpu.yaml"}
REGISTRY_BASE = "python:3.11-slim"
LOCAL_BASE = "localhost/gan-base:bookworm"
SUITE = "bookworm"
CA_DIR = Path("/usr/local/share/ca-certificates")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
# Debian packages of the local base: Python 3.11 and pip (BentoML's Dockerfile pip-installs uv), CA certificates.
BASE_PACKAGES = "python3,python3-pip,ca-certificates"


def log(msg: str) -> None:
    print(f"[container] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    kw.setdefault("text", True)
    if quiet:
        kw.setdefault("capture_output", True)
    proc = subprocess.run(cmd, **kw)
    if check and proc.returncode:
        out = (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:] if quiet else ""
        raise SystemExit(f"[container] failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return proc


def engine_works(name: str) -> bool:
    if not shutil.which(name):
        return False
    try:
        return subprocess.run([name, "info"], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def find_engine(wanted: str = "auto") -> str:
    """docker when its daemon answers, else podman; SystemExit(3) naming why when neither can run containers."""
    for name in (["docker", "podman"] if wanted == "auto" else [wanted]):
        if engine_works(name):
            return name
    found = [n for n in ("docker", "podman") if shutil.which(n)]
    why = (f"{' and '.join(found)} installed but `info` fails (no daemon or no permission)" if found
           else "neither docker nor podman is installed (make system-deps installs podman on Debian)")
    print(f"[container] no container engine: {why}", file=sys.stderr)
    raise SystemExit(3)


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------------------- base image
def debian_mirrors() -> tuple[str, str]:
    """(main mirror, security mirror) from the machine's apt sources, Debian's own when none are found."""
    main, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file() and f.suffix in ("", ".list", ".sources"):
            texts.append(f.read_text(errors="replace"))
    text = "\n".join(texts)
    for stanza in re.split(r"\n\s*\n", text):                       # deb822: URIs / Suites stanzas
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
        if uris and suites:
            names = suites.group(1).split()
            if f"{SUITE}-security" in names:
                security = uris.group(1)
            elif SUITE in names:
                main = uris.group(1)
    for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):      # one-line format
        if m.group(2) == f"{SUITE}-security":
            security = m.group(1)
        elif m.group(2) == SUITE:
            main = m.group(1)
    return main.rstrip("/"), security.rstrip("/")


def build_local_base(engine: str) -> str:
    """A minimal Debian bookworm root file system with Python 3.11 and pip, imported as LOCAL_BASE."""
    main, security = debian_mirrors()
    cas = sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []
    log(f"building {LOCAL_BASE} from {main} ({len(cas)} extra CA certificate(s) of this machine trusted)")
    with tempfile.TemporaryDirectory(prefix="gan-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        hooks = [f'cp {" ".join(str(c) for c in cas)} "$1/usr/local/share/ca-certificates/"',
                 'chroot "$1" update-ca-certificates'] if cas else []
        hooks.append('rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')   # BentoML pip-installs uv system-wide
        if shutil.which("mmdebstrap"):
            cmd = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                   *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
                   "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                   *(f"--customize-hook={h}" for h in hooks), SUITE, str(tar),
                   f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main",
                   f"deb {security} {SUITE}-security main"]
            sh(cmd, quiet=True)
        elif shutil.which("debootstrap"):
            root = Path(tmp) / "root"
            sh(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(root), main], quiet=True)
            for h in hooks:
                sh(["sh", "-c", h, "hook", str(root)])
            sh(["sh", "-c", 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*', "x", str(root)])
            sh(["tar", "-C", str(root), "-cf", str(tar), "."])
        else:
            raise SystemExit("[container] no registry reachable and neither mmdebstrap nor debootstrap is installed "
                             "(make system-deps installs them on Debian)")
        changes = ['CMD ["/bin/bash"]', "LABEL org.opencontainers.image.title=gan-base",
                   f"LABEL org.opencontainers.image.description=Debian {SUITE} minbase with Python 3.11 and pip"]
        if cas:       # uv (webpki roots by default) and pip read the system store, which holds this machine's CAs
            changes += [f"ENV SSL_CERT_FILE={SYSTEM_CA}", f"ENV PIP_CERT={SYSTEM_CA}"]
        old = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", LOCAL_BASE], capture_output=True,
                             text=True).stdout.strip()
        sh([engine, "import", *(a for c in changes for a in ("--change", c)), str(tar), LOCAL_BASE], quiet=True)
    if old:                                          # the replaced base image, unless something still uses it
        subprocess.run([engine, "rmi", old], capture_output=True)
    return LOCAL_BASE


def resolve_base(engine: str, base: str) -> str:
    """auto: python:3.11-slim when present or pullable, else the local Debian image (built once)."""
    if base not in ("auto", "local"):
        return base
    if base == "auto":
        if image_exists(engine, REGISTRY_BASE):
            return REGISTRY_BASE
        pulled = subprocess.run([engine, "pull", "-q", REGISTRY_BASE], capture_output=True, text=True, timeout=600)
        if pulled.returncode == 0:
            return REGISTRY_BASE
        log(f"cannot pull {REGISTRY_BASE} ({(pulled.stderr.strip().splitlines() or ['?'])[-1][:160]}); "
            f"using {LOCAL_BASE}")
    if image_exists(engine, LOCAL_BASE):
        return LOCAL_BASE
    return build_local_base(engine)


# ------------------------------------------------------------------------------------------------------ build
def bentoml(*args: str, env: dict) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "bentoml", *args], env=env, cwd=REPO, quiet=True)


def build(flavor: str, engine: str, base: str, tag: str | None = None) -> str:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    base_image = resolve_base(engine, base)
    out = bentoml("build", "-f", str(BENTOFILES[flavor]), "-o", "tag", env=env)
    bento = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    image = tag or bento
    log(f"bento {bento} -> image {image} on {base_image} with {engine}")
    # cwd: containerize re-reads the bento's Dockerfile.template from a temporary copy of the bento and refuses a
    # file outside its working directory, so it runs from the temporary directory's parent.
    sh([sys.executable, "-m", "bentoml", "containerize", bento, "--backend", engine, "-t", image,
        "--opt", f"build-arg=BASE_IMAGE={base_image}"], env=env, cwd=tempfile.gettempdir())
    if tag is None:                                   # gan:latest / gan-gpu:latest name the newest build
        sh([engine, "tag", image, image.rsplit(":", 1)[0] + ":latest"], quiet=True)
    print(image)
    return image


# -------------------------------------------------------------------------------------------------------- run
def podman_limits() -> list[str]:
    """--ulimit flags that keep podman within this host: its defaults (about a million open files and processes)
    make runc fail with "error setting rlimits" where the hard limits are lower. A process limit above
    kernel.pid_max failed the same way on the machines the tests run on."""
    pid_max = Path("/proc/sys/kernel/pid_max")
    caps = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[1]}
    if pid_max.exists():
        caps["nproc"] = min(caps["nproc"], int(pid_max.read_text()))
    flags = []
    for name, hard in caps.items():
        if hard != resource.RLIM_INFINITY and hard < 1048576:
            flags += ["--ulimit", f"{name}={hard}:{hard}"]
    return flags


def run_args(engine: str, image: str, port: int, gpus: bool, detach: bool, name: str | None,
             envs: list[str]) -> list[str]:
    cmd = [engine, "run", "--rm", "-p", f"{port}:3000"]
    cmd += ["-d"] if detach else []
    cmd += ["--name", name] if name else []
    cmd += podman_limits() if engine == "podman" else []
    if gpus:
        cmd += ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    for e in envs:
        cmd += ["-e", e]
    return cmd + [image]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/container.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--engine", choices=["auto", "docker", "podman"], default="auto",
                    help="container engine (auto: docker when its daemon answers, else podman)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="bentoml build + bentoml containerize; prints the image name")
    b.add_argument("--gpu", action="store_true", help="the gan-gpu image (bentofile-gpu.yaml, 3+ GB)")
    b.add_argument("--base", default="auto",
                   help=f"base image: auto ({REGISTRY_BASE} when present or pullable, else local), local "
                        f"({LOCAL_BASE}, built from the Debian mirror), or any image with Python 3.11 and pip")
    b.add_argument("--tag", help="image name (default: the bento's tag, e.g. gan:<version>)")
    r = sub.add_parser("run", help="run an image with its port published")
    r.add_argument("image")
    r.add_argument("--port", type=int, default=3000, help="host port for the container's 3000 (default 3000)")
    r.add_argument("--gpus", action="store_true",
                   help="give the container the host's GPUs (docker: --gpus all; podman: --device "
                        "nvidia.com/gpu=all, which needs the NVIDIA Container Toolkit's CDI spec)")
    r.add_argument("--detach", action="store_true", help="run in the background; prints the container id")
    r.add_argument("--name", help="container name")
    r.add_argument("-e", "--env", action="append", default=[], metavar="GAN_FIELD=value",
                   help="a setting (serving/settings.py), repeatable")
    sub.add_parser("base", help=f"build {LOCAL_BASE} (replacing it) and print its name")
    args = ap.parse_args(argv)
    engine = find_engine(args.engine)
    if args.cmd == "build":
        build("gpu" if args.gpu else "cpu", engine, args.base, args.tag)
    elif args.cmd == "base":
        print(build_local_base(engine))
    else:
        cmd = run_args(engine, args.image, args.port, args.gpus, args.detach, args.name, args.env)
        log("$ " + " ".join(cmd))
        return subprocess.run(cmd).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
