//! A view's source rows indexed by entity for point-in-time lookups.
//!
//! Rows are read in parallel (Parquet row groups across threads), each entity key is given a dense
//! id (one hash lookup per row), rows are bucketed by id with a counting sort and each entity's
//! rows sorted by (event time, created time, file position), in parallel. A lookup is one hash
//! lookup and a binary search in the entity's rows. The feature columns stay in the decoded
//! batches; a gather picks (batch, row) pairs with Arrow's `interleave`.
//!
//! An append view's value as of an entity row is its item list then: the entity's rows up to
//! that time, newest first, are appended (as [`crate::record::append`] does online) until the
//! newest `max_items` distinct items are known.

use super::ViewPlan;
use crate::definitions::{FeatureRef, FeatureView};
use crate::error::{FeatureError, Result};
use crate::files;
use crate::record::Record;
use crate::value::{Value, ValueType};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Instant;

type Fast = foldhash::fast::FixedState;

/// Seed of the spill partitioner's hash (any fixed value: partitions only need to agree within one build).
const PARTITION_SEED: u64 = 0x5eed_f107_111a;

/// No id: the row's key is null.
const NO_ID: u32 = u32::MAX;

/// The join-key columns of one batch: a single integer key read as int64, or any keys encoded
/// as the online store encodes them.
pub(super) enum BatchKeys {
    Int(Int64Array),
    Encoded(Vec<(ArrayRef, ValueType)>),
}

/// Whether `view` is keyed by a single integer: such a key is hashed as an `i64`; any other
/// keys are encoded as the online store encodes them.
pub(super) fn int_keyed(view: &FeatureView) -> bool {
    matches!(view.join_keys.as_slice(), [(_, ValueType::Int64 | ValueType::Int32)])
}

/// The types a view's key columns are read as (int64 for a single integer key).
pub(super) fn key_types(view: &FeatureView) -> Vec<ValueType> {
    match int_keyed(view) {
        true => vec![ValueType::Int64],
        false => view.join_keys.iter().map(|(_, t)| *t).collect(),
    }
}

impl BatchKeys {
    /// Reads `view`'s join keys from `batch` (errors name the file, column and row).
    pub fn read(batch: &RecordBatch, view: &FeatureView, what: &str, first_row: u64) -> Result<Self> {
        let cols = view
            .join_keys
            .iter()
            .zip(key_types(view))
            .map(|((k, _), t)| files::column(batch, k, t, what, first_row))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_columns(view, &cols))
    }

    /// `view`'s keys from columns already read as [`key_types`] gives (a spill file's).
    pub fn from_columns(view: &FeatureView, cols: &[ArrayRef]) -> Self {
        match int_keyed(view) {
            true => Self::Int(cols[0].as_primitive::<Int64Type>().clone()),
            false => Self::Encoded(cols.iter().cloned().zip(key_types(view)).collect()),
        }
    }

    /// The key columns with their names, as read (spill files keep them in this form).
    pub fn columns(&self) -> Vec<ArrayRef> {
        match self {
            Self::Int(a) => vec![std::sync::Arc::new(a.clone())],
            Self::Encoded(cols) => cols.iter().map(|(c, _)| c.clone()).collect(),
        }
    }

    fn int(&self, row: usize) -> Option<i64> {
        match self {
            Self::Int(a) => a.is_valid(row).then(|| a.value(row)),
            Self::Encoded(_) => None,
        }
    }

    fn encoded(&self, row: usize, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        match self {
            Self::Int(a) => {
                if a.is_null(row) {
                    return false;
                }
                crate::record::put_int(a.value(row), buf);
                true
            }
            Self::Encoded(cols) => cols.iter().all(|(c, t)| files::key_into(c.as_ref(), *t, row, buf)),
        }
    }

    /// The spill partition of `row` among `parts` (rows with a null key go to partition 0).
    pub fn partition(&self, row: usize, parts: usize, buf: &mut Vec<u8>) -> usize {
        let hasher = Fast::with_seed(PARTITION_SEED);
        let hash = match self {
            Self::Int(a) => match a.is_valid(row) {
                true => hasher.hash_one(a.value(row)),
                false => return 0,
            },
            Self::Encoded(_) => match self.encoded(row, buf) {
                true => hasher.hash_one(buf.as_slice()),
                false => return 0,
            },
        };
        // The high bits: the hash map uses the low ones.
        ((hash >> 32) % parts as u64) as usize
    }
}

/// Entity key → dense id.
enum KeyMap {
    Int(HashMap<i64, u32, Fast>),
    Encoded(HashMap<Vec<u8>, u32, Fast>),
}

impl KeyMap {
    fn len(&self) -> usize {
        match self {
            Self::Int(m) => m.len(),
            Self::Encoded(m) => m.len(),
        }
    }

