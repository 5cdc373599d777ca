//! The replication stream's messages: the CopyData frames of the streaming replication protocol
//! (`w` XLogData, `k` keepalive) and the `pgoutput` plugin's logical messages inside XLogData
//! (protocol version 1: Begin, Commit, Relation, Insert, Update, Delete, Truncate; Origin, Type
//! and logical-decoding messages are read and ignored). Every length is checked: a malformed
//! message is an error, never a panic.

use bytes::{Buf, Bytes};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
pub const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A CopyData frame from the walsender.
#[derive(Debug)]
pub enum Frame {
    /// WAL data, with the server's WAL end when it was sent.
    XLogData { wal_end: u64, data: Bytes },
    /// The server's WAL end; `reply` asks for a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// A column of a relation, as the Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key deletes and key-changing updates carry).
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column's value in a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the change did not touch (its value is not sent).
    Unchanged,
    Text(Bytes),
}

#[derive(Debug, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_us: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    /// `old` is the old key (`K`) or the whole old row (`O`) when the server sends it.
    Update {
        relation: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: Vec<Datum>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, Type, logical-decoding messages: nothing to apply.
    Other(u8),
}

fn short(what: &str) -> String {
    format!("pgoutput: truncated {what} message")
}

fn u8_(b: &mut Bytes, what: &str) -> Result<u8, String> {
    if b.is_empty() {
        return Err(short(what));
    }
    Ok(b.get_u8())
}

fn u16_(b: &mut Bytes, what: &str) -> Result<u16, String> {
    if b.len() < 2 {
        return Err(short(what));
    }
    Ok(b.get_u16())
}

fn u32_(b: &mut Bytes, what: &str) -> Result<u32, String> {
    if b.len() < 4 {
        return Err(short(what));
    }
    Ok(b.get_u32())
}

fn u64_(b: &mut Bytes, what: &str) -> Result<u64, String> {
    if b.len() < 8 {
        return Err(short(what));
    }
    Ok(b.get_u64())
}

fn cstr(b: &mut Bytes, what: &str) -> Result<String, String> {
    let end = b.iter().position(|c| *c == 0).ok_or_else(|| short(what))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

/// Reads a CopyData payload of the replication stream.
pub fn frame(mut b: Bytes) -> Result<Frame, String> {
    match u8_(&mut b, "replication")? {
        b'w' => {
            u64_(&mut b, "XLogData")?; // where the data starts
            let wal_end = u64_(&mut b, "XLogData")?;
            u64_(&mut b, "XLogData")?; // send time
            Ok(Frame::XLogData { wal_end, data: b })
        }
        b'k' => {
            let wal_end = u64_(&mut b, "keepalive")?;
            u64_(&mut b, "keepalive")?;
            Ok(Frame::Keepalive { wal_end, reply: u8_(&mut b, "keepalive")? == 1 })
        }
        other => Err(format!("replication stream: unknown frame '{}'", other as char)),
    }
}

/// A standby status update: everything up to `flushed` is durable here (sent as written,
/// flushed and applied), and whether the server should answer at once.
pub fn status_update(flushed: u64, now_us: i64, reply: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    for _ in 0..3 {
        out.extend_from_slice(&flushed.to_be_bytes());
    }
    out.extend_from_slice(&(now_us - PG_EPOCH_US).to_be_bytes());
    out.push(u8::from(reply));
    out
}

/// Reads one pgoutput message.
pub fn message(mut b: Bytes) -> Result<Message, String> {
    let tag = u8_(&mut b, "logical")?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: u64_(&mut b, "Begin")?,
            commit_us: u64_(&mut b, "Begin")? as i64 + PG_EPOCH_US,
            xid: u32_(&mut b, "Begin")?,
        },
        b'C' => {
            u8_(&mut b, "Commit")?; // flags
            Message::Commit {
                commit_lsn: u64_(&mut b, "Commit")?,
                end_lsn: u64_(&mut b, "Commit")?,
                commit_us: u64_(&mut b, "Commit")? as i64 + PG_EPOCH_US,
            }
        }
        b'R' => {
            let oid = u32_(&mut b, "Relation")?;
            let namespace = cstr(&mut b, "Relation")?;
            let name = cstr(&mut b, "Relation")?;
            let replica_identity = u8_(&mut b, "Relation")?;
            let n = u16_(&mut b, "Relation")?;
            let mut columns = Vec::with_capacity(usize::from(n).min(1600));
            for _ in 0..n {
                let flags = u8_(&mut b, "Relation")?;
                let name = cstr(&mut b, "Relation")?;
                let type_oid = u32_(&mut b, "Relation")?;
                u32_(&mut b, "Relation")?; // type modifier
                columns.push(Column { name, type_oid, key: flags & 1 == 1 });
            }
            Message::Relation(Relation {
                oid,
                namespace: if namespace.is_empty() { "pg_catalog".into() } else { namespace },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = u32_(&mut b, "Insert")?;
            expect(&mut b, b'N', "Insert")?;
            Message::Insert { relation, new: tuple(&mut b)? }
        }
        b'U' => {
            let relation = u32_(&mut b, "Update")?;
            let mut old = None;
            let mut kind = u8_(&mut b, "Update")?;
            if kind == b'K' || kind == b'O' {
                old = Some(tuple(&mut b)?);
                kind = u8_(&mut b, "Update")?;
            }
            if kind != b'N' {
                return Err(format!("pgoutput: Update without a new tuple (got '{}')", kind as char));
            }
            Message::Update { relation, old, new: tuple(&mut b)? }
        }
        b'D' => {
            let relation = u32_(&mut b, "Delete")?;
            let kind = u8_(&mut b, "Delete")?;
            if kind != b'K' && kind != b'O' {
                return Err(format!("pgoutput: Delete without the old key (got '{}')", kind as char));
            }
            Message::Delete { relation, old: tuple(&mut b)? }
        }
        b'T' => {
            let n = u32_(&mut b, "Truncate")?;
            u8_(&mut b, "Truncate")?; // options
            let mut relations = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                relations.push(u32_(&mut b, "Truncate")?);
            }
            Message::Truncate { relations }
        }
        b'O' | b'Y' | b'M' => Message::Other(tag),
        other => return Err(format!("pgoutput: unknown message '{}'", other as char)),
    })
}

