//! The MVCC key-value store, with etcd's semantics.
//!
//! Every change gets a revision; a txn gets one main revision for all its writes, each write a
//! sub-revision. History is kept until compaction. The durable copy lives in redb (one table of
//! events keyed by `(main, sub)` revision, one of metadata); the serving copy is an in-memory key
//! index rebuilt from redb at open, like etcd's `treeIndex` over bbolt.
//!
//! Applying changes only the in-memory index; the changed rows wait in memory and reach redb in
//! one durable transaction at each [`MvccStore::checkpoint`] (the caller checkpoints every
//! second or so, before snapshots and at shutdown). The Raft log is the source of truth and is
//! replayed above the last checkpoint at restart, so rows that never reached redb are rebuilt.
//! A store made with [`MvccStore::in_memory`] has no redb at all.

use crate::planted::{self, Bug};
use crate::stored_kv::{StoredKv, MAX_PART_LEN};
use crate::StorageError;
use c20_api::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use c20_api::mvccpb::KeyValue;
use c20_api::{EtcdError, MAX_TXN_OPS};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// `(main, sub)` revision → `[flag u8][KeyValue protobuf]`; flag 1 = put, 0 = tombstone.
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
/// Named metadata values.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Lease id → granted TTL in seconds.
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

const META_CURRENT_REV: &str = "current_rev";
const META_COMPACT_REV: &str = "compact_rev";
const META_APPLIED: &str = "applied";

const FLAG_TOMBSTONE: u8 = 0;
const FLAG_PUT: u8 = 1;

/// One change of one key: a put with the stored value, or a delete with its tombstone (key and
/// revision only). The key index and the revision-ordered queue share it. Its main revision is
/// the `mod_revision` of its [`StoredKv`] (a tombstone's too) rather than a field of its own, so
/// an event takes 16 bytes besides the shared value.
#[derive(Debug, Clone)]
pub(super) struct KeyEvent {
    pub(super) kv: StoredKv,
    pub(super) sub: u32,
    pub(super) is_put: bool,
}

impl KeyEvent {
    pub(super) fn main(&self) -> i64 {
        self.kv.mod_revision()
    }

    /// What a read at or after this event sees: the value, or nothing after a delete.
    pub(super) fn put(&self) -> Option<&StoredKv> {
        self.is_put.then_some(&self.kv)
    }

    /// Its key in the events table.
    fn row_key(&self) -> (u64, u64) {
        (self.main() as u64, self.sub.into())
    }

    /// The bytes its row takes in the events table: key, flag and `KeyValue` (as
    /// [`KeyEvent::row_key`] and [`KeyEvent::encode_row`] write them).
    fn row_len(&self) -> usize {
        ROW_KEY_BYTES + 1 + self.kv.encoded_len()
    }

    /// Its row in the events table: the flag, then the `KeyValue` (a tombstone's holds only
    /// the key and the revision).
    fn encode_row(&self, row: &mut Vec<u8>) {
        row.push(if self.is_put {
            FLAG_PUT
        } else {
            FLAG_TOMBSTONE
        });
        self.kv.encode(row);
    }
}

/// Everything the store holds, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MvccImage {
    pub current_rev: i64,
    pub compact_rev: i64,
    /// `(main, sub, row)` in key order, each key's events in revision order; rows as in the
    /// events table.
    pub events: Vec<(u64, u64, serde_bytes::ByteBuf)>,
    /// Every lease as `(id, granted TTL)`; the keys attached follow from the events.
    pub leases: Vec<(i64, i64)>,
}

impl MvccImage {
    /// Only what changed after revision `base`: the events above it, with this image's
    /// revisions and leases. `None` when compaction already removed history above `base` (a
    /// receiver at `base` could not rebuild this image from it) or `base` is ahead of this image.
    pub fn since(&self, base: i64) -> Option<MvccImage> {
        if base < self.compact_rev || base > self.current_rev || base < 1 {
            return None;
        }
        Some(MvccImage {
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            events: self
                .events
                .iter()
                .filter(|(main, _, _)| *main as i64 > base)
                .cloned()
                .collect(),
            leases: self.leases.clone(),
        })
    }
}

/// The store's events by reference (see [`MvccStore::export_refs`]).
pub struct ExportRefs {
    current_rev: i64,
    compact_rev: i64,
    events: Vec<KeyEvent>,
    leases: Vec<(i64, i64)>,
}

impl ExportRefs {
    /// Encodes every event as the events table stores it.
    pub fn into_image(self) -> MvccImage {
        let events = self
            .events
            .iter()
            .map(|e| {
                let mut row = Vec::new();
                e.encode_row(&mut row);
                let (main, sub) = e.row_key();
                (main, sub, serde_bytes::ByteBuf::from(row))
            })
            .collect();
        MvccImage {
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            events,
            leases: self.leases,
        }
    }

    /// Writes the postcard encoding of [`ExportRefs::into_image`]'s image to `w`, event by
    /// event, without building the image: a snapshot of a large store then needs memory for
    /// one row at a time rather than a second copy of the store. postcard encodes a struct as
    /// its fields in order, a sequence as its length then its elements, integers as varints
    /// (signed ones zigzagged) and bytes as their length then the bytes.
    pub fn write_image(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        fn put<T: serde::Serialize + ?Sized>(
            w: &mut impl std::io::Write,
            v: &T,
        ) -> std::io::Result<()> {
            postcard::to_io(v, &mut *w)
                .map(|_| ())
                .map_err(std::io::Error::other)
        }
        put(w, &(self.current_rev, self.compact_rev))?;
        put(w, &(self.events.len() as u64))?;
        let mut row = Vec::new();
        for e in &self.events {
            row.clear();
            e.encode_row(&mut row);
            let (main, sub) = e.row_key();
            put(w, &(main, sub, serde_bytes::Bytes::new(&row)))?;
        }
        put(w, &self.leases)
    }
}