    fn insert(&mut self, keys: &BatchKeys, row: usize, buf: &mut Vec<u8>) -> u32 {
        let next = self.len() as u32;
        match (self, keys) {
            (Self::Int(m), BatchKeys::Int(_)) => match keys.int(row) {
                Some(k) => *m.entry(k).or_insert(next),
                None => NO_ID,
            },
            (Self::Encoded(m), _) => {
                if !keys.encoded(row, buf) {
                    return NO_ID;
                }
                match m.get(buf.as_slice()) {
                    Some(id) => *id,
                    None => {
                        m.insert(buf.clone(), next);
                        next
                    }
                }
            }
            (Self::Int(_), BatchKeys::Encoded(_)) => NO_ID,
        }
    }

    fn get(&self, keys: &BatchKeys, row: usize, buf: &mut Vec<u8>) -> Option<u32> {
        match (self, keys) {
            (Self::Int(m), BatchKeys::Int(_)) => m.get(&keys.int(row)?).copied(),
            (Self::Encoded(m), _) => keys.encoded(row, buf).then(|| m.get(buf.as_slice()).copied()).flatten(),
            (Self::Int(_), BatchKeys::Encoded(_)) => None,
        }
    }
}

/// One decoded batch of a view's source: keys, event and created times, requested features.
pub(super) struct Chunk {
    pub keys: BatchKeys,
    pub ts: TimestampMicrosecondArray,
    pub created: Option<TimestampMicrosecondArray>,
    pub features: Vec<ArrayRef>,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    fn created(&self, row: usize) -> i64 {
        match &self.created {
            Some(c) if c.is_valid(row) => c.value(row),
            _ => i64::MIN,
        }
    }
}

/// A view's rows by entity, and its requested feature columns.
pub(super) struct ViewIndex {
    keys: KeyMap,
    /// `entries[starts[id]..starts[id + 1]]` are entity `id`'s rows as (event time, created
    /// time, position in the source), ascending: ties by created time, then file order.
    starts: Vec<usize>,
    entries: Vec<(i64, i64, u32)>,
    /// Per requested feature, the decoded batches, and the first source position of each batch.
    columns: Vec<Vec<ArrayRef>>,
    dtypes: Vec<arrow_schema::DataType>,
    offsets: Vec<u32>,
    ttl_us: i64,
    /// Set for an append view.
    items: Option<Items>,
}

/// An append view's item lists: the view (every feature is read), how many items it keeps and
/// which read column each requested feature is.
struct Items {
    view: FeatureView,
    max: usize,
    out: Vec<usize>,
}

