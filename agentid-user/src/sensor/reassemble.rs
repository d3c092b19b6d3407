//! Puts an exec's arguments and environment back together from its exec record and the
//! chunk records the kernel sends ahead of it (`agentid_ebpf::ExecChunkRecord`).
//!
//! The kernel submits an exec's chunks before its exec record, and ring-buffer records are
//! read in reservation order, so when an exec record arrives every chunk of it that made
//! it into the ring buffer has been seen: the exec is assembled at once, never on a timer.
//! Chunks whose exec record never comes (the ring buffer was full for it) are evicted by
//! age and by a byte budget, so memory stays bounded whatever the kernel (or a garbled
//! record) sends. Environment bytes are secrets: every buffer here is zeroed on drop, and
//! assembled buffers are allocated at their final size so no reallocation leaves a copy.
use std::collections::{BTreeMap, HashMap, VecDeque};

use agentid_ebpf::{ARGV_LEN, CHUNK_LEN, ENV_LEN, EXEC_AREA_CAP, chunk_stream};
use zeroize::Zeroizing;

use super::decode::DecodeError;

/// Chunk bytes held for execs not yet complete. The ring buffer is 16 MiB, so the chunks
/// of every exec in flight fit; beyond this the oldest pending execs are dropped (and
/// their exec, if it still comes, is flagged as having lost chunks).
pub const MAX_PENDING_BYTES: usize = 16 << 20;
/// Pending chunks older than this (by kernel time, against the newest chunk seen) belong
/// to an exec record that was lost: the exec record follows its chunks within one program
/// run, so a real one is never this late.
pub const MAX_PENDING_AGE_NS: u64 = 10_000_000_000;

type Key = (u32, u64);

#[derive(Default)]
struct Pending {
    /// Chunks by offset, per stream (argv, env).
    streams: [BTreeMap<u32, Zeroizing<Vec<u8>>>; 2],
    bytes: usize,
    /// A chunk of this exec arrived twice (the first copy is kept).
    duplicate: bool,
}

/// One of an exec's areas as assembled.
#[derive(Debug)]
pub struct Assembled {
    /// The contiguous bytes from offset 0.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Fewer bytes than expected were assembled: a chunk is missing.
    pub gap: bool,
}

/// Chunk reassembly state for a sensor. Bounded: see [`MAX_PENDING_BYTES`].
#[derive(Default)]
pub struct Reassembler {
    pending: HashMap<Key, Pending>,
    /// Insertion order with each exec's first chunk time, for eviction.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    newest_ns: u64,
    /// Execs whose chunks were evicted before their exec record came.
    evicted: u64,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("pending", &self.pending.len())
            .field("bytes", &self.bytes)
            .field("evicted", &self.evicted)
            .finish_non_exhaustive()
    }
}

/// The first part's capacity of a stream (what the exec record itself holds).
fn first_len(stream: u32) -> usize {
    if stream == chunk_stream::ARGV {
        ARGV_LEN
    } else {
        ENV_LEN
    }
}

