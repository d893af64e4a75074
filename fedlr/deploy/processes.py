"""Process hygiene: ``ProcessTree`` starts processes in their own session, keeps sampling their
descendants (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) and stops all of them by
pid — never by name, never a recycled pid."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path


class ProcessTree:
    """Processes this object started (each in its own session) and every descendant they ever had.

    Flower's SuperLink starts ``flower-superexec`` in a *new session* and that one starts
    ``flwr-serverapp`` per run; a SuperNode starts ``flower-superexec`` which starts one
    ``flwr-clientapp`` per message. A sampler thread records (pid, start time) of all
    descendants, so ``stop`` can end them by pid even after their parent died (re-parented to
    init) — and never a recycled pid that belongs to someone else."""

    def __init__(self, log_dir: Path, env: dict[str, str], sample_s: float = 0.25):
        import psutil

        self._psutil = psutil
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, tuple[float, str]] = {}  # pid -> (create_time, command line head)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, args=(sample_s,), daemon=True)
        self._thread.start()

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        with self._lock:
            self.procs[name] = proc
        self._record(proc.pid)
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _record(self, pid: int) -> None:
        ps = self._psutil
        try:
            root = ps.Process(pid)
            family = [root, *root.children(recursive=True)]
        except ps.Error:
            return
        for p in family:
            try:
                key = (p.create_time(), " ".join(Path(a).name if i < 2 else a for i, a in enumerate(p.cmdline()[:4])))
            except ps.Error:
                continue
            with self._lock:
                known = self.seen.get(p.pid)
                if known is None or known[0] == key[0]:
                    # the same process keeps its newest command line: one sampled between fork and
                    # exec still shows its parent's (a pid reused by a later process is not relabelled)
                    self.seen[p.pid] = key

    def _sample_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                pids = [p.pid for p in self.procs.values() if p.poll() is None]
            for pid in pids:
                self._record(pid)

    def _alive(self) -> list:
        """psutil.Process objects of everything recorded that still runs (same start time)."""
        ps = self._psutil
        out = []
        with self._lock:
            items = list(self.seen.items())
        for pid, (created, _) in items:
            try:
                p = ps.Process(pid)
                if abs(p.create_time() - created) < 1e-3 and p.status() != ps.STATUS_ZOMBIE:
                    out.append(p)
            except ps.Error:
                continue
        return out

    def alive_names(self) -> list[str]:
        """Command lines (head) of everything recorded that still runs."""
        with self._lock:
            labels = dict(self.seen)
        return [labels[p.pid][1] for p in self._alive()]

    def seen_cmdlines(self) -> list[str]:
        with self._lock:
            return [label for _, label in self.seen.values()]

    def stop(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM everything recorded, SIGKILL what is left after ``grace_s``; returns what had to
        be killed. Safe to call twice."""
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                self._record(proc.pid)
        self._stop.set()
        victims = self._alive()
        for p in victims:
            try:
                p.send_signal(signal.SIGTERM)
            except self._psutil.Error:
                pass
        _, left = self._psutil.wait_procs(victims, timeout=grace_s)
        killed = []
        with self._lock:
            labels = dict(self.seen)
        for p in left:
            try:
                p.kill()
                killed.append(labels[p.pid][1])
            except self._psutil.Error:
                pass
        self._psutil.wait_procs(left, timeout=5)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return killed

