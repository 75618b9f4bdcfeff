//! Length-prefixed frames: 4-byte big-endian length, then the payload.

use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::{Encoding, Message};

/// A stream of incoming frames. An oversized length prefix or a connection
/// that ends inside a frame is an error of this stream only.
pub type FrameReader<R> = FramedRead<R, LengthDelimitedCodec>;

pub fn frame_reader<R: AsyncRead>(io: R, max_frame_size: usize) -> FrameReader<R> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_size)
        .new_codec();
    FramedRead::with_capacity(io, codec, 64 * 1024)
}

/// Buffers outgoing frames and writes them in batches: a burst of replies
/// or one-way messages goes out in one system call.
pub struct FrameWriter<W> {
    io: W,
    buffer: BytesMut,
    max_frame_size: usize,
}

/// Outgoing frames larger than this are written before more are queued.
const FLUSH_THRESHOLD: usize = 256 * 1024;

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, max_frame_size: usize) -> FrameWriter<W> {
        FrameWriter {
            io,
            buffer: BytesMut::with_capacity(16 * 1024),
            max_frame_size,
        }
    }

    /// Queues a raw frame (handshake strings, the `ruok` answer).
    pub fn push_raw(&mut self, payload: &[u8]) {
        self.buffer.put_u32(payload.len() as u32);
        self.buffer.put_slice(payload);
    }

    /// Queues one encoded message. A message over the frame size limit is
    /// refused (the peer would drop the connection on it).
    pub fn push(&mut self, encoding: Encoding, message: &Message) -> io::Result<()> {
        let start = self.buffer.len();
        self.buffer.put_u32(0);
        encoding.encode(message, &mut self.buffer);
        let length = self.buffer.len() - start - 4;
        if length > self.max_frame_size {
            self.buffer.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} message of {length} bytes exceeds the frame size limit",
                    message.name
                ),
            ));
        }
        self.buffer[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
        Ok(())
    }

    pub fn wants_flush(&self) -> bool {
        self.buffer.len() >= FLUSH_THRESHOLD
    }

    /// Writes everything queued; a peer that does not read within
    /// `timeout` is an error.
    pub async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.buffer).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => {
                self.buffer.clear();
                result
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("peer did not read for {timeout:?}"),
            )),
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}
