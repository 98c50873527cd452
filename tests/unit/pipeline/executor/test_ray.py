"""The Ray executor: the same bytes as the local one (1 and 2 workers), on a two-node cluster
(`ray.cluster_utils.Cluster`, both nodes on this machine, reading and writing one shared path);
a Ray worker killed during the scan is retried and changes nothing; without Ray, one line that
says how to install it; a Ray instance started for the build leaves no process behind.

All but the last two tests share one module-scoped cluster of 2 CPUs (two nodes of one CPU).
CPT_REQUIRE_RAY=1 (set by scripts/test.sh, so in CI) makes a missing Ray a failure, not a skip."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.build.run import BuildOptions, build_dataset
from schemas.config import DataConfig
from tests.unit.pipeline.build.test_run import near_copy, prose

REPO = Path(__file__).resolve().parents[4]

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # pragma: no cover - scripts/install.sh installs Ray
    ray = None
    if os.environ.get("CPT_REQUIRE_RAY") == "1":
        raise RuntimeError("CPT_REQUIRE_RAY=1 but Ray is not installed; run bash scripts/install.sh (it installs '.[ray]')") from None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install '.[ray]')")


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine; this process is the driver."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install '.[ray]')")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        c.wait_for_nodes()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Train + eval inputs with exact and near duplicates, eval overlaps and filtered lines, in
    many small chunks (chunk_bytes below), so that tasks spread over the workers."""
    root = tmp_path_factory.mktemp("ray-corpus")
    docs = [prose(i, num_words=120) for i in range(300)]
    train = []
    for i, d in enumerate(docs):
        train.append(d)
        if i % 7 == 0:
            train.append(near_copy(d))
        if i % 11 == 0:
            train.append(d.upper())
        if i % 13 == 0:
            train.append("tiny")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "eval.txt").write_text("\n".join([prose(10_000 + i) for i in range(10)] + [docs[5], near_copy(docs[9])]) + "\n")
    return root


def build(corpus: Path, out: Path, tokenizer, **kw):
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    options = BuildOptions(
        inputs=[str(corpus / "train.txt")], eval_inputs=[str(corpus / "eval.txt")], output=out, tokenizer=str(tokenizer),
        data=DataConfig(shard_target_bytes=8192), progress=False, chunk_bytes=4096, **kw,
    )
    return build_dataset(options)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_reference(corpus, bpe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "w1"
    build(corpus, out, bpe_dir, workers=1)
    return digests(out)


def test_local_two_workers_and_ray_cluster_give_the_same_bytes(cluster, corpus, bpe_dir, local_reference, tmp_path):
    result = build(corpus, tmp_path / "w2", bpe_dir, workers=2)
    assert digests(tmp_path / "w2") == local_reference
    dropped = result.manifest.accounting.dropped
    assert dropped["near_duplicate"] and dropped["exact_duplicate"] and dropped["overlaps_eval"] and dropped["too_short"]
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # both nodes up, reading and writing tmp_path
    build(corpus, tmp_path / "ray", bpe_dir, workers=2, executor="ray")
    assert digests(tmp_path / "ray") == local_reference
    assert not list(tmp_path.glob(".*"))  # no staging folder left


def test_killed_ray_worker_is_retried_with_identical_output(cluster, corpus, bpe_dir, local_reference, tmp_path):
    """SIGKILL a Ray worker while it runs a scan task: Ray runs the task again and the output is the
    same bytes (never a manifest over incomplete shards)."""
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_scanning_worker() -> None:
        while not stop.is_set() and not killed:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "ray::cpt.scan_chunk" in " ".join(p.info["cmdline"] or []):
                    try:
                        os.kill(p.info["pid"], signal.SIGKILL)
                        killed.append(p.info["pid"])
                    except ProcessLookupError:
                        continue
                    break
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_a_scanning_worker, daemon=True)
    watcher.start()
    try:
        build(corpus, tmp_path / "out", bpe_dir, workers=2, executor="ray")
    finally:
        stop.set()
        watcher.join()
    assert killed, "no scan task was seen running, so nothing was killed"
    assert digests(tmp_path / "out") == local_reference


def test_without_ray_the_cli_says_how_to_install_it(corpus, bpe_dir, tmp_path):
    """Ray hidden from the import system (as on an install without the extra): exit 2, one line."""
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
        "from pipeline.cli import main\n"
        f"sys.exit(main(['build', {str(corpus / 'train.txt')!r}, '--tokenizer', {str(bpe_dir)!r}, '--output', {str(tmp_path / 'o')!r}, '--executor', 'ray']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --executor ray needs Ray") and "pip install '.[ray]'" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


@needs_ray
def test_ray_started_for_the_build_leaves_no_process_behind(corpus, bpe_dir, local_reference, tmp_path):
    """`cpt-prep build --executor ray` without an address starts Ray with --workers CPUs, gives the
    local bytes, and shuts it down: no process of it is left."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus / "train.txt"), "--eval", str(corpus / "eval.txt"), "--tokenizer", str(bpe_dir),
           "--output", str(out), "--executor", "ray", "--workers", "2", "--shard_target_bytes", "8192", "--no_progress"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            started |= {c.pid for c in parent.children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert len(started) >= 2, "the build started no Ray processes"
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in started if psutil.pid_exists(p)], timeout=15)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
    assert digests(out) == local_reference  # 2 MiB chunks here, 4 KiB there: the same bytes
