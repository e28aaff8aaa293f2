//! Reads from a host with a bound: an agent's answer, a command's output and its
//! stderr are held in memory, so a host (compromised, or just broken) must not be able
//! to make the controller read without end (SECURITY.md, finding 7). Past the bound the
//! read fails with an error the caller names the host and operation in.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// The most the controller reads from a host for one answer or one command's output
/// (each of stdout and stderr).
pub const MAX_FROM_HOST: usize = 64 << 20;

/// The error of a read past [`MAX_FROM_HOST`] (or a test's smaller limit).
pub fn too_large(limit: usize) -> io::Error {
    io::Error::other(format!(
        "the host sent more than {} without ending it: refused (at most {} is read from a host)",
        size(limit),
        size(limit)
    ))
}

/// Whether an error is [`too_large`]'s.
pub fn is_too_large(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Other && e.to_string().contains("without ending it: refused")
}

fn size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Reads up to and including the next `\n` (or to the end) into `buf`; fails once more
/// than `limit` bytes would be needed. The number of bytes read, as `read_until`.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let start = buf.len();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(buf.len() - start);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() - start + take > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            return Ok(buf.len() - start);
        }
    }
}

/// Reads to the end into `buf`; fails once more than `limit` bytes arrive.
pub async fn read_to_end<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let start = buf.len();
    // One byte more than allowed tells "exactly at the limit" from "past it".
    let n = r.take(limit as u64 + 1).read_to_end(buf).await?;
    if n > limit {
        buf.truncate(start + limit);
        return Err(too_large(limit));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless host: the same bytes again and again, never a newline.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = buf.remaining().min(8192);
            buf.put_slice(&vec![b'x'; n]);
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn finding_7_reads_from_a_host_stop_at_the_limit() {
        let mut line = Vec::new();
        let mut r = tokio::io::BufReader::new(Endless);
        let e = read_line(&mut r, &mut line, MAX_FROM_HOST)
            .await
            .unwrap_err();
        assert!(is_too_large(&e), "{e}");
        assert!(e.to_string().contains("64 MiB"), "{e}");
        assert!(line.len() <= MAX_FROM_HOST);

        let mut all = Vec::new();
        let e = read_to_end(&mut Endless, &mut all, 1000).await.unwrap_err();
        assert!(is_too_large(&e), "{e}");
        assert_eq!(all.len(), 1000);

        // Within the limit: exactly as read_until / read_to_end.
        let mut line = Vec::new();
        let mut r: &[u8] = b"{\"ok\": true}\nrest";
        assert_eq!(read_line(&mut r, &mut line, 13).await.unwrap(), 13);
        assert_eq!(line, b"{\"ok\": true}\n");
        let mut all = Vec::new();
        let mut r: &[u8] = b"0123456789";
        assert_eq!(read_to_end(&mut r, &mut all, 10).await.unwrap(), 10);
        let mut r: &[u8] = b"0123456789";
        assert!(read_to_end(&mut r, &mut Vec::new(), 9).await.is_err());
    }
}