/// A write request as it is replicated and applied.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Grants a lease; the proposer fills in the id (never 0) and the TTL (already raised to the
    /// minimum).
    LeaseGrant(LeaseGrantRequest),
    /// Revokes a lease: its keys are deleted at one revision.
    LeaseRevoke(LeaseRevokeRequest),
}

/// The result of applying one [`WriteOp`]. Errors here are deterministic (every replica gets the
/// same one) and changed nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// Row changes since the last checkpoint, written to redb together: events added (put or
/// tombstone, the tombstone's key and revision in its `KeyValue`), then events compacted away.
#[derive(Default)]
struct PendingRows {
    inserts: Vec<KeyEvent>,
    removes: Vec<(u64, u64)>,
    /// Lease id → its TTL once granted, `None` once revoked (the last change wins).
    leases: BTreeMap<i64, Option<i64>>,
    /// What these rows come to in the events table: keys and rows of the inserts, keys of the
    /// removes (see [`MvccStore::pending_bytes`]).
    bytes: usize,
}

/// The bytes of an events-table key: main and sub revision.
const ROW_KEY_BYTES: usize = 16;

/// redb's page cache. The key index in memory answers every read, so redb is read only when a
/// store opens (once, in order) and written at checkpoints, whose rows are keyed by revision
/// and so land at the right edge of its B-tree; compaction removes rows from the left. redb's
/// default, 1 GiB, kept about 430 MiB of pages after a million 256-byte puts, nearly as much as
/// the index itself; a small cache holds the pages those two edges touch. 8 MiB instead of 32
/// saved another 30 MiB and no time (`cargo run --release -p c20-storage --example
/// store_memory`).
const REDB_CACHE_BYTES: usize = 8 << 20;

/// How every store's redb is opened.
fn redb_builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(REDB_CACHE_BYTES);
    b
}

pub struct MvccStore {
    /// The durable copy; `None` for a store held in memory only.
    db: Option<Arc<Database>>,
    /// Writes checkpoints to `db` in the background, started at the first one.
    checkpointer: Option<checkpoint::Checkpointer>,
    /// The database file; `None` for a store held in memory.
    path: Option<std::path::PathBuf>,
    index: BTreeMap<Box<[u8]>, History>,
    /// Every event kept (not compacted away) in revision order, for watchers.
    by_rev: VecDeque<KeyEvent>,
    /// Live leases and the keys attached to each.
    leases: BTreeMap<i64, lease::Lease>,
    current_rev: i64,
    compact_rev: i64,
    applied: Vec<u8>,
    pending: PendingRows,
    /// Set once a redb write failed: the in-memory state may be ahead of disk, so no more writes.
    failed: Option<String>,
    /// Threads for the parallel phase of [`MvccStore::apply_batch`]; 1 = strictly serial.
    apply_threads: usize,
    /// For a store in memory that models a disk (simulation): what the last checkpoint made
    /// durable, which [`MvccStore::lose_unsynced`] goes back to.
    durable: Option<Box<(MvccImage, Vec<u8>)>>,
    models_disk: bool,
}

impl MvccStore {
    /// Opens (or creates) the store at `path` and rebuilds the key index.
    pub fn open(path: &Path) -> Result<MvccStore, StorageError> {
        let db = redb_builder().create(path).map_err(redb::Error::from)?;
        Self::with_db(Arc::new(db), Some(path.to_path_buf()))
    }

    /// [`MvccStore::open`] with `faults` consulted before every write and sync of the file (a
    /// test arms one to fail the next checkpoint as a disk returning EIO would).
    pub fn open_with_faults(
        path: &Path,
        faults: Option<Arc<dyn crate::IoFaults>>,
    ) -> Result<MvccStore, StorageError> {
        let Some(faults) = faults else {
            return Self::open(path);
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let backend = faults::FaultyFile {
            file: redb::backends::FileBackend::new(file).map_err(redb::Error::from)?,
            faults,
        };
        let db = redb_builder()
            .create_with_backend(backend)
            .map_err(redb::Error::from)?;
        Self::with_db(Arc::new(db), Some(path.to_path_buf()))
    }

    /// A store held in memory only (for embedded clusters and simulation).
    pub fn in_memory() -> Result<MvccStore, StorageError> {
        Ok(Self::empty(None, None))
    }

    /// A store at revision 1 with nothing in it.
    fn empty(db: Option<Arc<Database>>, path: Option<std::path::PathBuf>) -> MvccStore {
        MvccStore {
            db,
            checkpointer: None,
            path,
            index: BTreeMap::new(),
            by_rev: VecDeque::new(),
            leases: BTreeMap::new(),
            current_rev: 1,
            compact_rev: 0,
            applied: Vec::new(),
            pending: PendingRows::default(),
            failed: None,
            apply_threads: 1,
            durable: None,
            models_disk: false,
        }
    }

    fn with_db(
        db: Arc<Database>,
        path: Option<std::path::PathBuf>,
    ) -> Result<MvccStore, StorageError> {
        {
            let mut w = db.begin_write().map_err(redb::Error::from)?;
            w.set_durability(Durability::Immediate)
                .map_err(|e| StorageError::Redb(e.to_string()))?;
            w.open_table(EVENTS).map_err(redb::Error::from)?;
            w.open_table(META).map_err(redb::Error::from)?;
            w.open_table(LEASES).map_err(redb::Error::from)?;
            w.commit().map_err(redb::Error::from)?;
        }
        let mut store = Self::empty(Some(db), path);
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<(), StorageError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let r = db.begin_read().map_err(redb::Error::from)?;
        let meta = r.open_table(META).map_err(redb::Error::from)?;
        if let Some(v) = meta.get(META_CURRENT_REV).map_err(redb::Error::from)? {
            self.current_rev = decode_i64(v.value())?;
        }
        if let Some(v) = meta.get(META_COMPACT_REV).map_err(redb::Error::from)? {
            self.compact_rev = decode_i64(v.value())?;
        }
        if let Some(v) = meta.get(META_APPLIED).map_err(redb::Error::from)? {
            self.applied = v.value().to_vec();
        }
        let events = r.open_table(EVENTS).map_err(redb::Error::from)?;
        for row in events.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            let (main, sub) = k.value();
            index_row(&mut self.index, main, sub, v.value())?;
        }
        let leases = r.open_table(LEASES).map_err(redb::Error::from)?;
        for row in leases.iter().map_err(redb::Error::from)? {
            let (id, ttl) = row.map_err(redb::Error::from)?;
            self.leases
                .insert(id.value(), lease::Lease::new(ttl.value()));
        }
        self.rebuild_derived();
        Ok(())
    }

