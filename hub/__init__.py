"""EdgeFleet hub: the fleet control plane (registry, TUF repository, MQTT bridge, rollouts)."""
