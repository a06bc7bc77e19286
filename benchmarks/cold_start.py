"""Cold start of `lnmt-serve`: seconds from spawning the server to its first translation.

    python benchmarks/cold_start.py MODEL [--repeat 5] [--python PATH] [--pythonpath DIR] [--json OUT]

MODEL is a checkpoint (.ckpt) or an `lnmt-export`ed directory. Each of `--repeat` starts spawns
`PYTHON -m lightning_nmt.serve MODEL --port <free port>` (127.0.0.1), sends `POST /translate
{"src": ["a man is riding a bike ."]}` every `--poll-ms` until one answers 200 with translations, takes the time
from the spawn to that answer and the server's peak RSS at that moment (VmHWM of /proc/PID/status), then stops it
with SIGTERM and waits for it to exit. Prints each start and the medians; then `PYTHON -X importtime -c "import
lightning_nmt.serve"` (`--import-repeat` times): the self and cumulative time of its top-level line (the whole
import, `lightning_nmt` included), the top-level imports after it (at exit), and the cumulative time of `--modules`
(default lightning, torchmetrics, torch: each with its submodules) where they appear. Also the CPU (`lscpu`) and the
load average at the start: take the figures on an idle machine (a warning is printed above 0.5); the cores used by
other processes during the starts and during the imports (/proc/stat less this process and its children) are
printed too.

`--pythonpath DIR` is prepended to the children's PYTHONPATH, so the same script measures another checkout, e.g. a
snapshot: `--pythonpath /path/to/worktree`. The children run in an empty temporary directory, so that `-m` / `-c`
(which put the working directory first on sys.path) import the package from PYTHONPATH or the environment, not from
the directory this is run in; the file the import found is printed. The environment is passed on as it is
(a PYTHONDONTWRITEBYTECODE that is set is reported: a checkout's modules are then compiled at every start). Only the
standard library is used here (a subprocess and HTTP), nothing of lightning_nmt, so that the measurement does not
change with the code it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SENTENCE = "a man is riding a bike ."
DEFAULT_MODULES = "lightning,torchmetrics,torch"
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")
# urllib would send requests through $http_proxy; the server is local
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of /proc/PID/status, in kB."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_seconds() -> tuple[float, float, float]:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process and its waited-for children)."""
    busy = 0.0
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def others_busy(before: tuple[float, float, float]) -> float:
    """Cores used on average by other processes since `before` (0 on an idle machine)."""
    after = cpu_seconds()
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / max(after[0] - before[0], 1e-9)


