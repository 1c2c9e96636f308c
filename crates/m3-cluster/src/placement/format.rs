//! How a placement is laid out in KV, so that m3-rs and M3 processes can share one etcd.
//!
//! M3 stores the aggregator's placement as `placementpb.PlacementSnapshots`: once a list of
//! staged placements with their cutover times, now one snapshot, written either plainly
//! (`snapshots`) or zstd-compressed (`compress_mode: ZSTD`, `compressed_placement`). Every other
//! service's placement is a bare `placementpb.Placement`. [`PlacementFormat`] reads both
//! snapshot forms (of several snapshots, the one with the latest cutover, as M3 does) and
//! writes the plain one, which every M3 version reads.

use bytes::Bytes;
use m3_proto::Message;
use m3_proto::placementpb;

use super::{Placement, PlacementError};
use crate::keys::M3AGGREGATOR;

/// The largest decompressed placement accepted: far above any real placement (16k shards ×
/// 1k instances is a few MB), low enough that a corrupt or hostile value cannot exhaust memory.
pub const MAX_DECOMPRESSED_PLACEMENT_BYTES: u64 = 256 << 20;

/// How one service's placement is stored (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementFormat {
    /// A bare `placementpb.Placement` (coordinators, m3db).
    Bare,
    /// `placementpb.PlacementSnapshots` (aggregators).
    Snapshots,
}

impl PlacementFormat {
    /// The format M3 uses for `service`'s placement.
    pub fn of_service(service: &str) -> PlacementFormat {
        if service == M3AGGREGATOR {
            PlacementFormat::Snapshots
        } else {
            PlacementFormat::Bare
        }
    }

    /// The stored bytes of `placement`.
    pub fn encode(self, placement: &Placement) -> Bytes {
        match self {
            PlacementFormat::Bare => placement.encode(),
            PlacementFormat::Snapshots => Bytes::from(
                placementpb::PlacementSnapshots {
                    snapshots: vec![placement.to_proto()],
                    compress_mode: placementpb::CompressMode::None as i32,
                    compressed_placement: Default::default(),
                }
                .encode_to_vec(),
            ),
        }
    }

    /// The placement stored as `bytes`.
    ///
    /// # Errors
    /// [`PlacementError::Decode`] when the bytes are not a placement in this format.
    pub fn decode(self, bytes: &[u8]) -> Result<Placement, PlacementError> {
        match self {
            PlacementFormat::Bare => Placement::decode(bytes),
            PlacementFormat::Snapshots => decode_snapshots(bytes),
        }
    }
}

fn decode_error(reason: impl Into<String>) -> PlacementError {
    PlacementError::Decode {
        reason: reason.into(),
    }
}

fn decode_snapshots(bytes: &[u8]) -> Result<Placement, PlacementError> {
    let snapshots = placementpb::PlacementSnapshots::decode(bytes)
        .map_err(|e| decode_error(format!("not placement snapshots: {e}")))?;
    if snapshots.compress_mode == placementpb::CompressMode::Zstd as i32 {
        let raw = decompress(&snapshots.compressed_placement)?;
        return Placement::decode(&raw);
    }
    if snapshots.compress_mode != placementpb::CompressMode::None as i32 {
        return Err(decode_error(format!(
            "unknown compress_mode {}",
            snapshots.compress_mode
        )));
    }
    // Of equal cutovers, the one written last wins, as after M3's stable sort.
    let latest = snapshots
        .snapshots
        .into_iter()
        .rev()
        .max_by_key(|p| p.cutover_time)
        .ok_or_else(|| decode_error("placement snapshots is empty"))?;
    Placement::from_proto(latest)
}

/// zstd-decompresses a placement, refusing more than [`MAX_DECOMPRESSED_PLACEMENT_BYTES`].
fn decompress(compressed: &[u8]) -> Result<Vec<u8>, PlacementError> {
    use std::io::Read;
    let mut input = compressed;
    let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
        .map_err(|e| decode_error(format!("compressed placement: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED_PLACEMENT_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| decode_error(format!("compressed placement: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED_PLACEMENT_BYTES {
        return Err(decode_error(format!(
            "compressed placement decompresses to more than {MAX_DECOMPRESSED_PLACEMENT_BYTES} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Instance, build_mirrored};

    fn placement(cutover: i64) -> Placement {
        let instances = ["a", "b"]
            .iter()
            .zip(["g1", "g2"])
            .map(|(id, group)| {
                Instance::new(*id)
                    .with_endpoint(format!("{id}:6000"))
                    .with_isolation_group(group)
                    .with_weight(100)
            })
            .collect();
        let mut p = build_mirrored(instances, 8, 2, 0).unwrap();
        p.cutover_time = cutover;
        p
    }

    #[test]
    fn the_service_picks_the_format() {
        assert_eq!(
            PlacementFormat::of_service("m3aggregator"),
            PlacementFormat::Snapshots
        );
        assert_eq!(
            PlacementFormat::of_service("m3coordinator"),
            PlacementFormat::Bare
        );
    }

    /// What m3-rs writes is M3's `PlacementSnapshots` with one plain snapshot.
    #[test]
    fn written_snapshots_decode_with_m3s_schema() {
        let p = placement(5);
        let bytes = PlacementFormat::Snapshots.encode(&p);
        let m3 = placementpb::PlacementSnapshots::decode(bytes.as_ref()).unwrap();
        assert_eq!(m3.compress_mode, placementpb::CompressMode::None as i32);
        assert!(m3.compressed_placement.is_empty());
        assert_eq!(m3.snapshots, vec![p.to_proto()]);
        assert_eq!(PlacementFormat::Snapshots.decode(&bytes).unwrap(), p);
        assert_eq!(
            PlacementFormat::Bare
                .decode(&PlacementFormat::Bare.encode(&p))
                .unwrap(),
            p
        );
    }

    /// Staged snapshots written by an older M3: the latest cutover is the placement.
    #[test]
    fn of_several_snapshots_the_latest_cutover_is_read() {
        let (old, new) = (placement(10), placement(20));
        let m3 = placementpb::PlacementSnapshots {
            snapshots: vec![new.to_proto(), old.to_proto()],
            ..Default::default()
        };
        let read = PlacementFormat::Snapshots
            .decode(&m3.encode_to_vec())
            .unwrap();
        assert_eq!(read, new);
        let empty = placementpb::PlacementSnapshots::default().encode_to_vec();
        assert!(PlacementFormat::Snapshots.decode(&empty).is_err());
    }

    /// M3's compressed form: the `Placement` bytes zstd-compressed.
    #[test]
    fn zstd_compressed_snapshots_are_read() {
        let p = placement(7);
        let compressed = ruzstd::encoding::compress_to_vec(
            p.to_proto().encode_to_vec().as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let m3 = placementpb::PlacementSnapshots {
            compress_mode: placementpb::CompressMode::Zstd as i32,
            compressed_placement: compressed.into(),
            ..Default::default()
        };
        assert_eq!(
            PlacementFormat::Snapshots
                .decode(&m3.encode_to_vec())
                .unwrap(),
            p
        );
        let corrupt = placementpb::PlacementSnapshots {
            compress_mode: placementpb::CompressMode::Zstd as i32,
            compressed_placement: Bytes::from_static(b"not zstd"),
            ..Default::default()
        };
        let err = PlacementFormat::Snapshots
            .decode(&corrupt.encode_to_vec())
            .unwrap_err();
        assert!(err.to_string().contains("compressed placement"), "{err}");
    }
}
