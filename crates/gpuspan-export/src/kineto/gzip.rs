//! A gzip writer that deflates on several threads and still writes one gzip member (pigz's
//! scheme), for capture files (issue 14, item 2).
//!
//! Why one member: concatenated gzip members are one valid gzip file by RFC 1952 §2.2, but
//! not every reader of traces takes them. Chrome's `DecompressionStream("gzip")`, which
//! DevTools uses to open a `.json.gz`, fails with "Junk found after end of compressed data"
//! after the first member (whatwg/compression#42, still open), and Perfetto's trace processor
//! could not read them before 2024 (google/perfetto#872). So the input is cut into
//! [`CHUNK_BYTES`] chunks, each deflated on its own (raw deflate, primed with the previous
//! chunk's last 32 KiB as its dictionary, as pigz does, so the ratio stays that of one
//! stream), every chunk but the last ending with a sync flush (an empty stored block, so the
//! next chunk's blocks start on a byte boundary) and the last with the final block; the
//! chunks' CRC-32s are combined (`flate2::Crc::combine`). The result is one member of an
//! ordinary deflate stream: any gzip reader decodes it, and the bytes do not depend on the
//! thread count from two workers up.
//!
//! With one worker (a two-core machine or container: [`default_threads`]), nothing runs
//! beside it to share the chunks with, so the chunks are deflated as one continuous gzip
//! stream instead (zlib-rs's own gzip wrapper, `flate2::Compress::new_gzip`): no reset and
//! no 32 KiB dictionary to hash again per chunk, no sync flush, and the CRC-32 folded into
//! zlib-rs's copy of the input rather than a pass of its own over each chunk. On a
//! fine-mode capture's 96 MB of JSON that is 75.5–76.9 ms of deflate against 82.9–83.3
//! (issue 14, items 1 and 2). It is still one member, with zlib's header (OS byte 3, Unix),
//! but its bytes are not those of the chunked stream.
//!
//! Memory is bounded: at most `2 × threads` chunks are in flight, and the caller's thread
//! waits for the oldest when that many are.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam::channel::{bounded, Receiver, Sender};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Input bytes per deflated chunk (pigz uses 128 KiB; a larger chunk spreads the
/// dictionary and flush overhead thinner).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The deflate window: a chunk's dictionary is the previous chunk's last 32 KiB.
const WINDOW_BYTES: usize = 32 * 1024;

/// A deflated chunk: its input buffer back (for reuse), the deflated bytes and the input's
/// CRC-32.
struct Deflated {
    input: Vec<u8>,
    out: Vec<u8>,
    crc: Crc,
}

type ChunkOut = io::Result<Deflated>;

struct Job {
    input: Vec<u8>,
    /// A buffer for the output (recycled; cleared).
    out: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: Sender<ChunkOut>,
}

/// The default worker count for [`ParallelGzWriter`]: one less than the CPUs this process
/// may use (cgroup quotas included, `std::thread::available_parallelism`; the writing thread
/// serialises on the one left), at least 1, at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).clamp(1, 8)
}

/// CPU time the deflate worker threads of every [`ParallelGzWriter`] of this process have
/// spent deflating, ns (each chunk timed by its worker's thread clock): the agent's exit
/// report adds it to its own threads' (issue 14, item 1).
pub fn deflate_cpu_ns() -> u64 {
    DEFLATE_CPU_NS.load(Ordering::Relaxed)
}

static DEFLATE_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// The calling thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`): how each deflate worker
/// times its chunks, and how the agent's collector and exit work time themselves.
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Writes one gzip member to `out`, deflating [`CHUNK_BYTES`] chunks on `threads` worker
/// threads (at least 1) while the caller's thread goes on writing. Call [`Self::finish`] to
/// write the last chunk and the trailer; dropping it unfinished leaves `out` without them
/// (an invalid gzip file), as `flate2`'s encoders do when finishing fails.
pub struct ParallelGzWriter<W: Write> {
    out: Option<W>,
    /// One worker deflating one continuous gzip stream, header and trailer included (see
    /// the module's docs): no dictionaries, no CRC here.
    one_stream: bool,
    /// The chunk being filled.
    chunk: Vec<u8>,
    /// The last [`WINDOW_BYTES`] of the previous chunk.
    dict: Vec<u8>,
    crc: Crc,
    /// Replies of the chunks handed to the workers, oldest first.
    pending: VecDeque<Receiver<ChunkOut>>,
    max_in_flight: usize,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Buffers back from deflated chunks, reused: fresh megabyte buffers would cost a page
    /// fault per 4 KiB each time.
    free_inputs: Vec<Vec<u8>>,
    free_outputs: Vec<Vec<u8>>,
}

