"""Writes the seed inputs of the fuzz targets (valid messages of each kind) into corpus/.

Run from fuzz/: python3 seeds/make_seeds.py. Needs the cramjam package for snappy.
The seeds are committed; this script documents how they were made.
"""
import os
import struct

import cramjam


def varint(n):
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def ln(num, payload):
    return field(num, 2, payload)


def vi(num, n):
    return field(num, 0, varint(n))


def f64(num, x):
    return field(num, 1, struct.pack("<d", x))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# Prometheus remote write: two series, one sample each.
def series(labels, samples):
    out = b""
    for name, value in labels:
        out += ln(1, ln(1, name.encode()) + ln(2, value.encode()))
    for value, ts in samples:
        out += ln(2, f64(1, value) + vi(2, ts))
    return out


request = ln(1, series([("__name__", "up"), ("job", "api")], [(1.0, 1700000000000)])) + ln(
    1, series([("__name__", "http_requests_total"), ("code", "200")], [(42.0, 1700000000000)])
)
write("corpus/remote_write/two_series", bytes(cramjam.snappy.compress_raw(request)))
write("corpus/remote_write/two_series_uncompressed", request)


# M3's tag-encoded ID: magic 10101 LE, u16 count, then u16-length name and value.
def tag_id(tags):
    out = struct.pack("<HH", 10101, len(tags))
    for name, value in tags:
        out += struct.pack("<H", len(name)) + name.encode()
        out += struct.pack("<H", len(value)) + value.encode()
    return out


mid = tag_id([("__name__", "up"), ("job", "api")])
policy = ln(1, vi(1, 10_000_000_000) + vi(2, 1_000_000_000)) + ln(2, vi(1, 172_800_000_000_000))
pipeline = ln(1, vi(1, 1 << 1)) + ln(2, policy)  # aggregation Last, 10s:2d
staged = ln(1, vi(1, 0) + ln(3, ln(1, pipeline)))
timed = vi(1, 3) + ln(2, mid) + vi(3, 1700000000000000000) + f64(4, 7.5)
message = vi(1, 6) + ln(7, ln(1, timed) + ln(2, staged))


def rawtcp_frame(payload):
    n = len(payload)
    return varint((n << 1) ^ (n >> 63)) + payload


counter = vi(1, 1) + ln(2, ln(1, ln(1, mid) + vi(2, 5)))
write("corpus/rawtcp/timed_gauge", rawtcp_frame(message))
write("corpus/rawtcp/counter_default_metadata", rawtcp_frame(counter))

# m3msg: 4-byte big-endian length + Message{metadata{shard,id,sentAtNanos}, value=AggregatedMetric}.
aggregated = ln(1, ln(1, timed) + ln(2, policy)) + vi(2, 1700000000000000000)
msg = ln(1, vi(1, 3) + vi(2, 17) + vi(3, 1700000000000000000)) + ln(2, aggregated)
write("corpus/m3msg/aggregated_metric", struct.pack(">I", len(msg)) + msg)

# Admin JSON: a selector byte (which endpoint) then SEED.md's bodies.
placement = b"""{"num_shards": 64, "replication_factor": 2, "instances": [
 {"id": "m3aggregator01:6000", "isolation_group": "availability-zone-a", "zone": "embedded", "weight": 100,
  "endpoint": "m3aggregator01:6000", "hostname": "m3aggregator01", "port": 6000},
 {"id": "m3aggregator02:6000", "isolation_group": "availability-zone-b", "zone": "embedded", "weight": 100,
  "endpoint": "m3aggregator02:6000", "hostname": "m3aggregator02", "port": 6000}]}"""
coordinators = b"""{"instances": [{"id": "m3coordinator01", "zone": "embedded", "endpoint": "m3coordinator01:7507",
 "hostname": "m3coordinator01", "port": 7507}]}"""
topic = b'{"numberOfShards": 64}'
consumer = b"""{"consumerService": {"serviceId": {"name": "m3coordinator", "environment": "default_env",
 "zone": "embedded"}, "consumptionType": "SHARED", "messageTtlNanos": "300000000000"}}"""
write("corpus/admin_json/placement_init", bytes([0]) + placement)
write("corpus/admin_json/placement_add", bytes([1]) + placement)
write("corpus/admin_json/coordinator_init", bytes([4]) + coordinators)
write("corpus/admin_json/topic_init", bytes([6]) + topic)
write("corpus/admin_json/topic_add", bytes([7]) + consumer)
