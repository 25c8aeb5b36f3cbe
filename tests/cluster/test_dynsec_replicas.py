"""Broker accounts from any replica (issue 19): two `edgefleet hub serve` replicas on one PostgreSQL schema and
one Mosquitto with the dynamic-security plugin (EDGEFLEET_HUB_BROKER_AUTH=dynsec). A device enrolled through
replica A logs in to the broker at once; removing it through replica B revokes the login at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hub.mqtt.dynsec import initial_config
from hub.security import mosquitto_hash
from hub.services import init_data_dir
from hub.settings import HubSettings
from tests.cluster.replicas import ADMIN_TOKEN, Cluster
from tests.hub.test_dynsec import dynsec_broker, login_refused

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


def test_enroll_through_one_replica_and_remove_through_another(tmp_path: Path, pg_url: str, unique_root: str) -> None:
    cluster = Cluster(workdir=tmp_path, root=unique_root, db_url=pg_url)
    init_data_dir(HubSettings(data_dir=cluster.data_dir))
    hub_pw = (cluster.data_dir / "mqtt_hub_password").read_text().strip()
    cluster.broker = dynsec_broker(tmp_path / "broker", initial_config(hub_password_hash=mosquitto_hash(hub_pw),
                                                                       topic_root=unique_root))  # fmt: skip
    cluster.env = {
        "EDGEFLEET_HUB_DATA_DIR": str(cluster.data_dir), "EDGEFLEET_HUB_DATABASE_URL": pg_url,
        "EDGEFLEET_HUB_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEFLEET_HUB_MQTT_PORT": str(cluster.broker.port),
        "EDGEFLEET_HUB_TOPIC_ROOT": unique_root, "EDGEFLEET_HUB_BROKER_AUTH": "dynsec",
    }  # fmt: skip
    try:
        cluster.start(2)
        a, b = cluster.replicas
        started = time.monotonic()
        device = cluster.enroll("cam-1", replica=a)
        assert not login_refused(cluster.broker.port, device.creds.username, device.creds.password)
        print(f"enroll through A -> broker login: {time.monotonic() - started:.2f} s")  # noqa: T201
        r = cluster.api("DELETE", "/api/v1/devices/cam-1", replica=b)
        assert r.status_code == 204, r.text
        assert login_refused(cluster.broker.port, device.creds.username, device.creds.password)
        assert "Traceback" not in cluster.logs()
    finally:
        cluster.stop()
