//! Lets gRPC clients that name the Unix socket in `:authority` reach the Workload API.
//!
//! # The problem
//!
//! grpc C-core (Python's `grpcio`, hence py-spiffe, and the other C-core wrappers) sends the socket
//! path as the HTTP/2 `:authority` of every request on a `unix:` channel: for
//! `unix:/tmp/dir/agent.sock` (or `unix:///tmp/dir/agent.sock`) it sends `tmp%2Fdir%2Fagent.sock`.
//! grpc-java sends the bare path. Neither is a valid URI authority: `h2` 0.4 (the HTTP/2 server
//! under tonic) parses `:authority` with `http::uri::Authority`, which rejects a `%` in the host
//! (`InvalidPercent`) and a `/` inside it, and `h2::server` answers such a request with
//! `RST_STREAM(PROTOCOL_ERROR)` before tonic (or our security-header check) sees it. The client
//! reports `INTERNAL: Received RST_STREAM with error code 1`. `h2` has no option to relax this (its
//! pull request 487 to skip the check for Unix sockets is still open, and 0.4.20 with `http` 1.5
//! is the newest release), hyper's own HTTP/2 server is the same `h2`, and asking every client to
//! set `grpc.default_authority` is not an answer for off-the-shelf SPIFFE libraries.
//!
//! # The fix
//!
//! [`AuthorityFilter`] wraps each accepted connection and edits the client-to-server byte stream
//! before `h2` parses it: it decodes every request header block (HPACK, RFC 7541, with the
//! `loona-hpack` decoder, keeping the client's dynamic table), drops an `:authority` field that
//! `http::uri::Authority` would refuse, and re-encodes the block for `h2` with literals only
//! (no Huffman, never indexed in `h2`'s table, so `h2`'s decoder state never depends on ours). An
//! HTTP/2 request without `:authority` is valid (RFC 9113 section 8.3.1), and the Workload API
//! routes on `:path` only; an authority naming a file on this host carries no information worth
//! keeping. Every valid authority (`localhost`, as the Rust `spiffe` crate and grpc-go send) and
//! every other header passes unchanged. Rewriting bytes in place is not possible because HPACK
//! blocks refer to each other through the dynamic table and may be Huffman-coded; decoding and
//! re-encoding every block is what keeps both ends consistent. Frames other than HEADERS and
//! CONTINUATION, and everything the server writes, pass through untouched.
//!
//! Bounds, because this parses bytes from any process that can connect to the socket: a header
//! frame may not exceed the 16 KiB maximum frame size `h2` advertises, a header block (HEADERS
//! plus CONTINUATIONs) may not exceed [`MAX_BLOCK`] encoded nor [`MAX_HEADER_LIST`] decoded
//! (counted as RFC 9113 counts `SETTINGS_MAX_HEADER_LIST_SIZE`), and the dynamic table may not be
//! grown beyond the 4,096 octets `h2` advertises. Breaking one of these, or sending a block HPACK
//! cannot decode, ends the connection with an I/O error, as `h2` would have ended it with a
//! connection error. A connection that does not start with the HTTP/2 preface is passed through
//! as it is, for `h2` to refuse.
//!
//! Drop this module once `h2` accepts such authorities (or offers an option to).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// The HTTP/2 connection preface a client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
/// `SETTINGS_MAX_FRAME_SIZE` as tonic's server advertises it (hyper's default, the protocol's minimum).
/// A client may not send larger frames, so header frames beyond it are refused here.
const MAX_FRAME_SIZE: usize = 16_384;
/// `SETTINGS_HEADER_TABLE_SIZE` as tonic's server advertises it (hyper leaves it at the protocol
/// default): the most a client may grow its encoder's dynamic table to.
const HEADER_TABLE_SIZE: usize = 4_096;
/// Largest encoded header block accepted; gRPC clients send a few hundred octets, and hyper's
/// `h2` refuses decoded header lists over 16 KiB after us anyway.
pub(crate) const MAX_BLOCK: usize = 64 * 1024;
/// Largest decoded header list accepted (names, values and 32 octets per field).
pub(crate) const MAX_HEADER_LIST: usize = 256 * 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A connection whose incoming HTTP/2 requests lose an `:authority` that `h2` would refuse.
///
/// See the [module documentation](self) for why. Writes go straight to the inner stream.
#[derive(Debug)]
pub struct AuthorityFilter<S> {
    inner: S,
    filter: Filter,
    /// Filtered bytes not yet handed to the reader, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
}

impl<S> AuthorityFilter<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> AuthorityFilter<S> {
        AuthorityFilter { inner, filter: Filter::new(), ready: Vec::new(), ready_from: 0 }
    }
}