impl ViewIndex {
    /// Indexes the chunks of a view's source (in file order, columns as `plan` reads them) with
    /// up to `threads` threads; `features` are the build's requested features.
    pub fn build(
        plan: &ViewPlan,
        features: &[FeatureRef],
        chunks: Vec<Chunk>,
        threads: usize,
        what: &str,
    ) -> Result<Self> {
        let view = plan.view;
        let dtypes = plan.read_dtypes.clone();
        // An append view reads every feature in declaration order: a feature's column is its index.
        let items = view.max_items.map(|max| Items {
            view: view.clone(),
            max,
            out: plan.wanted.iter().map(|i| features[*i].feature).collect(),
        });
        let n: usize = chunks.iter().map(Chunk::rows).sum();
        if u32::try_from(n).is_err() {
            return Err(FeatureError::invalid(format!("{what}: more than 4 billion rows")));
        }
        let mut keys = match int_keyed(view) {
            true => KeyMap::Int(HashMap::with_hasher(Fast::default())),
            false => KeyMap::Encoded(HashMap::with_hasher(Fast::default())),
        };
        let t0 = Instant::now();
        // One id per row, and each id's row count. Meanwhile a helper thread writes the sort
        // entries' memory once: each fresh page costs a fault (2-10 µs on a VM), which would
        // otherwise stall the scatter below.
        let fill = |n: usize| {
            let mut v: Vec<(i64, i64, u32)> = Vec::with_capacity(n);
            v.resize(n, (0, 0, 0));
            v
        };
        let count = |keys: &mut KeyMap| {
            let mut ids: Vec<u32> = Vec::with_capacity(n);
            let mut counts: Vec<usize> = Vec::new();
            let mut buf = Vec::with_capacity(32);
            for chunk in &chunks {
                for row in 0..chunk.rows() {
                    let id = keys.insert(&chunk.keys, row, &mut buf);
                    if id != NO_ID {
                        if id as usize == counts.len() {
                            counts.push(0);
                        }
                        counts[id as usize] += 1;
                    }
                    ids.push(id);
                }
            }
            (ids, counts)
        };
        let ((ids, counts), mut entries) = if threads > 1 {
            std::thread::scope(|s| {
                let helper = s.spawn(|| fill(n));
                let counted = count(&mut keys);
                helper.join().map(|entries| (counted, entries))
            })
            .map_err(|_| FeatureError::store("the indexing helper thread panicked"))?
        } else {
            (count(&mut keys), fill(n))
        };
        let mut starts = Vec::with_capacity(counts.len() + 1);
        starts.push(0usize);
        for c in &counts {
            starts.push(starts[starts.len() - 1] + c);
        }
        drop(counts);
        // Rows with a null key are not indexed.
        entries.truncate(starts[starts.len() - 1]);
        let t1 = Instant::now();
        // Counting sort by id (file order kept within an id), then each id's rows by time.
        let mut cursor = starts.clone();
        let mut position = 0u32;
        for chunk in &chunks {
            let ts = chunk.ts.values();
            for (row, t) in ts.iter().enumerate() {
                let id = ids[position as usize];
                if id != NO_ID {
                    let slot = &mut cursor[id as usize];
                    entries[*slot] = (*t, chunk.created(row), position);
                    *slot += 1;
                }
                position += 1;
            }
        }
        let t2 = Instant::now();
        drop(ids);
        drop(cursor);
        // Keys and times are in the entries now: only the feature columns are kept.
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(chunks.len()); dtypes.len()];
        let mut at = 0u32;
        for chunk in chunks {
            offsets.push(at);
            at += chunk.rows() as u32;
            for (col, f) in columns.iter_mut().zip(chunk.features) {
                col.push(f);
            }
        }
        let t3 = Instant::now();
        sort_buckets(&mut entries, &starts, threads);
        tracing::debug!(view = %view.name, rows = n, ids = ?(t1 - t0), scatter = ?(t2 - t1), columns = ?(t3 - t2), sort = ?t3.elapsed(), "training set: view indexed");
        Ok(Self { keys, starts, entries, columns, dtypes, offsets, ttl_us: view.ttl_us, items })
    }

    /// The requested features of every entity row of a batch (keys, event times `ts`), rows
    /// split over `threads`, and how many rows found a value.
    pub fn join(&self, keys: &BatchKeys, ts: &[i64], threads: usize) -> Result<(u64, Vec<ArrayRef>)> {
        let Some(items) = &self.items else {
            let picks = self.pick_batch(keys, ts, threads);
            let found = picks.iter().filter(|p| p.is_some()).count() as u64;
            return Ok((found, self.gather(&picks)?));
        };
        let records = split_rows(ts.len(), threads, |row, buf| self.items_at(items, keys, row, ts[row], buf));
        let found = records.iter().filter(|r| r.is_some()).count() as u64;
        let columns = items
            .out
            .iter()
            .map(|&o| {
                let values: Vec<Option<Value>> =
                    records.iter().map(|r| r.as_ref().and_then(|r| r.values[o].clone())).collect();
                files::array_of(items.view.features[o].dtype, &values)
            })
            .collect();
        Ok((found, columns))
    }

    /// An append view's record as of `entity_ts` for `keys[row]`'s entity: its rows up to then
    /// appended as the online store appends them (event-time order, ties by created time and
    /// file order, an item equal to one at the same time kept once, the newest `max` kept).
    /// `None` when the entity has no item by then, or its newest is older than the ttl.
    fn items_at(
        &self,
        items: &Items,
        keys: &BatchKeys,
        row: usize,
        entity_ts: i64,
        buf: &mut Vec<u8>,
    ) -> Option<Record> {
        let id = self.keys.get(keys, row, buf)? as usize;
        let rows = &self.entries[self.starts[id]..self.starts[id + 1]];
        let end = rows.partition_point(|(t, ..)| *t <= entity_ts);
        let newest = rows[end.checked_sub(1)?].0;
        if self.ttl_us > 0 && newest < entity_ts.saturating_sub(self.ttl_us) {
            return None;
        }
        // Rows newest first until `want` items (and every row at the oldest time taken, whose
        // order decides ties); more when repeated items were merged away.
        let mut taken = std::collections::VecDeque::new();
        let (mut from, mut raw, mut want) = (end, 0usize, items.max);
        loop {
            while from > 0 && (raw < want || (from < end && rows[from - 1].0 == rows[from].0)) {
                from -= 1;
                let record = self.record_at(items, rows[from]);
                raw += record.items(&items.view).unwrap_or(0);
                taken.push_front(record);
            }
            let (record, _) = crate::record::append(&items.view, None, taken.make_contiguous(), items.max);
            let got = record.as_ref().map_or(0, |r| r.item_ts.len());
            if got >= items.max || from == 0 {
                return record;
            }
            want += items.max - got;
        }
    }

    /// The source row at an index entry, as the record a write of it would carry.
    fn record_at(&self, items: &Items, (ts, created, position): (i64, i64, u32)) -> Record {
        let chunk = self.offsets.partition_point(|o| *o <= position) - 1;
        let at = (position - self.offsets[chunk]) as usize;
        let values = self
            .columns
            .iter()
            .zip(&items.view.features)
            .map(|(col, f)| files::value_at(col[chunk].as_ref(), f.dtype, at))
            .collect();
        Record::new(ts, created.max(0), values)
    }

    /// The source position of the latest row of `keys[row]`'s entity with event time ≤
    /// `entity_ts` and within the ttl; `None` when there is none.
    pub fn pick(&self, keys: &BatchKeys, row: usize, entity_ts: i64, buf: &mut Vec<u8>) -> Option<u32> {
        let id = self.keys.get(keys, row, buf)? as usize;
        let rows = &self.entries[self.starts[id]..self.starts[id + 1]];
        let end = rows.partition_point(|(t, ..)| *t <= entity_ts);
        let (t, _, position) = rows[end.checked_sub(1)?];
        let fresh = self.ttl_us <= 0 || t >= entity_ts.saturating_sub(self.ttl_us);
        fresh.then_some(position)
    }

    /// [`Self::pick`] for every row of a batch (event times `ts`), rows split over `threads`.
    pub fn pick_batch(&self, keys: &BatchKeys, ts: &[i64], threads: usize) -> Vec<Option<u32>> {
        split_rows(ts.len(), threads, |row, buf| self.pick(keys, row, ts[row], buf))
    }

    /// The requested feature columns at `picks` (source positions; `None` gives null).
    pub fn gather(&self, picks: &[Option<u32>]) -> Result<Vec<ArrayRef>> {
        let null = self.offsets.len();
        let indices: Vec<(usize, usize)> = picks
            .iter()
            .map(|p| match p {
                Some(pos) => {
                    let chunk = self.offsets.partition_point(|o| *o <= *pos) - 1;
                    (chunk, (*pos - self.offsets[chunk]) as usize)
                }
                None => (null, 0),
            })
            .collect();
        self.columns
            .iter()
            .zip(&self.dtypes)
            .map(|(chunks, dtype)| {
                let nulls = arrow_array::new_null_array(dtype, 1);
                let mut arrays: Vec<&dyn Array> = chunks.iter().map(|c| c.as_ref()).collect();
                arrays.push(nulls.as_ref());
                arrow_select::interleave::interleave(&arrays, &indices)
                    .map_err(|e| FeatureError::store(format!("gathering features: {e}")))
            })
            .collect()
    }
}

