"""Redis: standalone, sentinel and cluster topologies (the engine lives in ``engine.py``)."""
