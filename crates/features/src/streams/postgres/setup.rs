//! What happens on the database before changes stream: checking the server and the table,
//! the publication, the replication slot, the exported-snapshot copy; and removing a slot.

use super::types;
use super::wire::{ident, literal, Conn, ConnInfo, Step};
use crate::definitions::FeatureView;
use crate::streams::ConsumerError;

/// The source table as the catalog describes it.
pub struct Table {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// (column name, type OID, type name)
    pub columns: Vec<(String, u32, String)>,
}

impl Table {
    /// `"schema"."table"` for SQL.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", ident(&self.namespace), ident(&self.name))
    }
}

fn err(view: &FeatureView, what: impl std::fmt::Display) -> String {
    format!("feature view '{}': {what}", view.name)
}

/// A source that can never be read as declared: the consumer stops and says what to change.
fn stop(view: &FeatureView, what: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Stop(err(view, what))
}

/// Checks that the server can do logical replication.
pub async fn check_server(sql: &mut Conn, view: &FeatureView) -> Result<(), ConsumerError> {
    let (_, rows) = sql.query("SHOW wal_level").await?;
    let level = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
    if level != "logical" {
        return Err(stop(
            view,
            format!(
                "PostgreSQL runs with wal_level = {level}; change data capture needs wal_level = logical \
                 (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            ),
        ));
    }
    Ok(())
}

/// Reads the table's catalog entry and checks that its columns can feed the view: every join
/// key and feature is a column of a readable type, and deletes will name the entity (the join
/// keys are in the replica identity, or the identity is FULL).
pub async fn describe(sql: &mut Conn, view: &FeatureView, table: &str) -> Result<Table, ConsumerError> {
    let q = format!(
        "SELECT c.oid, n.nspname, c.relname, c.relreplident, c.relkind FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {}::regclass",
        literal(table)
    );
    let (_, rows) = sql.query(&q).await.map_err(|e| err(view, format!("table '{table}': {e}")))?;
    let row = rows.into_iter().next().ok_or_else(|| stop(view, format!("table '{table}' not found")))?;
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let oid: u32 = text(0).parse().map_err(|_| stop(view, "catalog returned a bad OID"))?;
    let (namespace, name, identity, kind) = (text(1), text(2), text(3), text(4));
    if kind != "r" && kind != "p" {
        return Err(stop(view, format!("'{table}' is not a table (relkind {kind}); logical replication reads tables")));
    }
    let q = format!(
        "SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    );
    let (_, rows) = sql.query(&q).await?;
    let columns: Vec<(String, u32, String)> = rows
        .into_iter()
        .map(|r| {
            let t = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            (t(0), t(1).parse().unwrap_or(0), t(2))
        })
        .collect();
    let t = Table { oid, namespace, name, columns };
    let column = |name: &str| t.columns.iter().find(|c| c.0 == name);
    let names = || t.columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", ");
    let wanted = view
        .join_keys
        .iter()
        .map(|(n, ty)| (n.as_str(), *ty))
        .chain(view.features.iter().map(|f| (f.name.as_str(), f.dtype)));
    for (name, ty) in wanted {
        let (_, oid, type_name) = column(name).ok_or_else(|| {
            stop(view, format!("table {} has no column '{name}' (columns: {})", t.sql_name(), names()))
        })?;
        types::check(name, type_name, *oid, name, ty)
            .map_err(|e| stop(view, format!("table {}: {e}", t.sql_name())))?;
    }
    check_identity(sql, view, &t, &identity).await?;
    Ok(t)
}

async fn check_identity(sql: &mut Conn, view: &FeatureView, t: &Table, identity: &str) -> Result<(), ConsumerError> {
    let keys: Vec<&str> = view.join_keys.iter().map(|(n, _)| n.as_str()).collect();
    let alter = format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.sql_name());
    match identity {
        "f" => return Ok(()),
        "n" => {
            return Err(stop(
                view,
                format!(
                    "table {} has REPLICA IDENTITY NOTHING, so deletes cannot name the entity; run {alter}",
                    t.sql_name()
                ),
            ))
        }
        _ => {}
    }
    let q = format!(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = {} AND {}",
        t.oid,
        if identity == "i" { "i.indisreplident" } else { "i.indisprimary" }
    );
    let (_, rows) = sql.query(&q).await?;
    let identity_columns: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    if identity_columns.is_empty() {
        return Err(stop(
            view,
            format!(
                "table {} has no primary key, so PostgreSQL cannot replicate its updates and deletes; add one or run {alter}",
                t.sql_name()
            ),
        ));
    }
    if let Some(k) = keys.iter().find(|k| !identity_columns.iter().any(|c| c == *k)) {
        return Err(stop(
            view,
            format!(
                "join key '{k}' is not in table {}'s replica identity ({}), so deletes would not name the entity; \
                 key the view on those columns or run {alter}",
                t.sql_name(),
                identity_columns.join(", ")
            ),
        ));
    }
    Ok(())
}

/// What Flotilla writes as the comment of a publication it created, so that it is told apart from
/// one a DBA created (perhaps under the same default name) that must never be altered or dropped.
const CREATED_BY: &str = "created by flotilla";