impl<W: Write> ParallelGzWriter<W> {
    /// Starts `threads` workers (at least 1) and, with two or more, writes the gzip header
    /// (RFC 1952 §2.3: no name, mtime 0, OS unknown) to `out`; one worker writes zlib's
    /// header itself (see the module's docs). `level` is 0–9.
    ///
    /// # Errors
    /// Writing the header, or starting a thread.
    pub fn new(mut out: W, level: u32, threads: usize) -> io::Result<Self> {
        let level = Compression::new(level.min(9));
        let threads = threads.max(1);
        let one_stream = threads == 1;
        if !one_stream {
            let xfl = match level.level() {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        }
        let mut w = ParallelGzWriter {
            out: Some(out),
            one_stream,
            chunk: Vec::with_capacity(CHUNK_BYTES),
            dict: Vec::new(),
            crc: Crc::new(),
            pending: VecDeque::new(),
            max_in_flight: 2 * threads,
            jobs: None,
            workers: Vec::new(),
            free_inputs: Vec::new(),
            free_outputs: Vec::new(),
        };
        let (tx, rx) = bounded::<Job>(w.max_in_flight);
        for i in 0..threads {
            let rx = rx.clone();
            let handle = std::thread::Builder::new().name(format!("gpuspan-gzip-{i}")).spawn(move || {
                let mut c = if one_stream { Compress::new_gzip(level, 15) } else { Compress::new(level, false) };
                for job in rx {
                    let start = thread_cpu_ns();
                    let res = if one_stream {
                        deflate_stream_part(&mut c, job.input, job.out, job.last)
                    } else {
                        deflate_chunk(&mut c, job.input, job.out, &job.dict, job.last)
                    };
                    DEFLATE_CPU_NS.fetch_add(thread_cpu_ns().saturating_sub(start), Ordering::Relaxed);
                    let _ = job.reply.send(res);
                }
            })?;
            w.workers.push(handle);
        }
        w.jobs = Some(tx);
        Ok(w)
    }

    /// Hands the filled chunk to a worker and starts the next.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let next = self.free_inputs.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
        let input = std::mem::replace(&mut self.chunk, next);
        let dict = std::mem::take(&mut self.dict);
        if !self.one_stream {
            let tail = &input[input.len().saturating_sub(WINDOW_BYTES)..];
            let mut next_dict = Vec::with_capacity(WINDOW_BYTES);
            next_dict.extend_from_slice(tail);
            self.dict = next_dict;
        }
        let out = self.free_outputs.pop().unwrap_or_default();
        while self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let (reply, rx) = bounded(1);
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        jobs.send(Job { input, out, dict, last, reply }).map_err(|_| io::Error::other("gzip worker threads are gone"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else { return Ok(()) };
        let res = rx.recv().unwrap_or_else(|_| Err(io::Error::other("a gzip worker thread panicked")));
        self.emit(res)
    }

    fn emit(&mut self, res: ChunkOut) -> io::Result<()> {
        let Deflated { mut input, mut out, crc } = res?;
        self.crc.combine(&crc);
        self.out.as_mut().expect("not finished").write_all(&out)?;
        input.clear();
        out.clear();
        if self.free_inputs.len() < self.max_in_flight {
            self.free_inputs.push(input);
            self.free_outputs.push(out);
        }
        Ok(())
    }

    /// Deflates what is left, writes the trailer (CRC-32 and input size mod 2³², RFC 1952
    /// §2.3.1; one worker's stream ends with its own) and returns `out`.
    ///
    /// # Errors
    /// Deflating or writing; a worker that panicked.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let mut out = self.out.take().expect("not finished");
        if !self.one_stream {
            let mut trailer = [0u8; 8];
            trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
            trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
            out.write_all(&trailer)?;
        }
        Ok(out)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.chunk.len();
        let n = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK_BYTES {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Flushes `out` only: a chunk is deflated when full or at [`Self::finish`] (a sync
    /// flush per `flush` call would cut the chunks where the caller's flushes fall).
    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().map_or(Ok(()), |o| o.flush())
    }
}

impl<W: Write> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        self.jobs = None; // the workers' loops end once the queue is empty
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Raw deflate of one chunk with `c` (reset first), primed with `dict`, into `out` (empty):
/// a sync flush at the end, or the final block when `last`. Returns both buffers and the
/// input's CRC-32.
fn deflate_chunk(c: &mut Compress, input: Vec<u8>, mut out: Vec<u8>, dict: &[u8], last: bool) -> ChunkOut {
    c.reset();
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    out.reserve(input.len() / 4 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        // Done: the final block written, or (sync flush) all input taken and output room to
        // spare, which zlib leaves only once the flush is complete.
        if status == Status::StreamEnd || (!last && all_in && out.len() < out.capacity()) {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(&input);
    Ok(Deflated { input, out, crc })
}

/// The next part of one continuous gzip stream (`c` made by `Compress::new_gzip`, never
/// reset): all of `input` taken into `out` (empty) with no flush, or the stream finished
/// (final block and trailer) when `last`. Returns both buffers; the CRC-32 is the stream's
/// own, so the one returned is empty.
fn deflate_stream_part(c: &mut Compress, input: Vec<u8>, mut out: Vec<u8>, last: bool) -> ChunkOut {
    out.reserve(input.len() / 4 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::None };
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = (c.total_in() - start) as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = (c.total_in() - start) as usize == input.len();
        // Done: the stream ended, or (no flush) all input taken; what zlib still holds
        // comes out with a later part.
        if status == Status::StreamEnd || (!last && all_in) {
            break;
        }
    }
    Ok(Deflated { input, out, crc: Crc::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Trace-like text with repeats a dictionary helps with, `n` bytes.
    fn sample(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 200);
        let mut i = 0u64;
        while v.len() < n {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            v.extend_from_slice(format!("{{\"ph\":\"X\",\"name\":\"kernel_{}\",\"ts\":{}.{:03},\"dur\":{}}},", x % 97, i * 7, x % 1000, x % 313).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn gz(data: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), 1, threads).unwrap();
        for part in data.chunks(write_size.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    /// Decodes with a single-member decoder and returns the bytes and what it left unread.
    fn gunzip_one_member(gz: &[u8]) -> (Vec<u8>, usize) {
        let mut d = flate2::read::GzDecoder::new(gz);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        (out, d.into_inner().len())
    }

    #[test]
    fn one_member_that_any_gzip_reader_decodes_whatever_the_thread_count() {
        for len in [0, 1, 1000, CHUNK_BYTES - 1, CHUNK_BYTES, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES + 12_345] {
            let data = sample(len);
            // Two workers and more: the chunked stream, the same bytes whatever the count.
            let chunked = gz(&data, 2, 8191);
            for threads in [3, 8] {
                assert_eq!(gz(&data, threads, 8191), chunked, "{len} bytes, {threads} threads: the same bytes");
            }
            assert_eq!(gz(&data, 2, 1 << 22), chunked, "{len} bytes: write sizes do not change the chunks");
            // One worker (0 is taken as 1): one continuous stream, whatever the write sizes.
            let stream = gz(&data, 1, 8191);
            assert_eq!(gz(&data, 0, 1 << 22), stream, "{len} bytes: one worker, write sizes do not matter");
            for (what, bytes) in [("chunked", &chunked), ("one stream", &stream)] {
                let (back, left) = gunzip_one_member(bytes);
                assert_eq!(back, data, "{len} bytes, {what}: round trip");
                assert_eq!(left, 0, "{len} bytes, {what}: one member, nothing after it");
                assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8], "{len} bytes, {what}: a gzip header, deflate");
            }
        }
    }

    #[test]
    fn one_worker_deflates_as_one_plain_gzip_stream_does() {
        let data = sample(3 * CHUNK_BYTES + 777);
        let ours = gz(&data, 1, 1 << 16);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(1));
        e.write_all(&data).unwrap();
        let plain = e.finish().unwrap();
        assert!((ours.len() as f64) < plain.len() as f64 * 1.01, "one stream {} bytes vs flate2's {}", ours.len(), plain.len());
    }

    #[test]
    fn the_dictionary_keeps_the_ratio_of_one_stream() {
        let data = sample(4 * CHUNK_BYTES);
        let ours = gz(&data, 2, 1 << 16).len();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(1));
        e.write_all(&data).unwrap();
        let plain = e.finish().unwrap().len();
        assert!((ours as f64) < plain as f64 * 1.02, "chunked {ours} bytes vs one stream {plain}");
    }
}