/// `each` of rows `0..n` (with a key buffer per thread), in order, rows split over up to
/// `threads` threads (one per 1,024 rows).
fn split_rows<T: Send>(n: usize, threads: usize, each: impl Fn(usize, &mut Vec<u8>) -> T + Sync) -> Vec<T> {
    let range = |from: usize, to: usize| {
        let mut buf = Vec::with_capacity(32);
        (from..to).map(|row| each(row, &mut buf)).collect::<Vec<_>>()
    };
    let threads = threads.clamp(1, n / 1024 + 1);
    if threads == 1 {
        return range(0, n);
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads)
            .map(|t| {
                let range = &range;
                s.spawn(move || range(t * per, ((t + 1) * per).min(n)))
            })
            .collect();
        let mut out = range(0, per.min(n));
        for h in handles {
            // A panicking helper would be a bug; its rows are done again here.
            let part = h.join().ok();
            let from = out.len();
            let to = (from + per).min(n);
            out.extend(part.unwrap_or_else(|| range(from, to)));
        }
        out
    })
}

/// Sorts each bucket `entries[starts[i]..starts[i + 1]]`, buckets split over `threads`.
fn sort_buckets(entries: &mut [(i64, i64, u32)], starts: &[usize], threads: usize) {
    fn sort(entries: &mut [(i64, i64, u32)], starts: &[usize], base: usize) {
        for w in starts.windows(2) {
            entries[w[0] - base..w[1] - base].sort_unstable();
        }
    }
    let threads = threads.max(1);
    if threads == 1 || entries.len() < 1 << 16 {
        return sort(entries, starts, 0);
    }
    // Bucket boundaries closest to equal shares of the rows.
    let mut cuts = vec![0usize];
    for t in 1..threads {
        let want = entries.len() * t / threads;
        let b = starts.partition_point(|s| *s < want).min(starts.len() - 1);
        if b > cuts[cuts.len() - 1] {
            cuts.push(b);
        }
    }
    cuts.push(starts.len() - 1);
    std::thread::scope(|s| {
        let mut rest = entries;
        let mut base = 0;
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let (mine, tail) = rest.split_at_mut(starts[b] - base);
            rest = tail;
            let bounds = &starts[a..=b];
            let my_base = base;
            s.spawn(move || sort(mine, bounds, my_base));
            base = starts[b];
        }
    });
}
