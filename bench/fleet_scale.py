"""Fleet scale: K real agents plus N simulated devices against one hub; time for a full rollout.

For N = 100 and N = 1,000 (plus K = 3 real `edgefleet agent run` processes), one rollout of a small
digits model to every device: canary 10 %, then 100 %, probation 1 s, self-test gate. The hub runs
as its own process (`edgefleet hub serve`, SQLite, private Mosquitto with per-device auth), so its
CPU time and RSS are read from /proc while the rollout runs. Prints one JSON object; top-level keys
`devices`, `rollout_s`, `hub_cpu_s`, `hub_rss_mb` are for the largest N (target: 1,000 devices in
<= 60 s on this 2-core machine); `runs` has every N. Enrollment and connection are set-up, not timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.demo.environment import TOPIC_ROOT, DemoEnvironment
from edgefleet.demo.fleet import AgentProcess
from edgefleet.samples import digits, train_keras_cnn

SIZES = tuple(int(n) for n in os.environ.get("EDGEFLEET_BENCH_SIZES", "100,1000").split(","))
REAL_AGENTS = 3
TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _model(folder: Path) -> Path:
    from converter.pipeline import ConvertRequest, convert

    data = digits()
    calib, val = data.write(folder)
    model = train_keras_cnn(folder / "digits.keras", data, epochs=3)
    return convert(ConvertRequest(model=model, profiles=["x86_gateway"], calibration=calib, validation=val,
                                  out=folder / "out", name="digits", latency_runs=20, cloud=False)).out


def run(size: int, folder: Path, model_out: Path) -> dict[str, float]:
    from hub.ops_cli import archive

    env = DemoEnvironment(folder)
    env.start()
    agents: list[AgentProcess] = []
    sim: subprocess.Popen[bytes] | None = None
    try:
        assert env.hub is not None
        env.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", archive(model_out))})
        token = env.api("POST", "/api/v1/enrollment-tokens", json={"uses": REAL_AGENTS})["token"]
        for i in range(REAL_AGENTS):
            agent = AgentProcess(f"agent-{i}", "x86_gateway", folder / f"agent-{i}",
                                 {"hub_url": env.hub_url, "allow_insecure_http": True, "enrollment_token": token,
                                  "topic_root": TOPIC_ROOT, "probation_s": 1.0, "log_level": "WARNING"})
            agent.start()
            agents.append(agent)
        t0 = time.perf_counter()
        # `edgefleet simulate` shards big fleets over processes (paho's select() loop caps one process).
        sim = subprocess.Popen([sys.executable, "-m", "edgefleet", "simulate", "--devices", str(size), "--hub",
                                env.hub_url, "--profile", "x86_gateway", "--prefix", "sim", "--topic-root", TOPIC_ROOT],
                               env={**os.environ, "EDGEFLEET_HUB_ADMIN_TOKEN": env.admin_token},
                               stdout=subprocess.DEVNULL, stderr=(folder / "simulate.log").open("wb"))
        deadline = time.monotonic() + 300
        online = 0
        while online < size + REAL_AGENTS:
            online = sum(1 for d in env.api("GET", "/api/v1/devices?limit=10000") if d["online"])
            if time.monotonic() > deadline or sim.poll() is not None:
                raise TimeoutError(f"{online}/{size + REAL_AGENTS} devices online, simulator exit code {sim.poll()}: "
                                   f"{(folder / 'simulate.log').read_text()[-500:]}")
            time.sleep(0.5)
        enroll_s = time.perf_counter() - t0
        cpu0, t0 = _proc_cpu_s(env.hub.pid), time.perf_counter()
        env.api("POST", "/api/v1/rollouts", json={"id": "scale", "model": "digits", "version": 1,
                                                  "canary_percent": 10, "stages": [100], "probation_s": 1.0,
                                                  "timeout_s": 300, "gates": ["self_test"]})
        rss = 0.0
        while True:
            state = env.api("GET", "/api/v1/rollouts/scale")["state"]
            rss = max(rss, _proc_rss_mb(env.hub.pid))
            if state in ("completed", "paused", "aborted", "rolled_back"):
                break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError("rollout did not finish in 300 s")
            time.sleep(0.2)
        return {"devices": size + REAL_AGENTS, "real_agents": REAL_AGENTS, "state": state,  # type: ignore[dict-item]
                "rollout_s": round(time.perf_counter() - t0, 2), "hub_cpu_s": round(_proc_cpu_s(env.hub.pid) - cpu0, 2),
                "hub_rss_mb": round(rss, 1), "enroll_connect_s": round(enroll_s, 1)}
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(30)
        for a in agents:
            a.stop()
        env.stop()


def main() -> None:
    keep = os.environ.get("EDGEFLEET_BENCH_DIR")  # keep hub, broker and agent logs for a post-mortem
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        model_out = _model(root / "model")
        runs = [run(n, root / f"n{n}", model_out) for n in SIZES]
    largest = runs[-1]
    out = {"benchmark": "fleet_scale", "devices": largest["devices"], "rollout_s": largest["rollout_s"],
           "hub_cpu_s": largest["hub_cpu_s"], "hub_rss_mb": largest["hub_rss_mb"], "runs": runs,
           "target_rollout_s": 60.0}
    out["meets_targets"] = largest["state"] == "completed" and largest["rollout_s"] <= 60.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
