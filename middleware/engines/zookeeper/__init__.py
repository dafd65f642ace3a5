"""ZooKeeper engine: an ensemble with dynamic reconfiguration, so members join and leave without a
reinstall (the weakness of the static zoo.cfg in the DTStack report)."""
