"""MQTT side of the hub: Mosquitto auth files and the bridge that ingests and publishes."""
