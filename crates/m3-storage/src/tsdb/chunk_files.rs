//! Where the head keeps its closed chunks: in files, so that memory holds only what is still
//! being written.
//!
//! A series closes a chunk every [`CHUNK_SAMPLES`](crate::tsdb::head::CHUNK_SAMPLES) samples and
//! never changes it again, and the head keeps up to one and a half block ranges of them: held
//! in memory, they made the head grow with every sample written. As Prometheus's head does
//! since 2.19, a closed chunk's bytes go to a file instead, and the series keeps where they
//! are (packed with its times and count, see `closed_chunks`). Reads fetch them with `pread`
//! from the page cache.
//!
//! ```text
//! <dir>/00000001.chunks   closed chunks' bytes back to back, nothing else
//! <dir>/00000002.chunks   … a new file every SEGMENT_BYTES
//! ```
//!
//! The files hold nothing the write-ahead log does not: they are deleted at open and filled
//! again as the log replays, so they need no format, checksums or fsync. Appends gather in a
//! buffer written out when it fills (one `write(2)` under the head's lock, as the log's append
//! is); a chunk still in the buffer is read from it. A file goes once every chunk in it ends
//! before a cutoff the head has already dropped: [`ChunkFiles::release_before`].
//!
//! When a write fails (a full disk), the caller keeps that chunk in memory instead; nothing is
//! lost and the next write tries again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file is closed and the next one started once it reaches this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Appends are written out once this many bytes have gathered.
const BUFFER_BYTES: usize = 256 << 10;
const EXTENSION: &str = "chunks";

/// Where a chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    segment: u32,
    offset: u32,
    len: u32,
}

impl ChunkLocation {
    /// The location of `len` bytes at `offset` in segment `segment`, as [`ChunkLocation::parts`]
    /// gave them.
    pub fn from_parts(segment: u32, offset: u32, len: u32) -> ChunkLocation {
        ChunkLocation {
            segment,
            offset,
            len,
        }
    }

    /// (segment, offset, length), for a caller that stores a location in fewer bytes.
    pub fn parts(&self) -> (u32, u32, u32) {
        (self.segment, self.offset, self.len)
    }

    /// The chunk's size in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the chunk has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    /// Bytes written to the file.
    written: u64,
    /// The newest sample time of any chunk in the file.
    max_time: i64,
}

/// A head's chunk files; see the [module docs](self).
#[derive(Debug)]
pub struct ChunkFiles {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    current: u32,
    /// Bytes of the current segment not written yet; they follow its `written` bytes.
    buffer: Vec<u8>,
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.{EXTENSION}"))
}