impl<S: Connected> Connected for AuthorityFilter<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFilter<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_from < this.ready.len() {
                let pending = &this.ready[this.ready_from..];
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.ready_from += n;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0_u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream; a partial frame left in the filter means nothing to h2 either.
                return Poll::Ready(Ok(()));
            }
            this.filter.push(read.filled(), &mut this.ready)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFilter<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the filter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the end of the connection preface.
    Preface,
    /// Between or inside frames.
    Frames,
    /// Not HTTP/2: everything passes as it is.
    Opaque,
    /// A bound was broken or HPACK failed; the connection is over.
    Failed,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
#[derive(Debug)]
struct Block {
    /// The stream identifier field, as sent (reserved bit included).
    stream: [u8; 4],
    end_stream: bool,
    /// The priority fields of the HEADERS frame, kept as they were.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server half of the filter: bytes in, filtered bytes out. Kept free of I/O so it
/// can be tested on its own.
pub(crate) struct Filter {
    stage: Stage,
    /// Received bytes not yet consumed.
    input: Vec<u8>,
    /// Payload octets of the current pass-through frame still to forward.
    forward: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    dropped_authority: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("stage", &self.stage)
            .field("buffered", &self.input.len())
            .field("forward", &self.forward)
            .field("block", &self.block.as_ref().map(|b| b.fragment.len()))
            .finish_non_exhaustive()
    }
}

fn broken(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Filter {
    pub(crate) fn new() -> Filter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Filter { stage: Stage::Preface, input: Vec::new(), forward: 0, block: None, decoder, dropped_authority: false }
    }

    /// Takes bytes received from the client and appends to `out` everything that can be passed
    /// on to `h2` so far.
    ///
    /// # Errors
    ///
    /// `InvalidData` once the client broke a bound or sent a header block HPACK cannot decode;
    /// the connection must end (every later call fails too).
    pub(crate) fn push(&mut self, received: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.stage == Stage::Failed {
            return Err(broken("the HTTP/2 connection already failed"));
        }
        self.input.extend_from_slice(received);
        let result = self.run(out);
        if result.is_err() {
            self.stage = Stage::Failed;
            self.input = Vec::new();
        }
        result
    }

    fn run(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            let input = &self.input[at..];
            match self.stage {
                Stage::Failed => break Err(broken("the HTTP/2 connection already failed")),
                Stage::Opaque => {
                    out.extend_from_slice(input);
                    at = self.input.len();
                    break Ok(());
                }
                Stage::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        self.stage = Stage::Opaque;
                        continue;
                    }
                    if n < PREFACE.len() {
                        break Ok(());
                    }
                    out.extend_from_slice(PREFACE);
                    at += n;
                    self.stage = Stage::Frames;
                }
                Stage::Frames if self.forward > 0 => {
                    let n = input.len().min(self.forward);
                    if n == 0 {
                        break Ok(());
                    }
                    out.extend_from_slice(&input[..n]);
                    at += n;
                    self.forward -= n;
                }
                Stage::Frames => {
                    if input.len() < FRAME_HEADER {
                        break Ok(());
                    }
                    let length = usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
                    let (kind, flags) = (input[3], input[4]);
                    let stream = [input[5], input[6], input[7], input[8]];
                    let in_block = self.block.is_some();
                    if in_block && kind != CONTINUATION {
                        break Err(broken("HTTP/2: a header block was interrupted by another frame"));
                    }
                    if kind != HEADERS && !in_block {
                        // Everything else (CONTINUATION without a block included, which h2 refuses)
                        // passes as it is, payload streamed.
                        out.extend_from_slice(&input[..FRAME_HEADER]);
                        at += FRAME_HEADER;
                        self.forward = length;
                        continue;
                    }
                    if length > MAX_FRAME_SIZE {
                        break Err(broken("HTTP/2: header frame larger than the maximum frame size"));
                    }
                    if input.len() < FRAME_HEADER + length {
                        break Ok(());
                    }
                    let payload = input[FRAME_HEADER..FRAME_HEADER + length].to_vec();
                    at += FRAME_HEADER + length;
                    match self.take_fragment(kind, flags, stream, &payload) {
                        Ok(true) => {
                            if let Err(err) = self.emit_block(out) {
                                break Err(err);
                            }
                        }
                        Ok(false) => {}
                        Err(err) => break Err(err),
                    }
                }
            }
        };
        self.input.drain(..at.min(self.input.len()));
        result
    }

    /// Adds a HEADERS or CONTINUATION payload to the current block; true once the block is complete.
    fn take_fragment(&mut self, kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]) -> io::Result<bool> {
        let fragment = if kind == HEADERS {
            let mut rest = payload;
            let mut padding = 0;
            if flags & PADDED != 0 {
                let (&pad, tail) = rest.split_first().ok_or_else(|| broken("HTTP/2: HEADERS padding missing"))?;
                padding = usize::from(pad);
                rest = tail;
            }
            let priority = if flags & PRIORITY != 0 {
                let (fields, tail) =
                    rest.split_at_checked(5).ok_or_else(|| broken("HTTP/2: HEADERS priority missing"))?;
                rest = tail;
                Some(<[u8; 5]>::try_from(fields).map_err(|_| broken("HTTP/2: HEADERS priority"))?)
            } else {
                None
            };
            let end = rest.len().checked_sub(padding).ok_or_else(|| broken("HTTP/2: HEADERS padding too long"))?;
            self.block = Some(Block { stream, end_stream: flags & END_STREAM != 0, priority, fragment: Vec::new() });
            &rest[..end]
        } else {
            payload
        };
        let block = self.block.as_mut().ok_or_else(|| broken("HTTP/2: CONTINUATION without HEADERS"))?;
        if kind == CONTINUATION && stream != block.stream {
            return Err(broken("HTTP/2: CONTINUATION on another stream"));
        }
        if block.fragment.len() + fragment.len() > MAX_BLOCK {
            return Err(broken("HTTP/2: header block too large"));
        }
        block.fragment.extend_from_slice(fragment);
        Ok(flags & END_HEADERS != 0)
    }

    /// Decodes the completed block, drops an authority `h2` would refuse, and writes the block
    /// again as HEADERS (and CONTINUATION) frames of literal fields.
    fn emit_block(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let block = self.block.take().ok_or_else(|| broken("HTTP/2: no header block"))?;
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        let mut size = 0_usize;
        let mut dropped = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size > MAX_HEADER_LIST {
                    return;
                }
                if &*name == b":authority" && Authority::try_from(&*value).is_err() {
                    dropped = true;
                    return;
                }
                encode_literal(&name, &value, &mut encoded);
            })
            .map_err(|err| broken(format!("HTTP/2: undecodable header block: {err}")))?;
        if size > MAX_HEADER_LIST {
            return Err(broken("HTTP/2: header list too large"));
        }
        if dropped && !self.dropped_authority {
            self.dropped_authority = true;
            tracing::debug!("dropping an HTTP/2 :authority that is not a host name (a gRPC client naming the socket)");
        }

        let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| &p[..]);
        let first = encoded.len().min(MAX_FRAME_SIZE - priority.len());
        let (head, mut rest) = encoded.split_at(first);
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame_header(out, priority.len() + head.len(), HEADERS, flags, block.stream);
        out.extend_from_slice(priority);
        out.extend_from_slice(head);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            write_frame_header(out, chunk.len(), CONTINUATION, flags, block.stream);
            out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