impl Reassembler {
    /// Keeps one chunk until its exec record comes. `data` is the chunk's valid bytes.
    pub fn chunk(
        &mut self,
        tgid: u32,
        start_ns: u64,
        ktime_ns: u64,
        stream: u32,
        offset: u32,
        data: &[u8],
    ) -> Result<(), DecodeError> {
        if stream != chunk_stream::ARGV && stream != chunk_stream::ENV {
            return Err(DecodeError::BadLength {
                field: "chunk stream",
                len: stream as usize,
                max: 1,
            });
        }
        let off = offset as usize;
        // The kernel sends chunks past the record's first part, at most CHUNK_LEN each,
        // inside the cap; anything else is garbled and is refused before it costs memory.
        if data.len() > CHUNK_LEN
            || off < first_len(stream)
            || off.saturating_add(data.len()) > EXEC_AREA_CAP
        {
            return Err(DecodeError::BadLength {
                field: "chunk",
                len: off.saturating_add(data.len()),
                max: EXEC_AREA_CAP,
            });
        }
        self.newest_ns = self.newest_ns.max(ktime_ns);
        let key = (tgid, start_ns);
        let entry = self.pending.entry(key).or_insert_with(|| {
            self.order.push_back((key, ktime_ns));
            Pending::default()
        });
        match entry.streams[stream as usize].entry(offset) {
            std::collections::btree_map::Entry::Occupied(_) => entry.duplicate = true,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Zeroizing::new(data.to_vec()));
                entry.bytes += data.len();
                self.bytes += data.len();
            }
        }
        self.evict();
        Ok(())
    }

    /// Drops pending execs that are too old or over the byte budget, oldest first.
    fn evict(&mut self) {
        while let Some(&(key, first_ns)) = self.order.front() {
            let live = self.pending.contains_key(&key);
            let old = self.newest_ns.saturating_sub(first_ns) > MAX_PENDING_AGE_NS;
            if live && !old && self.bytes <= MAX_PENDING_BYTES {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.remove(&key) {
                self.bytes -= p.bytes;
                self.evicted += 1;
            }
        }
    }

    /// Assembles an exec's two areas: `first` holds the exec record's parts of argv and
    /// env, `expected` how many bytes of each should result (the area's length, capped).
    /// Chunks are appended in offset order while they continue the bytes so far; a gap
    /// ends the area (and is reported), overlapping or out-of-range chunks are ignored.
    /// Returns `[argv, env]` and whether a chunk of this exec arrived twice (garbled
    /// input: the first copy was used). Evicted chunks show as a gap.
    pub fn complete(
        &mut self,
        tgid: u32,
        start_ns: u64,
        first: [&[u8]; 2],
        expected: [usize; 2],
    ) -> ([Assembled; 2], bool) {
        let mut pending = self.pending.remove(&(tgid, start_ns));
        if let Some(p) = &pending {
            self.bytes -= p.bytes;
            // Its `order` entry stays until it reaches the front; `evict` skips it then.
        }
        let duplicate = pending.as_ref().is_some_and(|p| p.duplicate);
        let mut streams = pending
            .as_mut()
            .map(|p| std::mem::take(&mut p.streams))
            .unwrap_or_default();
        let out = [0, 1].map(|i| assemble(first[i], &mut streams[i], expected[i]));
        (out, duplicate)
    }

    /// Execs pending now (for tests and stats).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of chunk data held now.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Execs whose chunks were dropped unclaimed since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

fn assemble(
    first: &[u8],
    chunks: &mut BTreeMap<u32, Zeroizing<Vec<u8>>>,
    expected: usize,
) -> Assembled {
    let want = expected.clamp(first.len(), EXEC_AREA_CAP.max(first.len()));
    // Allocated once at the final size: appending never reallocates, so no stale copy of
    // the environment is left in freed memory.
    let mut bytes = Zeroizing::new(Vec::with_capacity(want));
    bytes.extend_from_slice(first);
    for (off, data) in chunks.iter() {
        if *off as usize != bytes.len() {
            if (*off as usize) < bytes.len() {
                continue;
            }
            break;
        }
        let room = want - bytes.len();
        bytes.extend_from_slice(&data[..data.len().min(room)]);
        if bytes.len() == want {
            break;
        }
    }
    // `chunks` drops here, zeroing every chunk buffer.
    chunks.clear();
    let gap = bytes.len() < want;
    Assembled { bytes, gap }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: u32 = chunk_stream::ENV;
    const ARGV: u32 = chunk_stream::ARGV;

    /// An environment of `n` bytes: `K<i>=<i>\0` entries cycled, deterministic.
    fn env_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"ABCDEFGH=12345\0"[i % 15]).collect()
    }

    fn feed(r: &mut Reassembler, stream: u32, whole: &[u8], order: &[usize]) {
        let first = first_len(stream);
        let chunks: Vec<(usize, &[u8])> = whole[first..]
            .chunks(CHUNK_LEN)
            .enumerate()
            .map(|(i, c)| (first + i * CHUNK_LEN, c))
            .collect();
        for &i in order {
            let (off, data) = chunks[i];
            r.chunk(7, 99, 1_000, stream, u32::try_from(off).unwrap_or(0), data)
                .unwrap();
        }
    }

    #[test]
    fn in_order_and_out_of_order_chunks_assemble_the_same() {
        let env = env_bytes(200 * 1024);
        let args = env_bytes(40 * 1024);
        for order in [
            vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            vec![12, 3, 0, 11, 1, 2, 10, 4, 9, 5, 8, 6, 7],
        ] {
            let mut r = Reassembler::default();
            feed(&mut r, ENV, &env, &order);
            feed(&mut r, ARGV, &args, &[2, 0, 1]);
            assert_eq!(r.pending(), 1);
            let ([a, e], lost) = r.complete(
                7,
                99,
                [&args[..ARGV_LEN], &env[..ENV_LEN]],
                [args.len(), env.len()],
            );
            assert!(!lost && !a.gap && !e.gap);
            assert_eq!(&a.bytes[..], &args[..]);
            assert_eq!(&e.bytes[..], &env[..]);
            assert_eq!(e.bytes.capacity(), env.len(), "allocated once, exactly");
            assert_eq!((r.pending(), r.pending_bytes()), (0, 0));
        }
    }

    #[test]
    fn a_missing_chunk_ends_the_area_at_the_gap() {
        let env = env_bytes(60 * 1024);
        let mut r = Reassembler::default();
        // Chunks 0, 1, 3 of 4: the bytes after chunk 1 are not trusted to line up.
        feed(&mut r, ENV, &env, &[0, 1, 3]);
        let ([a, e], lost) = r.complete(7, 99, [b"x\0", &env[..ENV_LEN]], [2, env.len()]);
        assert!(!lost && !a.gap);
        assert!(e.gap);
        assert_eq!(e.bytes.len(), ENV_LEN + 2 * CHUNK_LEN);
        assert_eq!(&e.bytes[..], &env[..ENV_LEN + 2 * CHUNK_LEN]);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn an_exec_without_its_chunks_is_a_gap_and_never_panics() {
        let mut r = Reassembler::default();
        let ([a, e], lost) = r.complete(1, 2, [b"a\0", b"K=v\0"], [9000, 50_000]);
        assert!(!lost && a.gap && e.gap);
        assert_eq!(&e.bytes[..], b"K=v\0");
        // A record claiming less than its own first part is taken at its first part.
        let ([a, _], _) = r.complete(1, 2, [b"abc\0", b""], [0, 0]);
        assert!(!a.gap);
        assert_eq!(&a.bytes[..], b"abc\0");
    }

    #[test]
    fn duplicates_keep_the_first_copy_and_are_reported() {
        let env = env_bytes(30 * 1024);
        let mut r = Reassembler::default();
        feed(&mut r, ENV, &env, &[0, 1]);
        // A second chunk at offset ENV_LEN with other bytes.
        let other = vec![b'Z'; CHUNK_LEN];
        r.chunk(
            7,
            99,
            1_000,
            ENV,
            u32::try_from(ENV_LEN).unwrap_or(0),
            &other,
        )
        .unwrap();
        let ([_, e], lost) = r.complete(7, 99, [b"", &env[..ENV_LEN]], [0, env.len()]);
        assert!(lost, "a duplicate chunk is reported");
        assert!(!e.gap);
        assert_eq!(&e.bytes[..], &env[..]);
    }

    #[test]
    fn too_big_misplaced_or_unknown_chunks_are_refused() {
        let mut r = Reassembler::default();
        let big = vec![0u8; CHUNK_LEN + 1];
        let env_off = u32::try_from(ENV_LEN).unwrap_or(0);
        assert!(r.chunk(1, 1, 1, ENV, env_off, &big).is_err());
        // Inside the record's own first part.
        assert!(r.chunk(1, 1, 1, ENV, 0, b"x").is_err());
        // Past the cap.
        let cap = u32::try_from(EXEC_AREA_CAP).unwrap_or(0);
        assert!(r.chunk(1, 1, 1, ENV, cap - 1, b"xy").is_err());
        assert!(r.chunk(1, 1, 1, 2, env_off, b"x").is_err());
        assert!(r.chunk(1, 1, 1, ENV, cap - 2, b"xy").is_ok());
        assert_eq!((r.pending(), r.pending_bytes()), (1, 2));
    }

    #[test]
    fn orphan_chunks_are_evicted_by_age_and_by_budget() {
        let mut r = Reassembler::default();
        let data = vec![1u8; CHUNK_LEN];
        let off = u32::try_from(ENV_LEN).unwrap_or(0);
        r.chunk(1, 1, 1_000, ENV, off, &data).unwrap();
        // Much later chunk of another exec: the first exec's record is never coming.
        r.chunk(2, 2, 1_000 + MAX_PENDING_AGE_NS + 1, ENV, off, &data)
            .unwrap();
        assert_eq!((r.pending(), r.evicted()), (1, 1));
        // Its exec record arriving after all: a gap, nothing stale.
        let (_, lost) = r.complete(1, 1, [b"", b""], [0, ENV_LEN + CHUNK_LEN]);
        assert!(!lost);

        // Budget: many execs' chunks, none claimed; memory stays under the budget.
        let mut r = Reassembler::default();
        let per_exec = MAX_PENDING_BYTES / CHUNK_LEN + 10;
        for i in 0..per_exec {
            r.chunk(u32::try_from(i).unwrap_or(0), 5, 1, ENV, off, &data)
                .unwrap();
            assert!(r.pending_bytes() <= MAX_PENDING_BYTES);
        }
        assert_eq!(r.evicted(), 10);
        // The oldest went first.
        let ([_, e], _) = r.complete(0, 5, [b"", b""], [0, ENV_LEN + CHUNK_LEN]);
        assert!(e.gap);
        let newest = u32::try_from(per_exec - 1).unwrap_or(0);
        let ([_, e], _) = r.complete(newest, 5, [b"", &[0; ENV_LEN]], [0, ENV_LEN + CHUNK_LEN]);
        assert!(!e.gap);
    }
}