fn expect(b: &mut Bytes, want: u8, what: &str) -> Result<(), String> {
    let got = u8_(b, what)?;
    if got != want {
        return Err(format!("pgoutput: {what} expected '{}', got '{}'", want as char, got as char));
    }
    Ok(())
}

fn tuple(b: &mut Bytes) -> Result<Vec<Datum>, String> {
    let n = u16_(b, "tuple")?;
    let mut out = Vec::with_capacity(usize::from(n).min(1600));
    for _ in 0..n {
        out.push(match u8_(b, "tuple")? {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' | b'b' => {
                let len = u32_(b, "tuple")? as usize;
                if b.len() < len {
                    return Err(short("tuple"));
                }
                Datum::Text(b.split_to(len))
            }
            other => return Err(format!("pgoutput: unknown column kind '{}'", other as char)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_bytes() -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&16_400u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&3u16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&2u32.to_be_bytes());
        m.extend_from_slice(b"42");
        m.push(b'n');
        m.push(b'u');
        m
    }

    #[test]
    fn insert_and_relation_decode() {
        let m = message(Bytes::from(insert_bytes())).unwrap();
        assert_eq!(
            m,
            Message::Insert {
                relation: 16_400,
                new: vec![Datum::Text(Bytes::from_static(b"42")), Datum::Null, Datum::Unchanged]
            }
        );
        let mut r = vec![b'R'];
        r.extend_from_slice(&7u32.to_be_bytes());
        r.extend_from_slice(b"public\0cards\0d");
        r.extend_from_slice(&1u16.to_be_bytes());
        r.push(1);
        r.extend_from_slice(b"card_id\0");
        r.extend_from_slice(&20u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = message(Bytes::from(r)).unwrap() else { panic!("not a relation") };
        assert_eq!(rel.columns, vec![Column { name: "card_id".into(), type_oid: 20, key: true }]);
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error() {
        let full = insert_bytes();
        for cut in 0..full.len() - 1 {
            assert!(message(Bytes::copy_from_slice(&full[..cut])).is_err(), "cut at {cut}");
        }
        assert!(message(Bytes::from_static(b"Zxx")).is_err());
        assert!(frame(Bytes::from_static(b"k\0\0")).is_err());
    }

    #[test]
    fn status_updates_are_34_bytes_with_the_flush_position() {
        let s = status_update(0x1_0000_0010, PG_EPOCH_US + 5, true);
        assert_eq!(s.len(), 34);
        assert_eq!(&s[9..17], &0x1_0000_0010u64.to_be_bytes());
        assert_eq!(&s[25..33], &5i64.to_be_bytes());
        assert_eq!(s[33], 1);
    }
}