fn write_frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    // length <= MAX_FRAME_SIZE, so it fits the 24-bit field.
    let [_, a, b, c] = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&[a, b, c, kind, flags]);
    out.extend_from_slice(&stream);
}

/// A literal header field without indexing, with a literal name and neither string Huffman-coded
/// (RFC 7541 section 6.2.2): the receiver's dynamic table is never touched.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// A string literal without Huffman coding (RFC 7541 section 5.2): 7-bit prefix length, then octets.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An integer with an `prefix_bits`-bit prefix (RFC 7541 section 5.1); `first` holds the bits
/// above the prefix.
fn encode_integer(value: usize, prefix_bits: u32, first: u8, out: &mut Vec<u8>) {
    let max_prefix = (1_usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(first | u8::try_from(value).unwrap_or(u8::MAX));
        return;
    }
    out.push(first | u8::try_from(max_prefix).unwrap_or(u8::MAX));
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push(u8::try_from(rest & 0x7f).unwrap_or(0) | 0x80);
        rest >>= 7;
    }
    out.push(u8::try_from(rest).unwrap_or(0));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame_header(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits filtered output back into frames: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut found = Vec::new();
        while !bytes.is_empty() {
            let length = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            found.push((bytes[3], bytes[4], stream, bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        found
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
            (b":authority", authority.to_vec()),
            (b"workload.spiffe.io", b"true".to_vec()),
        ]
    }

    /// Encodes with the dynamic table (incremental indexing), as real clients do.
    fn hpack(encoder: &mut loona_hpack::Encoder<'_>, fields: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    fn decode_all(output: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames(output) {
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
        }
        blocks
    }

    fn run(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut filter = Filter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            filter.push(chunk, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn drops_a_socket_path_authority_and_keeps_everything_else() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = hpack(&mut encoder, &request(b"tmp%2Fdir%2Fagent.sock"));
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        // The second request leans on the dynamic table the first one filled.
        let second = hpack(&mut encoder, &request(b"tmp%2Fdir%2Fagent.sock"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let third = hpack(&mut encoder, &request(b"localhost"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));

        for step in [1, 7, input.len()] {
            let out = run(&input, step).unwrap();
            assert_eq!(&out[..24], PREFACE);
            let kinds: Vec<(u8, u8, u32)> = frames(&out[24..]).iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, END_HEADERS, 1),
                    (0x0, END_STREAM, 1),
                    (HEADERS, END_HEADERS | END_STREAM, 3),
                    (HEADERS, END_HEADERS | END_STREAM, 5)
                ]
            );
            let blocks = decode_all(&out[24..]);
            let names = |b: &Vec<(Vec<u8>, Vec<u8>)>| b.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            for block in &blocks[..2] {
                assert!(!names(block).contains(&b":authority".to_vec()), "the socket path must be gone");
                assert!(block.contains(&(b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec())));
                assert!(block.contains(&(b"workload.spiffe.io".to_vec(), b"true".to_vec())));
            }
            assert!(blocks[2].contains(&(b":authority".to_vec(), b"localhost".to_vec())));
            assert_eq!(blocks[2].len(), 5);
        }
    }

    #[test]
    fn strips_padding_keeps_priority_and_splits_large_blocks() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut fields = request(b"/var/run/agent.sock");
        fields.push((b"x-large", vec![b'a'; 20_000]));
        let encoded = hpack(&mut encoder, &fields);
        // PADDED + PRIORITY on HEADERS, the rest in a CONTINUATION.
        let (head, tail) = encoded.split_at(1000);
        let mut payload = vec![3_u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        let mut tail_frames = tail.chunks(MAX_FRAME_SIZE).peekable();
        while let Some(chunk) = tail_frames.next() {
            let flags = if tail_frames.peek().is_none() { END_HEADERS } else { 0 };
            input.extend(frame(CONTINUATION, flags, 1, chunk));
        }
        let out = run(&input, 4096).unwrap();
        let found = frames(&out[24..]);
        assert!(found.len() >= 2);
        assert_eq!((found[0].0, found[0].1), (HEADERS, PRIORITY | END_STREAM));
        assert_eq!(&found[0].3[..5], &[0, 0, 0, 0, 16]);
        assert!(found.iter().all(|f| f.3.len() <= MAX_FRAME_SIZE));
        assert_eq!(found.last().unwrap().1 & END_HEADERS, END_HEADERS);
        // Decode: the priority fields are not part of the header block.
        let mut block = found[0].3[5..].to_vec();
        for f in &found[1..] {
            block.extend_from_slice(&f.3);
        }
        let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert!(decoded.iter().all(|(n, _)| n != b":authority"));
        assert!(decoded.contains(&(b"x-large".to_vec(), vec![b'a'; 20_000])));
    }

    #[test]
    fn other_protocols_pass_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(input, 3).unwrap(), input);
    }

    fn expect_failure(input: &[u8], step: usize, reason: &str) {
        let err = run(input, step).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(reason), "{err} should say {reason}");
    }

    #[test]
    fn broken_or_oversized_blocks_end_the_connection() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = hpack(&mut encoder, &request(b"x"));
        // A header block interrupted by a DATA frame.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(frame(0x0, 0, 1, b"x"));
        expect_failure(&input, 5, "interrupted");
        // A reference to a dynamic table entry that does not exist.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x40]));
        expect_failure(&input, 100, "Header index out of bounds");
        // A CONTINUATION flood.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[]));
        for _ in 0..=MAX_BLOCK / MAX_FRAME_SIZE {
            input.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_SIZE]));
        }
        expect_failure(&input, 65_536, "header block too large");
        // Growing the dynamic table beyond what h2 advertised.
        let mut table_update = Vec::new();
        encode_integer(HEADER_TABLE_SIZE + 1, 5, 0x20, &mut table_update);
        table_update.push(0x82);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &table_update));
        expect_failure(&input, 100, "Dynamic table size exceeds");
        // A small block that expands past the header list bound through the dynamic table.
        let mut bomb = vec![0x40];
        encode_string(b"x-big", &mut bomb);
        encode_string(&[b'b'; 4000], &mut bomb);
        bomb.extend(std::iter::repeat_n(0xbe, 100)); // index 62: the entry just added
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &bomb));
        expect_failure(&input, 100_000, "header list too large");
    }

    #[test]
    fn the_http_crate_refuses_what_grpc_clients_send_for_a_socket() {
        // grpc C-core (percent-encoded path without its leading slash) and grpc-java (the path).
        for sent in [&b"tmp%2Fdir%2Fagent.sock"[..], b"/var/run/agent.sock", b""] {
            assert!(Authority::try_from(sent).is_err(), "{}", String::from_utf8_lossy(sent));
        }
        for kept in [&b"localhost"[..], b"localhost:8080", b"[::1]:443", b"user%40x@host"] {
            assert!(Authority::try_from(kept).is_ok(), "{}", String::from_utf8_lossy(kept));
        }
    }

    #[test]
    fn integers_follow_rfc_7541() {
        // RFC 7541 C.1.1 and C.1.2.
        let mut out = Vec::new();
        encode_integer(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_integer(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }
}
