"""MongoDB replica set engine (topology ``replicaset``)."""
