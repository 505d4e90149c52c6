"""Ray Serve: per-domain segmentation endpoints, one model per domain multiplexed on shared replicas."""
