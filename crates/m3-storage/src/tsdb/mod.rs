//! The parts of the time-series engine that replaces one key per sample in the LSM tree: the
//! shape every fast TSDB shares (M3DB, Prometheus's head block, VictoriaMetrics). The store
//! ([`crate::Store`]) keeps each namespace in a [`db::NamespaceDb`] built from them.
//!
//! ```text
//! write batch ──▶ WAL (one append per batch, group commit) ──▶ head: series by label hash,
//!                                                               each with compressed chunks
//!                                         block range closes ──▶ immutable block on disk
//!                                                               (chunks, series index, postings)
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`block`] | immutable on-disk blocks: chunks, a series index and postings, checked at open unless a summary describes them |
//! | `block_summary` | what opening a block needs of its index, written beside it so a start need not read every index |
//! | [`chunk`] | one series' samples, delta-of-delta times and XOR'd values |
//! | [`chunk_files`] | the head's closed chunks, kept in files rather than memory |
//! | [`db`] | one namespace: the durable head, its blocks, compaction, retention, merged reads |
//! | [`durable`] | a head whose batches are logged before they are applied, and replayed at open |
//! | [`label_sets`] | label sets shared by a store's heads, numbered, with the postings over them: held once for every namespace |
//! | [`merge`] | the blocks of a longer time range written again as one |
//! | `out_of_order` | the head's out-of-order samples, by series, beside the series rather than in each |
//! | [`paged_slots`] | numbered slots in fixed pages: the head's series without a doubling vector's spare room |
//! | [`packed_labels`] | a label set in one allocation, compared without unpacking |
//! | `postings` | one label value's label sets: a sorted vector, or a bitmap once that is smaller |
//! | [`symbols`] | label names and values numbered once per process, so packed label sets hold numbers |
//! | [`head`] | the series of a namespace in memory: label-hash lookup, matchers through the shared postings, chunks, out-of-order buffer |
//! | `varint` | LEB128 varints: packed label references, the log's sample deltas |
//! | [`wal`] | the write-ahead log: checksummed records in segments, replay that stops at a torn tail |
pub mod block;
mod block_summary;
pub mod chunk;
pub mod chunk_files;
mod closed_chunks;
pub mod db;
pub mod durable;
pub mod head;
pub mod label_sets;
pub mod merge;
mod out_of_order;
pub mod packed_labels;
pub mod paged_slots;
mod postings;
pub mod symbols;
mod varint;
pub mod wal;
