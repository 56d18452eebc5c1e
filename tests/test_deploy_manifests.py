"""The deployment examples (deploy/kubernetes, deploy/cron) are what they say: valid manifests of
the kinds named, the Indexed Job's pod index wired to --shards, the shards sharing one Redis and
one volume, the job file in the ConfigMap a valid job, and the merge run as a follow-up Job."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from batchrun.cli import _merge_parser, _run_parser
from batchrun.job.schema import load_job
from batchrun.shard import Shard

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every document of every manifest, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    assert files, "no manifests under deploy/kubernetes"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict), path
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} twice"
            found[key] = doc
    return found


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _volumes(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}


def test_the_manifests_are_the_kinds_the_example_needs() -> None:
    """A ConfigMap (the job file), a PVC, Redis (Deployment and Service), the Indexed Job and
    the merge Job."""
    kinds = sorted(kind for kind, _ in _manifests())
    assert kinds == ["ConfigMap", "Deployment", "Job", "Job", "PersistentVolumeClaim", "Service"]


def test_the_indexed_job_runs_one_shard_per_index() -> None:
    """completionMode Indexed; completions = parallelism = --shards N; the pod index reaches
    batchrun as JOB_COMPLETION_INDEX; the key comes from a Secret."""
    job = _manifests()[("Job", "batchrun-eval")]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = _container(job)
    command = container["command"]
    assert command[0] == "batchrun"
    ns = _run_parser().parse_args(command[1:])
    assert ns.shards == spec["completions"] == spec["parallelism"]
    assert ns.shard is None  # K comes from the index, not the command line
    assert not ns.local
    env = {e["name"]: e for e in container["env"]}
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    shard = Shard.from_env(ns.shards, {"JOB_COMPLETION_INDEX": str(spec["completions"] - 1)})
    assert shard.folder == f"shard-{ns.shards - 1}-of-{ns.shards}"
    key = env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "batchrun-anthropic", "key": "api-key"}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    exit_codes = spec["podFailurePolicy"]["rules"][0]["onExitCodes"]
    assert exit_codes["containerName"] == container["name"]


def test_the_shards_share_a_volume_redis_and_the_job_file(tmp_path: Path) -> None:
    """Both Jobs mount the one PVC and the ConfigMap; the job file there is valid, writes under
    the mounted volume and points its budget at the Redis Service."""
    found = _manifests()
    (claim,) = [name for kind, name in found if kind == "PersistentVolumeClaim"]
    (config,) = [name for kind, name in found if kind == "ConfigMap"]
    for name in ("batchrun-eval", "batchrun-eval-merge"):
        job = found[("Job", name)]
        volumes = _volumes(job)
        mounts = {m["name"]: m["mountPath"] for m in _container(job)["volumeMounts"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim
        assert volumes["job"]["configMap"]["name"] == config
        assert mounts == {"job": "/job", "data": "/data"}
    text = found[("ConfigMap", config)]["data"]["eval.yaml"]
    path = tmp_path / "eval.yaml"
    path.write_text(text, encoding="utf-8")
    job = load_job(path)
    assert job.output.dir.startswith("/data/")
    assert job.input.path.startswith("/data/")
    assert job.limits.shared
    assert job.limits.redis_url is not None
    redis = urlsplit(job.limits.redis_url)
    service = found[("Service", redis.hostname or "")]
    assert service["spec"]["ports"][0]["port"] == redis.port
    deployment = found[("Deployment", "batchrun-redis")]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    command = _container(found[("Job", "batchrun-eval")])["command"]
    assert command[1] == f"/job/{path.name}"


def test_the_merge_is_a_follow_up_job() -> None:
    """The merge Job runs `batchrun merge` on the same job file as the shards."""
    found = _manifests()
    command = _container(found[("Job", "batchrun-eval-merge")])["command"]
    assert command[:2] == ["batchrun", "merge"]
    ns = _merge_parser().parse_args(command[2:])
    assert ns.job == _container(found[("Job", "batchrun-eval")])["command"][1]


def test_the_cron_example_runs_each_shard_once_and_merges() -> None:
    """One line per shard K of N (JOB_COMPLETION_INDEX=K ... --shards N) and a merge line."""
    lines = [
        line
        for line in (DEPLOY / "cron" / "batchrun.cron").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    indexes, counts, merges = [], set(), 0
    for line in lines:
        words = shlex.split(line)[6:]  # minute hour day month weekday user
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        args = [w for w in words if "=" not in w or w.startswith("-")]
        assert args[0] == "batchrun"
        rest = [a for a in args[1:] if not a.startswith((">", "2>"))]
        if rest[0] == "merge":
            merges += 1
            continue
        ns = _run_parser().parse_args(rest)
        counts.add(ns.shards)
        indexes.append(Shard.from_env(ns.shards, env).index)
    (count,) = counts
    assert sorted(indexes) == list(range(count))
    assert merges == 1