/// Makes sure `publication` publishes the table: creates it when absent (then Flotilla owns it and
/// marks it so in its comment), adds the table to a publication Flotilla created; a publication of
/// someone else's that lacks the table is an error. Returns whether Flotilla owns it.
pub async fn ensure_publication(
    sql: &mut Conn,
    view: &FeatureView,
    publication: &str,
    t: &Table,
) -> Result<bool, ConsumerError> {
    let (_, rows) = sql
        .query(&format!(
            "SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = {}",
            literal(publication)
        ))
        .await?;
    let Some(row) = rows.into_iter().next() else {
        sql.query(&format!("CREATE PUBLICATION {} FOR TABLE {}", ident(publication), t.sql_name()))
            .await
            .map_err(|e| err(view, format!("cannot create publication '{publication}': {e}")))?;
        sql.query(&format!("COMMENT ON PUBLICATION {} IS {}", ident(publication), literal(CREATED_BY))).await?;
        tracing::info!(view = %view.name, publication, table = %t.sql_name(), "created publication");
        return Ok(true);
    };
    let ours = row.into_iter().next().flatten().is_some_and(|c| c == CREATED_BY);
    let q = format!(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = {} AND schemaname = {} AND tablename = {}",
        literal(publication),
        literal(&t.namespace),
        literal(&t.name)
    );
    let (_, rows) = sql.query(&q).await?;
    if rows.is_empty() {
        if !ours {
            return Err(stop(view, format!("publication '{publication}' does not publish {}", t.sql_name())));
        }
        sql.query(&format!("ALTER PUBLICATION {} ADD TABLE {}", ident(publication), t.sql_name()))
            .await
            .map_err(|e| err(view, format!("cannot add {} to publication '{publication}': {e}", t.sql_name())))?;
    }
    Ok(ours)
}

/// The slot's plugin, if the slot exists.
pub async fn slot_plugin(sql: &mut Conn, slot: &str) -> Result<Option<String>, String> {
    let (_, rows) =
        sql.query(&format!("SELECT plugin FROM pg_replication_slots WHERE slot_name = {}", literal(slot))).await?;
    Ok(rows.into_iter().next().map(|r| r.into_iter().next().flatten().unwrap_or_default()))
}

/// A new slot and the snapshot it exported, valid while `replication` stays idle and open.
pub struct NewSlot {
    pub consistent_point: u64,
    pub snapshot: String,
}

pub async fn create_slot(replication: &mut Conn, view: &FeatureView, slot: &str) -> Result<NewSlot, String> {
    let (columns, rows) = replication
        .query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT", ident(slot)))
        .await
        .map_err(|e| err(view, format!("cannot create replication slot '{slot}': {e}")))?;
    let row = rows.into_iter().next().ok_or_else(|| err(view, "CREATE_REPLICATION_SLOT returned no row"))?;
    let get = |name: &str| {
        columns.iter().position(|(c, _)| c == name).and_then(|i| row.get(i).cloned().flatten()).unwrap_or_default()
    };
    let consistent_point =
        parse_lsn(&get("consistent_point")).ok_or_else(|| err(view, "slot has no consistent point"))?;
    Ok(NewSlot { consistent_point, snapshot: get("snapshot_name") })
}

/// Drops a slot (after ending the session that holds it, if any) and, when `publication` is
/// given, that publication. Missing ones are fine.
pub async fn drop_slot(info: &ConnInfo, slot: &str, publication: Option<&str>) -> Result<(), String> {
    let mut sql = Conn::connect(info, false).await?;
    let active = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = {} AND active_pid IS NOT NULL",
        literal(slot)
    );
    sql.query(&active).await?;
    for attempt in 0..20 {
        let q = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        );
        match sql.query(&q).await {
            Ok(_) => break,
            // Still active for a moment after the terminate.
            Err(e) if e.code == "55006" && attempt < 19 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => return Err(format!("cannot drop replication slot '{slot}': {e}")),
        }
    }
    if let Some(p) = publication {
        sql.query(&format!("DROP PUBLICATION IF EXISTS {}", ident(p)))
            .await
            .map_err(|e| format!("cannot drop publication '{p}': {e}"))?;
    }
    sql.close().await;
    Ok(())
}

/// Starts copying the table as of the exported snapshot (rows of `columns`, in that order);
/// read them with [`copy_chunk`]. Returns the snapshot's time (µs), the rows' event time.
pub async fn begin_copy(sql: &mut Conn, t: &Table, snapshot: &str, columns: &[&str]) -> Result<i64, String> {
    sql.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    sql.query(&format!("SET TRANSACTION SNAPSHOT {}", literal(snapshot))).await?;
    let (_, rows) = sql.query("SELECT (extract(epoch FROM now()) * 1000000)::bigint").await?;
    let at: i64 = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    sql.send_query(&format!("SELECT {list} FROM {}", t.sql_name())).await?;
    Ok(at)
}

/// Up to `chunk` more rows of the copy, and whether it is done (the snapshot's transaction is
/// then closed; call no more).
pub async fn copy_chunk(sql: &mut Conn, chunk: usize) -> Result<(Vec<Vec<Option<String>>>, bool), String> {
    let mut rows = Vec::with_capacity(chunk);
    while rows.len() < chunk {
        match sql.next_row().await? {
            Some(Step::Row(r)) => rows.push(r),
            Some(Step::Columns(_)) => {}
            None => {
                sql.query("COMMIT").await?;
                return Ok((rows, true));
            }
        }
    }
    Ok((rows, false))
}

/// Reads `16/B374D848` as a 64-bit LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as PostgreSQL writes it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
    }
}
