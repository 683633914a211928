from forwarding.server.admission import PRUNE_AT, Admission, AdmissionLimits, source_key


def test_total_connection_cap():
    adm = Admission(AdmissionLimits(max_connections=2, max_connections_per_ip=10, handshake_burst=10))
    assert adm.admit("10.0.0.1", 0) is None
    assert adm.admit("10.0.0.2", 0) is None
    assert "limit of 2 connections" in adm.admit("10.0.0.3", 0)
    adm.release("10.0.0.1")
    assert adm.admit("10.0.0.3", 0) is None


def test_per_ip_cap_leaves_other_addresses_alone():
    adm = Admission(AdmissionLimits(max_connections_per_ip=2, handshake_burst=10))
    assert adm.admit("10.0.0.1", 0) is None
    assert adm.admit("10.0.0.1", 0) is None
    assert "too many connections from 10.0.0.1 (limit 2)" == adm.admit("10.0.0.1", 0)
    assert adm.admit("10.0.0.2", 0) is None
    adm.release("10.0.0.1")
    assert adm.admit("10.0.0.1", 0) is None


def test_rate_with_burst_refills_over_time():
    adm = Admission(AdmissionLimits(handshake_rate=2, handshake_burst=3))
    results = [adm.admit("10.0.0.1", 0.0) for _ in range(4)]
    assert results[:3] == [None, None, None]
    assert "per second" in results[3]
    assert adm.admit("10.0.0.1", 0.25) is not None  # half a token so far
    assert adm.admit("10.0.0.1", 0.5) is None  # one token after 0.5 s at 2/s
    assert adm.admit("10.0.0.9", 0.5) is None  # another address has its own bucket


def test_ipv6_counts_per_64():
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("192.0.2.1") == "192.0.2.1"
    adm = Admission(AdmissionLimits(max_connections_per_ip=1, handshake_burst=10))
    assert adm.admit("2001:db8::1", 0) is None
    assert adm.admit("2001:db8::2", 0) is not None


def test_tracked_addresses_are_pruned_once_idle():
    adm = Admission(AdmissionLimits(handshake_rate=1000, handshake_burst=1))
    for i in range(PRUNE_AT):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        adm.admit(ip, 0.0)
        adm.release(ip)
    assert adm.tracked() == PRUNE_AT
    adm.admit("192.0.2.1", 10.0)  # everything has refilled by now
    assert adm.tracked() == 1


def test_a_table_of_addresses_that_all_hold_connections_is_not_walked_per_new_address():
    """Above PRUNE_AT open addresses, every new one used to walk the whole table (28x CPU at 12,000)."""
    adm = Admission(AdmissionLimits(max_connections=10**6))
    for i in range(4 * PRUNE_AT):
        assert adm.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0) is None  # each keeps its connection
    assert adm.tracked() == 4 * PRUNE_AT
    assert adm.prunes <= 3  # at 10,000, 20,000 and 40,000: amortised O(1) per address
