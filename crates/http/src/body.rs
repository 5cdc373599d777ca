//! Request bodies under a size limit, request decompression and response
//! compression (`gzip` and `deflate`, as tritonclient sends them).

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flotilla_core::{Error, Result};
use std::io::{Read, Write};

/// Reads the whole body, refusing more than `limit` bytes (before and after decompression).
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let too_large = |n: &dyn std::fmt::Display| {
        Error::too_large(format!("request body of {n} bytes exceeds --max-request-bytes ({limit})"))
    };
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(too_large(&len));
        }
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit")) {
            too_large(&format!("more than {limit}"))
        } else {
            Error::invalid(format!("cannot read request body: {e}"))
        }
    })?;
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(raw),
        "gzip" => inflate(GzDecoder::new(&raw[..]), limit, "gzip"),
        "deflate" => inflate(ZlibDecoder::new(&raw[..]), limit, "deflate"),
        other => {
            Err(Error::invalid(format!("unsupported Content-Encoding '{other}'; expected gzip, deflate or identity")))
        }
    }
}

fn inflate(reader: impl Read, limit: usize, name: &str) -> Result<Bytes> {
    let mut out = Vec::new();
    let n = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(format!("request body is not valid {name} data: {e}")))?;
    if n > limit {
        return Err(Error::too_large(format!("decompressed request body exceeds --max-request-bytes ({limit})")));
    }
    Ok(Bytes::from(out))
}

/// The response encoding the client accepts, preferring gzip.
pub fn accepted_encoding(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?.to_ascii_lowercase();
    let offers = |name: &str| {
        accept.split(',').any(|part| {
            let mut it = part.split(';');
            let token = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| p.trim().replace(' ', "") == "q=0");
            token == name && !q_zero
        })
    };
    if offers("gzip") {
        Some("gzip")
    } else if offers("deflate") {
        Some("deflate")
    } else {
        None
    }
}

/// Compresses `data` with `encoding` (`gzip` or `deflate`).
pub fn compress(data: &[u8], encoding: &str) -> Vec<u8> {
    let level = flate2::Compression::fast();
    let result = if encoding == "gzip" {
        let mut e = GzEncoder::new(Vec::new(), level);
        e.write_all(data).and_then(|_| e.finish())
    } else {
        let mut e = ZlibEncoder::new(Vec::new(), level);
        e.write_all(data).and_then(|_| e.finish())
    };
    result.unwrap_or_else(|_| data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_and_deflate_round_trip_and_bombs_are_refused() {
        for enc in ["gzip", "deflate"] {
            let data = vec![7u8; 10_000];
            let c = compress(&data, enc);
            let out = match enc {
                "gzip" => inflate(GzDecoder::new(&c[..]), 20_000, enc).unwrap(),
                _ => inflate(ZlibDecoder::new(&c[..]), 20_000, enc).unwrap(),
            };
            assert_eq!(&out[..], &data[..]);
            let e = inflate(GzDecoder::new(&compress(&data, "gzip")[..]), 100, "gzip").unwrap_err();
            assert_eq!(e.http_status(), 413);
        }
        assert!(inflate(GzDecoder::new(&b"not gzip"[..]), 100, "gzip").is_err());
    }

    #[test]
    fn accept_encoding_parsing() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, "deflate, gzip;q=0".parse().unwrap());
        assert_eq!(accepted_encoding(&h), Some("deflate"));
        h.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(accepted_encoding(&h), Some("gzip"));
        h.insert(header::ACCEPT_ENCODING, "br".parse().unwrap());
        assert_eq!(accepted_encoding(&h), None);
    }
}