impl ChunkFiles {
    /// Empties `dir` (created if missing) of chunk files and starts the first.
    ///
    /// # Errors
    /// The directory cannot be created or listed, a file cannot be removed or created.
    pub fn open(dir: &Path) -> io::Result<ChunkFiles> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == EXTENSION) {
                std::fs::remove_file(&path)?;
            }
        }
        let mut files = ChunkFiles {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            current: 0,
            buffer: Vec::new(),
        };
        files.start_segment(1)?;
        Ok(files)
    }

    fn start_segment(&mut self, number: u32) -> io::Result<()> {
        let path = segment_path(&self.dir, number);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        self.segments.insert(
            number,
            Segment {
                file,
                path,
                written: 0,
                max_time: i64::MIN,
            },
        );
        self.current = number;
        Ok(())
    }

    /// Writes the buffer to the current file. On failure the buffer is kept (its chunks are
    /// still read from it) and the next call writes it again at the same offset.
    pub(crate) fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let segment = self
            .segments
            .get_mut(&self.current)
            .ok_or_else(|| io::Error::other("the current chunk file is missing"))?;
        segment.file.write_all_at(&self.buffer, segment.written)?;
        segment.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Appends a chunk whose newest sample is at `last_time`; returns where it is.
    ///
    /// # Errors
    /// Writing out the buffer, or starting the next file, failed: the chunk was not taken.
    pub fn append(&mut self, bytes: &[u8], last_time: i64) -> io::Result<ChunkLocation> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| u64::from(l) < SEGMENT_BYTES)
            .ok_or_else(|| io::Error::other("a chunk larger than a chunk file"))?;
        if self.buffer.len() >= BUFFER_BYTES {
            self.write_buffer()?;
        }
        let written = self.segments.get(&self.current).map_or(0, |s| s.written);
        if written + (self.buffer.len() + bytes.len()) as u64 > SEGMENT_BYTES {
            self.write_buffer()?;
            self.start_segment(self.current + 1)?;
        }
        let segment = self
            .segments
            .get_mut(&self.current)
            .ok_or_else(|| io::Error::other("the current chunk file is missing"))?;
        let offset = segment.written + self.buffer.len() as u64;
        segment.max_time = segment.max_time.max(last_time);
        self.buffer.extend_from_slice(bytes);
        Ok(ChunkLocation {
            segment: self.current,
            // Below SEGMENT_BYTES, checked above.
            offset: offset as u32,
            len,
        })
    }

    /// Reads the chunk at `location` into `out` (replacing what it held).
    ///
    /// # Errors
    /// Its file is gone (released, or removed from outside) or cannot be read.
    pub fn read(&self, location: ChunkLocation, out: &mut Vec<u8>) -> io::Result<()> {
        let segment = self.segments.get(&location.segment).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: chunk file already released",
                    segment_path(&self.dir, location.segment).display()
                ),
            )
        })?;
        let offset = u64::from(location.offset);
        out.clear();
        if location.segment == self.current && offset >= segment.written {
            let start = (offset - segment.written) as usize;
            let bytes = self
                .buffer
                .get(start..start + location.len())
                .ok_or_else(|| io::Error::other("chunk location past the written bytes"))?;
            out.extend_from_slice(bytes);
            return Ok(());
        }
        out.resize(location.len(), 0);
        segment
            .file
            .read_exact_at(out, offset)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", segment.path.display())))
    }

    /// Deletes the files (but the current one) whose every chunk ends before `cutoff`: call it
    /// once the head holds no such chunk any more. Returns how many went; a file that cannot
    /// be deleted is logged and forgotten.
    pub fn release_before(&mut self, cutoff: i64) -> usize {
        let gone: Vec<u32> = self
            .segments
            .iter()
            .filter(|(number, s)| **number != self.current && s.max_time < cutoff)
            .map(|(number, _)| *number)
            .collect();
        for number in &gone {
            if let Some(segment) = self.segments.remove(number)
                && let Err(e) = std::fs::remove_file(&segment.path)
            {
                tracing::warn!(path = %segment.path.display(), error = %e, "Could not delete a released chunk file.");
            }
        }
        gone.len()
    }

    /// Swaps the current file's handle for a read-only one, so every write to it fails as on
    /// a full disk.
    #[cfg(test)]
    pub(crate) fn fail_writes(&mut self) {
        if let Some(segment) = self.segments.get_mut(&self.current) {
            segment.file = File::open(&segment.path).expect("the chunk file opens read-only");
        }
    }

    /// Bytes in the files and the buffer.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.written).sum::<u64>() + self.buffer.len() as u64
    }

    /// Heap bytes held (the buffer).
    pub fn heap_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    /// The number of files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|b| (b as u32 ^ i) as u8).collect()
    }

    #[test]
    fn chunks_read_back_from_the_buffer_and_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ChunkFiles::open(dir.path()).unwrap();
        let mut placed = Vec::new();
        // Enough to write the buffer out many times.
        for i in 0..4_000u32 {
            let bytes = chunk(i, 100 + (i as usize % 300));
            placed.push((files.append(&bytes, i64::from(i)).unwrap(), bytes));
        }
        assert!(files.bytes() > BUFFER_BYTES as u64);
        let mut out = Vec::new();
        for (location, bytes) in &placed {
            files.read(*location, &mut out).unwrap();
            assert_eq!(&out, bytes);
        }
    }

    #[test]
    fn opening_removes_the_files_of_a_previous_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ChunkFiles::open(dir.path()).unwrap();
        files.append(&[1; 1000], 5).unwrap();
        files.write_buffer().unwrap();
        std::fs::write(dir.path().join("00000007.chunks"), b"left over").unwrap();
        std::fs::write(dir.path().join("keep.txt"), b"not ours").unwrap();
        drop(files);
        let files = ChunkFiles::open(dir.path()).unwrap();
        assert_eq!(files.bytes(), 0);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["00000001.chunks", "keep.txt"]);
    }

    #[test]
    fn release_deletes_whole_files_before_the_cutoff_and_never_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ChunkFiles::open(dir.path()).unwrap();
        let big = vec![7u8; 1 << 20];
        let mut locations = Vec::new();
        // 64 one-MiB chunks fill a file; times rise with each.
        for t in 0..150i64 {
            locations.push(files.append(&big, t).unwrap());
        }
        assert_eq!(files.segment_count(), 3);
        // Files hold times 0..=63, 64..=127 and 128..=149.
        assert_eq!(files.release_before(10), 0);
        assert_eq!(files.release_before(100), 1);
        assert_eq!(files.segment_count(), 2);
        let mut out = Vec::new();
        assert_eq!(
            files.read(locations[0], &mut out).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        files.read(locations[149], &mut out).unwrap();
        assert_eq!(out, big);
        // The current file stays whatever the cutoff.
        assert_eq!(files.release_before(i64::MAX), 1);
        assert_eq!(files.segment_count(), 1);
        files.read(locations[149], &mut out).unwrap();
    }
}