def translate_once(url: str, timeout: float) -> dict | None:
    """The answer of one POST /translate, or None while the server is not answering yet."""
    body = json.dumps({"src": [SENTENCE]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with OPENER.open(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 503:  # not ready (if a server ever says so): keep polling
            return None
        raise RuntimeError(f"POST /translate answered {err.code}: {err.read()[:300]!r}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None  # not listening yet, or the connection was dropped while starting
    if not isinstance(answer, dict) or "translations" not in answer:
        raise RuntimeError(f"POST /translate answered without translations: {str(answer)[:300]}")
    return answer


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def one_start(args: argparse.Namespace, model: str, env: dict[str, str], workdir: Path, index: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/translate"
    log = workdir / f"server-{index}.log"
    command = [args.python, "-m", "lightning_nmt.serve", model, "--port", str(port), *args.server_arg]
    with open(log, "wb") as out:
        start = time.perf_counter()
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    try:
        deadline = start + args.timeout
        attempts = 0
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode} before answering; "
                                   f"its last lines:\n{tail(log)}")
            attempts += 1
            answer = translate_once(url, timeout=max(1.0, deadline - time.perf_counter()))
            if answer is not None:
                seconds = time.perf_counter() - start
                memory = proc_status(server.pid)
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no answer within {args.timeout:g} s; the server's last lines:\n{tail(log)}")
            time.sleep(args.poll_ms / 1000)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    hypothesis = answer["translations"][0][0].get("tgt") if answer["translations"] else None
    return {"seconds": seconds, "vm_hwm_kb": memory.get("VmHWM"), "vm_rss_kb": memory.get("VmRSS"),
            "attempts": attempts, "exit_status": server.returncode, "translation": hypothesis, "port": port}


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, name) of each `-X importtime` line, in the order printed."""
    entries = []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            entries.append((int(match[1]), int(match[2]), (len(match[3]) - 1) // 2, match[4]))
    return entries


def package_cumulative(entries: list[tuple[int, int, int, str]], package: str) -> int | None:
    """Microseconds of importing `package`: the sum of the cumulative times of its outermost lines (the package or a
    submodule, not inside another of them), as a submodule may be imported before its package's line is printed
    (torchmetrics' own line is not printed at all: `torchmetrics.functional` and others come first). None: not
    imported."""
    def ours(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    total, found = 0, False
    path: list[str] = []  # names of the current line's ancestors, by depth
    for _self_us, cumulative_us, depth, name in reversed(entries):  # lines are printed after their imports: walk back
        del path[depth:]
        if ours(name) and not any(ours(ancestor) for ancestor in path):
            total += cumulative_us
            found = True
        path.extend([""] * (depth - len(path)))
        path.append(name)
    return total if found else None


def import_time(args: argparse.Namespace, env: dict[str, str], workdir: Path, modules: list[str]) -> dict:
    code = "import lightning_nmt.serve as m; print(m.__file__)"
    start = time.perf_counter()
    done = subprocess.run([args.python, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          cwd=workdir, env=env, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the import failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    entries = parse_importtime(done.stderr)
    # Lines are printed as imports finish (a module after what it imported). Python's own start-up imports end with
    # the top-level `site`; the top-level entries after it are the `-c` code's: `lightning_nmt.serve` (with
    # `lightning_nmt` inside it), then any imported later in the process (e.g. at exit: torch._dynamo's tabulate).
    start = max((i for i, e in enumerate(entries) if e[2] == 0 and e[3] == "site"), default=-1) + 1
    top = [e for e in entries[start:] if e[2] == 0]
    serve = next((e for e in top if e[3] == "lightning_nmt.serve"), None)
    if serve is None:
        raise RuntimeError(f"no top-level `lightning_nmt.serve` line in -X importtime's output:\n{done.stderr[-3000:]}")
    result = {
        "file": done.stdout.strip(),
        "wall_s": wall,
        "serve_self_us": serve[0],
        "serve_cumulative_us": serve[1],
        "later_top_level": {e[3]: e[1] for e in top if e is not serve},  # cumulative us
        "modules": {},
    }
    for name in modules:
        result["modules"][name] = package_cumulative(entries, name)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a checkpoint (.ckpt) or an lnmt-export'ed directory")
    parser.add_argument("--repeat", type=int, default=5, help="server starts (default: 5)")
    parser.add_argument("--import-repeat", type=int, default=3,
                        help="runs of `python -X importtime` (default: 3; 0: none)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the server (default: this one)")
    parser.add_argument("--pythonpath", default=None,
                        help="prepended to the children's PYTHONPATH (e.g. a snapshot's worktree)")
    parser.add_argument("--json", metavar="OUT", default=None, help="write everything measured to this JSON file")
    parser.add_argument("--poll-ms", type=float, default=20, help="sleep between attempts (default: 20)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a start may take (default: 180)")
    parser.add_argument("--modules", default=DEFAULT_MODULES,
                        help=f"comma-separated modules whose cumulative import time is shown (default: "
                             f"{DEFAULT_MODULES})")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more argument of lnmt-serve, e.g. --server-arg=--threads --server-arg=1")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    model = Path(args.model).resolve()
    if not model.exists():
        parser.error(f"{args.model} does not exist")
    if args.pythonpath:
        args.pythonpath = str(Path(args.pythonpath).resolve())
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    env = child_env(args.pythonpath)

    load = os.getloadavg()
    cpu = cpu_model()
    print(f"cpu: {cpu}, {os.cpu_count()} cores; load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5:
        print(f"WARNING: load average {load[0]:.2f} > 0.5: the machine is not idle, start times will be inflated")
    print(f"model: {model}")
    print(f"python: {args.python}; PYTHONPATH={env.get('PYTHONPATH', '')}")
    if env.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set: modules without a .pyc already (e.g. a checkout's) are compiled "
              "at every start")

    report: dict = {"model": str(model), "python": args.python, "pythonpath": args.pythonpath,
                    "server_args": args.server_arg, "cpu": cpu, "cores": os.cpu_count(), "loadavg_start": load,
                    "sentence": SENTENCE, "poll_ms": args.poll_ms, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "PYTHONDONTWRITEBYTECODE": env.get("PYTHONDONTWRITEBYTECODE")}
    starts = []
    clock = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="cold_start-") as tmp:
        workdir = Path(tmp)
        for i in range(args.repeat):
            try:
                result = one_start(args, str(model), env, workdir, i)
            except RuntimeError as err:
                print(f"start {i + 1}: FAILED: {err}", file=sys.stderr)
                return 1
            starts.append(result)
            hwm = result["vm_hwm_kb"]
            print(f"start {i + 1}/{args.repeat}: {result['seconds']:.3f} s to the first answer "
                  f"({result['attempts']} attempts), peak RSS {hwm / 1024 if hwm else float('nan'):.1f} MiB, "
                  f"exit status {result['exit_status']} after SIGTERM")
        print(f"first translation: {starts[0]['translation']!r}")
        seconds = [s["seconds"] for s in starts]
        hwms = [s["vm_hwm_kb"] for s in starts if s["vm_hwm_kb"]]
        median_hwm = statistics.median(hwms) / 1024 if hwms else None
        print(f"median: {statistics.median(seconds):.3f} s to the first answer (min {min(seconds):.3f}, "
              f"max {max(seconds):.3f}); peak RSS median "
              f"{median_hwm if median_hwm is not None else float('nan'):.1f} MiB")
        if any(s["exit_status"] != 0 for s in starts):
            print("WARNING: a server did not exit with status 0 after SIGTERM")
        busy = others_busy(clock)
        print(f"other processes used {busy:.2f} cores on average during the starts")
        report.update(starts=starts, median_s=statistics.median(seconds), median_vm_hwm_mib=median_hwm,
                      others_busy_starts=busy)
        clock = cpu_seconds()

        imports = []
        for i in range(args.import_repeat):
            try:
                found = import_time(args, env, workdir, modules)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"importtime: FAILED: {err}", file=sys.stderr)
                return 1
            imports.append(found)
            later = ", ".join(f"{name} {us / 1e3:.0f} ms" for name, us in found["later_top_level"].items())
            named = ", ".join(f"{name} {'-' if us is None else f'{us / 1e3:.0f} ms'}"
                              for name, us in found["modules"].items())
            print(f"importtime {i + 1}/{args.import_repeat}: lightning_nmt.serve self "
                  f"{found['serve_self_us'] / 1e3:.1f} ms, cumulative {found['serve_cumulative_us'] / 1e3:.0f} ms; "
                  f"cumulative: {named}; later top-level imports: {later or 'none'}; "
                  f"wall of the process {found['wall_s']:.3f} s")
        if imports:
            print(f"imported from: {imports[0]['file']}")
            total = statistics.median(f["serve_cumulative_us"] for f in imports) / 1e3
            named = []
            for name in modules:
                values = [f["modules"][name] for f in imports if f["modules"][name] is not None]
                named.append(f"{name} {statistics.median(values) / 1e3:.0f} ms" if values else f"{name} -")
            print(f"importtime median: lightning_nmt.serve cumulative {total:.0f} ms; cumulative: {', '.join(named)} "
                  f"(- : not imported)")
            busy = others_busy(clock)
            print(f"other processes used {busy:.2f} cores on average during the imports")
            report.update(imports=imports, import_serve_cumulative_median_ms=total, others_busy_imports=busy)

    end = os.getloadavg()
    print(f"load average at end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    report["loadavg_end"] = end
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
