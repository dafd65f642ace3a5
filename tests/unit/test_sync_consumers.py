"""Finding redis-shake's replication connection among a node's consumers (``INFO replication``)."""

from __future__ import annotations

from sync.observe import Consumer, parse_consumers, shake_consumer

INFO = {
    "role": "master",
    "connected_slaves": 4,
    "slave0": {"ip": "10.1.0.7", "port": 6379, "state": "online", "offset": 900, "lag": 0},
    "slave1": {"ip": "10.1.0.9", "port": 8080, "state": "online", "offset": 880, "lag": 0},
    "slave2": {"ip": "10.1.0.9", "port": 8080, "state": "wait_bgsave", "offset": 0, "lag": 0},
    "slave3": {"ip": "10.1.0.5", "port": 8080, "state": "online", "offset": 850, "lag": 1},
    "slave_read_only": 1,  # not a consumer, though its name starts like one
    "master_repl_offset": 900,
}


def test_parse_consumers_reads_every_slave_entry_and_nothing_else() -> None:
    consumers = parse_consumers(INFO)
    assert [c.host for c in consumers] == ["10.1.0.7", "10.1.0.9", "10.1.0.9", "10.1.0.5"]
    assert consumers[1] == Consumer("10.1.0.9", 8080, "online", 880)
    assert parse_consumers({"slave0": {"ip": "x"}}) == []  # malformed: skipped, not guessed


def test_the_pods_own_connection_is_chosen_and_its_live_entry_wins() -> None:
    consumers = parse_consumers(INFO)
    assert shake_consumer(consumers, 8080, "10.1.0.9") == Consumer("10.1.0.9", 8080, "online", 880)
    assert shake_consumer(consumers, 8080, "10.1.0.5") == Consumer("10.1.0.5", 8080, "online", 850)
    assert shake_consumer(consumers, 9999, "10.1.0.9") is None


def test_behind_snat_one_address_is_taken_several_are_ambiguous() -> None:
    natted = [Consumer("192.168.4.1", 8080, "online", 700), Consumer("10.1.0.7", 6379, "online", 900)]
    assert shake_consumer(natted, 8080, "10.244.3.17") == natted[0]
    ambiguous = parse_consumers(INFO)
    assert shake_consumer(ambiguous, 8080, "10.244.3.17") is None