    /// Rebuilds what follows from the key index: the revision-ordered events and the keys
    /// attached to each lease.
    fn rebuild_derived(&mut self) {
        self.rebuild_by_rev();
        self.rebuild_lease_keys();
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        match &self.path {
            Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            None => self
                .index
                .values()
                .flatten()
                .map(|e| {
                    let key = ROW_KEY_BYTES as u64;
                    e.put().map_or(key, |kv| key + kv.encoded_len() as u64)
                })
                .sum(),
        }
    }

    /// The revision of the last change.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The revision up to which history has been compacted (0 when never).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// The opaque "applied up to" record last stored with [`MvccStore::apply_batch`].
    pub fn applied(&self) -> &[u8] {
        &self.applied
    }

    // ---------------------------------------------------------------------------------------
    // reads

    /// Serves a Range at the request's revision (or the current one).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.range_at(req, self.current_rev)
    }

    /// Range where `now` is the newest visible revision (inside a txn that already wrote, it is
    /// the txn's own revision).
    fn range_at(&self, req: &RangeRequest, now: i64) -> Result<RangeResponse, EtcdError> {
        let rev = if req.revision <= 0 { now } else { req.revision };
        if rev > now {
            return Err(EtcdError::FutureRev);
        }
        if rev < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        let has_filters = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let mut sort_order = range_request::SortOrder::try_from(req.sort_order)
            .unwrap_or(range_request::SortOrder::None);
        let sort_target = range_request::SortTarget::try_from(req.sort_target)
            .unwrap_or(range_request::SortTarget::Key);
        // Fetch everything when the result is sorted or filtered; truncate afterwards.
        let fetch_limit = if sort_order != range_request::SortOrder::None || has_filters {
            0
        } else if req.limit > 0 {
            req.limit as usize + 1
        } else {
            0
        };

        let mut count = 0i64;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for (_, kv) in self.visible(&req.key, &req.range_end, rev) {
            count += 1;
            if req.count_only || (fetch_limit > 0 && kvs.len() >= fetch_limit) {
                continue;
            }
            kvs.push(kv.to_kv());
        }
        if req.count_only {
            kvs.clear();
        }
        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }
        if sort_target != range_request::SortTarget::Key
            && sort_order == range_request::SortOrder::None
        {
            sort_order = range_request::SortOrder::Ascend;
        }
        if sort_order != range_request::SortOrder::None {
            use range_request::SortTarget as T;
            let by = |a: &KeyValue, b: &KeyValue| match sort_target {
                T::Key => a.key.cmp(&b.key),
                T::Version => a.version.cmp(&b.version),
                T::Create => a.create_revision.cmp(&b.create_revision),
                T::Mod => a.mod_revision.cmp(&b.mod_revision),
                T::Value => a.value.cmp(&b.value),
            };
            // Stable in both directions: ties stay in key order, as etcd returns them.
            if sort_order == range_request::SortOrder::Descend {
                kvs.sort_by(|a, b| by(b, a));
            } else {
                kvs.sort_by(by);
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: Some(header(now)),
            kvs,
            more,
            count,
        })
    }

    /// The keys visible at `rev` in `[key, range_end)` with etcd's range conventions, in key
    /// order.
    fn visible<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> impl Iterator<Item = (&'a [u8], &'a StoredKv)> + 'a {
        let upper: Option<Bound<&[u8]>> = if range_end.is_empty() {
            Some(Bound::Included(key))
        } else if range_end == [0] {
            Some(Bound::Unbounded)
        } else if range_end <= key {
            None
        } else {
            Some(Bound::Excluded(range_end))
        };
        upper
            .into_iter()
            .flat_map(move |upper| self.index.range::<[u8], _>((Bound::Included(key), upper)))
            .filter_map(move |(k, history)| {
                latest_at(history, rev)
                    .and_then(KeyEvent::put)
                    .map(|kv| (&k[..], kv))
            })
    }

    fn get(&self, key: &[u8], rev: i64) -> Option<&StoredKv> {
        self.index
            .get(key)
            .and_then(|h| latest_at(h, rev))
            .and_then(KeyEvent::put)
    }

    /// A hash of every stored event up to `rev` (0 = current), in key order; equal on replicas
    /// that hold the same history. Returns (hash, compact revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), EtcdError> {
        let rev = if rev <= 0 { self.current_rev } else { rev };
        if rev > self.current_rev {
            return Err(EtcdError::FutureRev);
        }
        if rev < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        type Row<'a> = (i64, i64, &'a [u8], Option<&'a StoredKv>);
        let mut events: Vec<Row> = Vec::new();
        for (k, h) in &self.index {
            for e in h.iter().filter(|e| e.main() <= rev) {
                events.push((e.main(), e.sub.into(), k, e.put()));
            }
        }
        let mut crc = 0u32;
        let mut encoded = Vec::new();
        for (main, sub, key, kv) in events {
            crc = crc32c::crc32c_append(crc, &main.to_le_bytes());
            crc = crc32c::crc32c_append(crc, &sub.to_le_bytes());
            crc = crc32c::crc32c_append(crc, key);
            match kv {
                Some(kv) => {
                    crc = crc32c::crc32c_append(crc, &[FLAG_PUT]);
                    encoded.clear();
                    kv.encode(&mut encoded);
                    crc = crc32c::crc32c_append(crc, &encoded);
                }
                None => crc = crc32c::crc32c_append(crc, &[FLAG_TOMBSTONE]),
            }
        }
        Ok((crc, self.compact_rev))
    }

    /// A full image of the store (every event kept and the revisions), for snapshots.
    pub fn export(&self) -> MvccImage {
        self.export_refs().into_image()
    }

    /// The store's content by reference: cheap to take (shared values are not copied), so a
    /// snapshot holds the store's lock only for this; [`ExportRefs::into_image`] does the
    /// encoding afterwards.
    pub fn export_refs(&self) -> ExportRefs {
        let events = self.index.values().flatten().cloned().collect();
        ExportRefs {
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            events,
            leases: self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect(),
        }
    }

    /// Replaces the whole store with `image` and `applied`, durably.
    pub fn import(&mut self, image: MvccImage, applied: Vec<u8>) -> Result<(), StorageError> {
        // A checkpoint still being written must not land on top of the image.
        self.wait_checkpoints()?;
        // Check the revisions and decode every row first: a bad image changes nothing.
        check_image(&image)?;
        let mut index = BTreeMap::new();
        for (main, sub, row) in &image.events {
            index_row(&mut index, *main, *sub, row)?;
        }
        for history in index.values_mut() {
            history.sort_by_key(|e: &KeyEvent| (e.main(), e.sub));
        }
        if let Some(db) = &self.db {
            let res = (|| -> Result<(), StorageError> {
                let mut w = db.begin_write().map_err(redb::Error::from)?;
                w.set_durability(Durability::Immediate)
                    .map_err(|e| StorageError::Redb(e.to_string()))?;
                w.delete_table(EVENTS).map_err(redb::Error::from)?;
                {
                    // In the table's own order: appending to a B-tree is far cheaper than
                    // inserting all over it.
                    let mut rows: Vec<_> = image.events.iter().collect();
                    rows.sort_unstable_by_key(|(main, sub, _)| (*main, *sub));
                    let mut events = w.open_table(EVENTS).map_err(redb::Error::from)?;
                    for (main, sub, row) in rows {
                        events
                            .insert((*main, *sub), row.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    let mut meta = w.open_table(META).map_err(redb::Error::from)?;
                    meta.insert(META_CURRENT_REV, image.current_rev.to_le_bytes().as_slice())
                        .map_err(redb::Error::from)?;
                    meta.insert(META_COMPACT_REV, image.compact_rev.to_le_bytes().as_slice())
                        .map_err(redb::Error::from)?;
                    meta.insert(META_APPLIED, applied.as_slice())
                        .map_err(redb::Error::from)?;
                }
                w.delete_table(LEASES).map_err(redb::Error::from)?;
                {
                    let mut leases = w.open_table(LEASES).map_err(redb::Error::from)?;
                    for (id, ttl) in &image.leases {
                        leases.insert(*id, *ttl).map_err(redb::Error::from)?;
                    }
                }
                w.commit().map_err(redb::Error::from)?;
                Ok(())
            })();
            if let Err(e) = res {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        }
        // The file now holds exactly the image; the memory copy follows from the rows decoded
        // above rather than from reading them back.
        self.pending = PendingRows::default();
        self.index = index;
        self.leases = image
            .leases
            .iter()
            .map(|(id, ttl)| (*id, lease::Lease::new(*ttl)))
            .collect();
        self.current_rev = image.current_rev;
        self.compact_rev = image.compact_rev;
        self.rebuild_derived();
        // An import is durable on disk (the transaction above), so it must be for a store that
        // models a disk too: otherwise a crash after installing a snapshot would go back to the
        // checkpoint before it, while the log below the snapshot is already purged. The image
        // itself is that durable copy (no export needed).
        if self.db.is_none() && self.models_disk {
            self.durable = Some(Box::new((image, applied.clone())));
        }
        self.applied = applied;
        Ok(())
    }

    /// Brings the store to the image `delta` was cut from (see [`MvccImage::since`]): keeps
    /// its own events up to `base`, takes the delta's above it, then compacts as the sender
    /// did. The store must have reached `base` (it holds a prefix of the same history, so any
    /// events it has above `base` are the delta's too).
    pub fn import_incremental(
        &mut self,
        base: i64,
        delta: MvccImage,
        applied: Vec<u8>,
    ) -> Result<(), StorageError> {
        if self.current_rev < base {
            return Err(StorageError::Corrupt(format!(
                "incremental snapshot from revision {base}, but this store is at {}",
                self.current_rev
            )));
        }
        if self.compact_rev > base {
            return Err(StorageError::Corrupt(format!(
                "incremental snapshot from revision {base}, but this store is compacted at {}",
                self.compact_rev
            )));
        }
        // Everything that could fail once the store is replaced is checked before: a refused
        // increment changes nothing.
        check_image(&delta)?;
        if delta.current_rev < self.current_rev {
            return Err(StorageError::Corrupt(format!(
                "incremental snapshot up to revision {}, but this store is at {}",
                delta.current_rev, self.current_rev
            )));
        }
        let own = self.export();
        let mut events: Vec<_> = own
            .events
            .into_iter()
            .filter(|(main, _, _)| *main as i64 <= base)
            .collect();
        events.extend(
            delta
                .events
                .into_iter()
                .filter(|(main, _, _)| *main as i64 > base),
        );
        // Every own event is at or below `base` and every delta event above it, so each key's
        // events stay in revision order (all that rebuilding the index needs).
        let merged = MvccImage {
            current_rev: delta.current_rev,
            compact_rev: own.compact_rev,
            events,
            leases: delta.leases,
        };
        self.import(merged, applied)?;
        if delta.compact_rev > self.compact_rev {
            self.compact(delta.compact_rev)
                .map_err(|e| StorageError::Corrupt(format!("incremental snapshot: {e}")))?;
            self.checkpoint()?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // writes

    /// Applies `ops` in order as one durable-later batch, storing `applied` (the caller's record of
    /// how far the log has been applied) atomically with it.
    pub fn apply_batch(
        &mut self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteResult, EtcdError>>, StorageError> {
        self.check_failed()?;
        if self.apply_threads > 1 {
            return Ok(self.apply_scheduled(ops));
        }
        Ok(ops.into_iter().map(|op| self.apply_one(op)).collect())
    }

    /// How many threads may work out the reads of independent requests of one batch in
    /// parallel (see [`parallel`]); 1 applies strictly one request after the other.
    pub fn set_apply_threads(&mut self, threads: usize) {
        self.apply_threads = threads.max(1);
    }

    /// Sets the caller's record of how far the log has been applied; the next checkpoint stores
    /// it atomically with the rows.
    pub fn set_applied(&mut self, applied: Vec<u8>) {
        self.applied = applied;
    }

    /// Makes a store held in memory behave like one on disk at a crash: checkpoints keep a copy
    /// of what they made "durable", and [`MvccStore::lose_unsynced`] returns to it. For the
    /// simulator, which must see what a real crash loses.
    pub fn model_disk(&mut self) {
        self.models_disk = true;
    }

    /// What a crash does to the store: everything applied since the last checkpoint is gone. A
    /// store on disk reloads its file; one in memory that models a disk returns to its last
    /// checkpoint; any other store in memory keeps everything.
    pub fn lose_unsynced(&mut self) -> Result<(), StorageError> {
        if self.db.is_none() && !self.models_disk {
            return Ok(());
        }
        // Whatever the file holds once the checkpoints in flight are written is what the
        // crash left (each one is all or nothing).
        if let Some(c) = &self.checkpointer {
            let _ = c.wait();
        }
        // Back to an empty store on the same file and settings, then to what is durable.
        let fresh = Self::empty(self.db.take(), self.path.take());
        let old = std::mem::replace(self, fresh);
        self.apply_threads = old.apply_threads;
        self.models_disk = old.models_disk;
        self.durable = old.durable;
        if self.db.is_some() {
            return self.load();
        }
        match self.durable.clone() {
            Some(d) => {
                let (image, applied) = *d;
                self.import(image, applied)
            }
            None => Ok(()),
        }
    }

    /// Makes everything applied so far durable (one fsync), once the checkpoints sent to the
    /// background are written.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.wait_checkpoints()?;
        let res = self.flush();
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    /// Takes what a checkpoint would write now and writes it on a thread of its own (see
    /// [`checkpoint`]); the store goes on applying meanwhile. A write that fails is reported
    /// by the next write, checkpoint or import, and stops the store as an inline failure does.
    /// While the previous one is still being written nothing is sent: the rows stay pending
    /// and join the next checkpoint, so a slow disk never queues more than one. A store in
    /// memory checkpoints at once.
    pub fn checkpoint_in_background(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        let Some(db) = &self.db else {
            return self.checkpoint();
        };
        if self.checkpoint_busy() {
            return Ok(());
        }
        if self.checkpointer.is_none() {
            self.checkpointer = Some(checkpoint::Checkpointer::start(db.clone())?);
        }
        let job = self.take_checkpoint();
        let res = self.checkpointer.as_ref().map_or(Ok(()), |c| c.send(job));
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    /// Fails once a write failed, here or on the checkpoint thread.
    fn check_failed(&mut self) -> Result<(), StorageError> {
        if self.failed.is_none() {
            self.failed = self.checkpointer.as_ref().and_then(|c| c.error());
        }
        match &self.failed {
            Some(e) => Err(StorageError::Failed(e.clone())),
            None => Ok(()),
        }
    }

    /// Waits until the checkpoints sent to the background are written.
    fn wait_checkpoints(&mut self) -> Result<(), StorageError> {
        if let Some(Err(e)) = self.checkpointer.as_ref().map(|c| c.wait()) {
            self.failed.get_or_insert(e);
        }
        self.check_failed()
    }

    /// The rows changed since the last checkpoint, and the state they bring the file to.
    fn take_checkpoint(&mut self) -> checkpoint::Checkpoint {
        checkpoint::Checkpoint {
            rows: std::mem::take(&mut self.pending),
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            applied: self.applied.clone(),
        }
    }

    /// Whether a checkpoint sent to the background is still being written:
    /// [`MvccStore::checkpoint_in_background`] would send nothing now.
    pub fn checkpoint_busy(&self) -> bool {
        self.checkpointer.as_ref().is_some_and(|c| c.busy())
    }

    /// Number of row changes waiting for the next checkpoint.
    pub fn pending_rows(&self) -> usize {
        self.pending.inserts.len() + self.pending.removes.len() + self.pending.leases.len()
    }

    /// About how many bytes the next checkpoint writes to the events table: each inserted
    /// row with its key, and the key of each removed one (leases, a few bytes each, are left
    /// out). The checkpoint's fsync takes about as long as these bytes take to write, and
    /// the log's fsyncs on the same disk wait behind it.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let job = self.take_checkpoint();
        let Some(db) = &self.db else {
            if self.models_disk {
                self.durable = Some(Box::new((self.export(), self.applied.clone())));
            }
            return Ok(());
        };
        job.write(db)
    }

    fn apply_one(&mut self, op: WriteOp) -> Result<WriteResult, EtcdError> {
        self.apply_prepared(op, parallel::Prepared::Nothing)
    }

    /// Applies `op`, using what the parallel phase already read for it (`pre`), if anything.
    fn apply_prepared(
        &mut self,
        op: WriteOp,
        pre: parallel::Prepared,
    ) -> Result<WriteResult, EtcdError> {
        match op {
            WriteOp::Put(p) => {
                check_put_semantics(self, &p, self.current_rev)?;
                let mut w = TxnWriter::new(self.current_rev);
                let resp = self.put(&mut w, p);
                self.finish(w);
                Ok(WriteResult::Put(resp))
            }
            WriteOp::DeleteRange(d) => {
                let mut w = TxnWriter::new(self.current_rev);
                let victims = match pre {
                    parallel::Prepared::Delete(victims) => Some(victims),
                    _ => None,
                };
                let resp = self.delete_range_with(&mut w, &d, victims);
                self.finish(w);
                Ok(WriteResult::DeleteRange(resp))
            }
            WriteOp::Txn(t) => {
                // Compares of the txn and of every nested txn see the state before the txn.
                let (path, check, mut ranges) = match pre {
                    parallel::Prepared::Txn {
                        path,
                        check,
                        ranges,
                    } => (path, check, ranges),
                    _ => {
                        let path = self.txn_path(&t);
                        let check = self.check_txn_path(&t, &path, 0).map(|_| ());
                        (path, check, VecDeque::new())
                    }
                };
                check?;
                let mut w = TxnWriter::new(self.current_rev);
                let mut at = 0;
                let resp = self.exec_txn(&mut w, &t, &path, &mut at, &mut ranges);
                self.finish(w);
                Ok(WriteResult::Txn(resp))
            }
            WriteOp::Compact(c) => self.compact(c.revision).map(|()| {
                WriteResult::Compact(CompactionResponse {
                    header: Some(header(self.current_rev)),
                })
            }),
            WriteOp::LeaseGrant(g) => self.lease_grant(g).map(WriteResult::LeaseGrant),
            WriteOp::LeaseRevoke(r) => self.lease_revoke(r.id).map(WriteResult::LeaseRevoke),
        }
    }

    fn finish(&mut self, w: TxnWriter) {
        if w.changes > 0 {
            self.current_rev = if planted::active(Bug::TxnAtTwoRevisions) {
                w.begin_rev + w.changes
            } else {
                w.rev()
            };
        }
    }

    fn put(&mut self, w: &mut TxnWriter, p: PutRequest) -> PutResponse {
        let rev = w.rev();
        let visible = w.visible_rev();
        let sub = w.changes;
        w.changes += 1;
        // One walk of the key index for the read of the previous version and the append (a new
        // key takes a second one to insert it).
        let history = self.index.get_mut(p.key.as_slice());
        let prev = history
            .as_deref()
            .and_then(|h| latest_at(h, visible))
            .and_then(KeyEvent::put)
            .cloned();
        let (create_revision, version) = match &prev {
            Some(kv) => (kv.create_revision(), kv.version() + 1),
            None => (rev, 1),
        };
        let value = match (&prev, p.ignore_value) {
            (Some(kv), true) => kv.value(),
            _ => &p.value,
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(kv), true) => kv.lease(),
            _ => p.lease,
        };
        let kv = StoredKv::new(&p.key, value, create_revision, rev, version, lease);
        let event = KeyEvent {
            kv,
            sub: sub as u32,
            is_put: true,
        };
        match history {
            Some(history) => history.push(event.clone()),
            None => {
                self.index
                    .insert(p.key.as_slice().into(), History::One(event.clone()));
            }
        }
        let old_lease = prev.as_ref().map_or(0, |kv| kv.lease());
        if old_lease != lease {
            self.detach(old_lease, &p.key);
            self.attach(lease, &p.key);
        }
        self.queue_event(event);
        PutResponse {
            header: Some(header(rev)),
            prev_kv: if p.prev_kv {
                prev.map(|kv| kv.to_kv())
            } else {
                None
            },
        }
    }

    fn delete_range(&mut self, w: &mut TxnWriter, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        self.delete_range_with(w, d, None)
    }

    /// Deletes what `d` covers: `victims` when the parallel phase already found them.
    fn delete_range_with(
        &mut self,
        w: &mut TxnWriter,
        d: &DeleteRangeRequest,
        victims: Option<Vec<StoredKv>>,
    ) -> DeleteRangeResponse {
        let victims: Vec<StoredKv> = victims.unwrap_or_else(|| {
            self.visible(&d.key, &d.range_end, w.visible_rev())
                .map(|(_, kv)| kv.clone())
                .collect()
        });
        for kv in &victims {
            self.detach(kv.lease(), kv.key());
            self.record_tombstone(w, kv.key());
        }
        let now = if victims.is_empty() {
            w.visible_rev()
        } else {
            w.rev()
        };
        DeleteRangeResponse {
            header: Some(header(now)),
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv {
                victims.iter().map(StoredKv::to_kv).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Appends the deletion of `key` at the writer's revision to the index and the pending rows
    /// (a tombstone holds only the key and the revision).
    fn record_tombstone(&mut self, w: &mut TxnWriter, key: &[u8]) {
        // The revision before counting this change (under the planted bug
        // `txn-at-two-revisions` it depends on the count).
        let mod_revision = w.rev();
        let sub = w.changes;
        w.changes += 1;
        let event = KeyEvent {
            kv: StoredKv::tombstone(key, mod_revision),
            sub: sub as u32,
            is_put: false,
        };
        match self.index.get_mut(key) {
            Some(history) => history.push(event.clone()),
            None => {
                self.index.insert(key.into(), History::One(event.clone()));
            }
        }
        self.queue_event(event);
    }

    /// Queues an event just added to the key index for watchers and, on disk, for the next
    /// checkpoint.
    fn queue_event(&mut self, event: KeyEvent) {
        if self.db.is_some() {
            self.pending.bytes += event.row_len();
            self.pending.inserts.push(event.clone());
        }
        self.by_rev.push_back(event);
    }

    /// Evaluates the compares of `t` and of the nested txns on the branches taken, against the
    /// state before the txn. Result: one bool per txn in depth-first order.
    fn txn_path(&self, t: &TxnRequest) -> Vec<bool> {
        let mut path = Vec::new();
        self.txn_path_into(t, &mut path);
        path
    }

    fn txn_path_into(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        let branch = if ok { &t.success } else { &t.failure };
        for op in branch {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.txn_path_into(inner, path);
            }
        }
    }

    /// Checks the puts on the chosen path (ignore_value / ignore_lease need an existing key) so
    /// that a failing txn changes nothing.
    fn check_txn_path(&self, t: &TxnRequest, path: &[bool], at: usize) -> Result<usize, EtcdError> {
        let branch = if path[at] { &t.success } else { &t.failure };
        let mut next = at + 1;
        for op in branch {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    check_put_semantics(self, p, self.current_rev)?
                }
                Some(request_op::Request::RequestRange(r)) => {
                    // A read of a compacted or future revision fails the whole txn.
                    if r.revision > self.current_rev {
                        return Err(EtcdError::FutureRev);
                    }
                    if r.revision > 0 && r.revision < self.compact_rev {
                        return Err(EtcdError::Compacted);
                    }
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    next = self.check_txn_path(inner, path, next)?;
                }
                _ => {}
            }
        }
        Ok(next)
    }

    /// Executes the branches `path` chose. `ranges` holds the answers of the txn's first reads
    /// when the parallel phase worked them out (their header is set here).
    fn exec_txn(
        &mut self,
        w: &mut TxnWriter,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        ranges: &mut VecDeque<RangeResponse>,
    ) -> TxnResponse {
        let succeeded = path[*at];
        *at += 1;
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let resp = match ranges.pop_front() {
                        Some(mut resp) => {
                            resp.header = Some(header(w.visible_rev()));
                            resp
                        }
                        None => self.txn_range(r, w.visible_rev()),
                    };
                    Some(response_op::Response::ResponseRange(resp))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(self.put(w, p.clone())))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => Some(
                    response_op::Response::ResponseDeleteRange(self.delete_range(w, d)),
                ),
                Some(request_op::Request::RequestTxn(inner)) => Some(
                    response_op::Response::ResponseTxn(self.exec_txn(w, inner, path, at, ranges)),
                ),
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse {
            header: Some(header(w.visible_rev())),
            succeeded,
            responses,
        }
    }

    /// A range inside a txn: a read that fails (compacted, future) answers empty, as in etcd.
    fn txn_range(&self, r: &RangeRequest, now: i64) -> RangeResponse {
        self.range_at(r, now).unwrap_or_else(|_| RangeResponse {
            header: Some(header(now)),
            ..Default::default()
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let target = T::try_from(c.target).unwrap_or(T::Version);
        let kvs: Vec<&StoredKv> = self
            .visible(&c.key, &c.range_end, self.current_rev)
            .map(|(_, kv)| kv)
            .collect();
        // Made only for a missing key: a compare runs for every txn on the write path.
        let empty;
        let kvs = if kvs.is_empty() {
            if target == T::Value {
                // A missing key has no value to compare; etcd fails such a compare.
                return false;
            }
            empty = StoredKv::new(&[], &[], 0, 0, 0, 0);
            vec![&empty]
        } else {
            kvs
        };
        let result = R::try_from(c.result).unwrap_or(R::Equal);
        kvs.iter().all(|kv| {
            let ord = match target {
                T::Value => {
                    let want: &[u8] = match &c.target_union {
                        Some(U::Value(v)) => v,
                        _ => &[],
                    };
                    kv.value().cmp(want)
                }
                T::Version => kv.version().cmp(&union_i64(&c.target_union, T::Version)),
                T::Create => kv
                    .create_revision()
                    .cmp(&union_i64(&c.target_union, T::Create)),
                T::Mod => kv.mod_revision().cmp(&union_i64(&c.target_union, T::Mod)),
                T::Lease => kv.lease().cmp(&union_i64(&c.target_union, T::Lease)),
            };
            match result {
                R::Equal => ord.is_eq(),
                R::NotEqual => ord.is_ne(),
                R::Greater => ord.is_gt(),
                R::Less => ord.is_lt(),
            }
        })
    }

    fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if rev > self.current_rev {
            return Err(EtcdError::FutureRev);
        }
        let mut emptied = Vec::new();
        for (key, history) in self.index.iter_mut() {
            // Keep the newest event at or below `rev` if it is a put, or a delete at `rev` itself
            // (a watch may start at the compaction revision); drop everything older.
            let upto = history.partition_point(|e| e.main() <= rev);
            if upto == 0 {
                continue;
            }
            let newest = &history[upto - 1];
            let keep_newest = newest.is_put || newest.main() == rev;
            let drop_n = if keep_newest { upto - 1 } else { upto };
            let pending = &mut self.pending;
            let on_disk = self.db.is_some();
            let now_empty = history.remove_oldest(drop_n, |e| {
                if on_disk {
                    pending.removes.push((e.main() as u64, e.sub.into()));
                    pending.bytes += ROW_KEY_BYTES;
                }
            });
            if now_empty {
                emptied.push(key.clone());
            }
        }
        for k in emptied {
            self.index.remove(&k);
        }
        while self.by_rev.front().is_some_and(|e| e.main() < rev) {
            self.by_rev.pop_front();
        }
        self.compact_rev = rev;
        Ok(())
    }
}

/// Tracks the revision a write (or a txn's writes) will take.
struct TxnWriter {
    begin_rev: i64,
    changes: i64,
}

impl TxnWriter {
    fn new(begin_rev: i64) -> TxnWriter {
        TxnWriter {
            begin_rev,
            changes: 0,
        }
    }

    /// The revision this txn's writes get.
    fn rev(&self) -> i64 {
        if planted::active(Bug::TxnAtTwoRevisions) {
            return self.begin_rev + 1 + self.changes;
        }
        self.begin_rev + 1
    }

    /// The newest revision reads inside the txn see: its own writes once it made any.
    fn visible_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }
}

/// The revisions of an image hold together: compaction at or below the current revision, every
/// event at a revision from 1 to the current one.
fn check_image(image: &MvccImage) -> Result<(), StorageError> {
    if image.compact_rev < 0 || image.compact_rev > image.current_rev {
        return Err(StorageError::Corrupt(format!(
            "snapshot image compacted at revision {} with current revision {}",
            image.compact_rev, image.current_rev
        )));
    }
    if let Some((main, sub, _)) = image
        .events
        .iter()
        .find(|(main, _, _)| *main == 0 || *main > image.current_rev as u64)
    {
        return Err(StorageError::Corrupt(format!(
            "snapshot image event at revision {main}.{sub}, outside 1..={}",
            image.current_rev
        )));
    }
    Ok(())
}

/// Adds one stored row to the key index.
fn index_row(
    index: &mut BTreeMap<Box<[u8]>, History>,
    main: u64,
    sub: u64,
    raw: &[u8],
) -> Result<(), StorageError> {
    let (flag, body) = raw
        .split_first()
        .ok_or_else(|| StorageError::Corrupt(format!("empty event row at {main}.{sub}")))?;
    let corrupt = |why: String| StorageError::Corrupt(format!("event row {main}.{sub}: {why}"));
    let kv = KeyValue::decode(body).map_err(|e| corrupt(e.to_string()))?;
    let is_put = match *flag {
        FLAG_PUT => true,
        FLAG_TOMBSTONE => false,
        f => return Err(corrupt(format!("flag {f}"))),
    };
    let sub = u32::try_from(sub).map_err(|_| corrupt("sub-revision out of range".into()))?;
    if kv.key.len() > MAX_PART_LEN || kv.value.len() > MAX_PART_LEN {
        return Err(corrupt("key or value of 4 GiB or more".into()));
    }
    let stored = if !is_put {
        // A tombstone is its key and revision (as `record_tombstone` makes it), whatever else
        // a row held.
        StoredKv::tombstone(&kv.key, main as i64)
    } else if kv.mod_revision as u64 != main {
        return Err(corrupt(format!("holds mod_revision {}", kv.mod_revision)));
    } else {
        StoredKv::from_kv(&kv)
    };
    let event = KeyEvent {
        kv: stored,
        sub,
        is_put,
    };
    match index.entry(kv.key.into_boxed_slice()) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(History::One(event));
        }
        std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().push(event),
    }
    Ok(())
}

fn latest_at(history: &[KeyEvent], rev: i64) -> Option<&KeyEvent> {
    let n = history.partition_point(|e| e.main() <= rev);
    n.checked_sub(1).map(|i| &history[i])
}

fn union_i64(u: &Option<compare::TargetUnion>, target: compare::CompareTarget) -> i64 {
    use compare::{CompareTarget as T, TargetUnion as U};
    match (u, target) {
        (Some(U::Version(v)), T::Version)
        | (Some(U::CreateRevision(v)), T::Create)
        | (Some(U::ModRevision(v)), T::Mod)
        | (Some(U::Lease(v)), T::Lease) => *v,
        _ => 0,
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

fn decode_i64(raw: &[u8]) -> Result<i64, StorageError> {
    let arr: [u8; 8] = raw
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("meta integer of {} bytes", raw.len())))?;
    Ok(i64::from_le_bytes(arr))
}

fn check_put_semantics(store: &MvccStore, p: &PutRequest, rev: i64) -> Result<(), EtcdError> {
    // Far above any request the API lets through; only an embedded caller gets here.
    if p.key.len() > MAX_PART_LEN || p.value.len() > MAX_PART_LEN {
        return Err(EtcdError::RequestTooLarge);
    }
    if (p.ignore_value || p.ignore_lease) && store.get(&p.key, rev).is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    if !p.ignore_lease && p.lease != 0 && !store.leases.contains_key(&p.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// request validation at the edge, before anything is proposed

/// Checks a Range as etcd's gRPC layer does.
pub fn validate_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a Put as etcd's gRPC layer does.
pub fn validate_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange as etcd's gRPC layer does.
pub fn validate_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn as etcd's gRPC layer does: op counts, keys present, no key written twice in a
/// branch.
pub fn validate_txn(t: &TxnRequest) -> Result<(), EtcdError> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(EtcdError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => validate_range(r)?,
            Some(request_op::Request::RequestPut(p)) => validate_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => validate_delete(d)?,
            Some(request_op::Request::RequestTxn(inner)) => validate_txn(inner)?,
            None => {}
        }
    }
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

/// Keys written by a branch: puts, and delete ranges (key, range_end).
#[derive(Default)]
struct BranchWrites {
    puts: HashSet<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

fn branch_writes(ops: &[RequestOp]) -> Result<BranchWrites, EtcdError> {
    let mut w = BranchWrites::default();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) if !w.puts.insert(p.key.clone()) => {
                return Err(EtcdError::DuplicateKey);
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                w.deletes.push((d.key.clone(), d.range_end.clone()))
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                // A nested txn takes one of its branches; either may collide with this level.
                let mut nested_puts = HashSet::new();
                for b in [&inner.success, &inner.failure] {
                    let nw = branch_writes(b)?;
                    nested_puts.extend(nw.puts);
                    w.deletes.extend(nw.deletes);
                }
                for k in nested_puts {
                    if !w.puts.insert(k) {
                        return Err(EtcdError::DuplicateKey);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(w)
}

fn check_intervals(ops: &[RequestOp]) -> Result<(), EtcdError> {
    let w = branch_writes(ops)?;
    for (key, end) in &w.deletes {
        for p in &w.puts {
            let inside = if end.is_empty() {
                p == key
            } else if end.as_slice() == [0] {
                p >= key
            } else {
                p >= key && p < end
            };
            if inside {
                return Err(EtcdError::DuplicateKey);
            }
        }
    }
    Ok(())
}

#[path = "mvcc_checkpoint.rs"]
mod checkpoint;
#[path = "mvcc_events.rs"]
mod events;
#[path = "mvcc_faults.rs"]
mod faults;
#[path = "mvcc_history.rs"]
mod history;
use history::History;
#[path = "mvcc_lease.rs"]
mod lease;
#[path = "mvcc_parallel.rs"]
pub mod parallel;

pub use events::WatchBatch;

#[cfg(test)]
#[path = "mvcc_parallel_test.rs"]
mod mvcc_parallel_test;
#[cfg(test)]
#[path = "mvcc_test.rs"]
mod mvcc_test;
