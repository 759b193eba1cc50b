//! One revision of one key as the store keeps it in memory: a single shared allocation.
//!
//! The key index, the revision-ordered queue for watchers, the rows waiting for a checkpoint
//! and snapshots in progress all share a revision. As an `Arc<KeyValue>` a revision took three
//! allocations (the `Arc` with the 80-byte struct, the key's and the value's buffers); a
//! [`StoredKv`] is one: a 48-byte header (reference count, the four revision fields, the two
//! lengths) followed by the key's and the value's bytes. After a million puts of 8-byte keys
//! and 256-byte values that is 312 bytes a revision instead of 360, and allocators round fewer
//! sizes up (see "Memory after 1M keys" in docs/BENCHMARKS.md).
//!
//! A `StoredKv` never changes after it is made, so sharing it across threads needs nothing but
//! the atomic count. Keys and values are limited to `u32::MAX` bytes each; the store refuses
//! larger ones before making a revision (see `MvccStore`'s put checks).

use c20_api::mvccpb::KeyValue;
use prost::encoding::{self, WireType};
use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicUsize, Ordering};

/// The fixed part, at the start of the allocation; the key's bytes and then the value's follow.
#[repr(C)]
struct Header {
    refs: AtomicUsize,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    key_len: u32,
    value_len: u32,
}

const HEADER: usize = std::mem::size_of::<Header>();

/// A shared, immutable key-value revision (see the module documentation).
pub struct StoredKv {
    ptr: NonNull<Header>,
}

// SAFETY: the header and the bytes are written once, before the `StoredKv` exists, and only
// read afterwards; the reference count is atomic. Sharing or sending one is as safe as sharing
// or sending an `Arc<[u8]>`.
unsafe impl Send for StoredKv {}
unsafe impl Sync for StoredKv {}

/// The largest key or value a [`StoredKv`] holds.
pub const MAX_PART_LEN: usize = u32::MAX as usize;

impl StoredKv {
    /// A revision of `key` holding `value`.
    ///
    /// # Panics
    /// When the key or the value is longer than [`MAX_PART_LEN`]; the store checks that first.
    pub fn new(
        key: &[u8],
        value: &[u8],
        create_revision: i64,
        mod_revision: i64,
        version: i64,
        lease: i64,
    ) -> StoredKv {
        let key_len = u32::try_from(key.len()).expect("keys are checked against MAX_PART_LEN");
        let value_len =
            u32::try_from(value.len()).expect("values are checked against MAX_PART_LEN");
        let layout = layout(key.len(), value.len());
        // SAFETY: `layout` has a non-zero size (at least the header). The header is written in
        // place before anything reads it, and the two copies land inside the allocation: the
        // key right after the header, the value right after the key.
        unsafe {
            let raw = alloc::alloc(layout).cast::<Header>();
            let Some(ptr) = NonNull::new(raw) else {
                alloc::handle_alloc_error(layout)
            };
            raw.write(Header {
                refs: AtomicUsize::new(1),
                create_revision,
                mod_revision,
                version,
                lease,
                key_len,
                value_len,
            });
            let bytes = raw.cast::<u8>().add(HEADER);
            std::ptr::copy_nonoverlapping(key.as_ptr(), bytes, key.len());
            std::ptr::copy_nonoverlapping(value.as_ptr(), bytes.add(key.len()), value.len());
            StoredKv { ptr }
        }
    }

    /// The deletion of `key` at `mod_revision`: the key and the revision, nothing else.
    pub fn tombstone(key: &[u8], mod_revision: i64) -> StoredKv {
        StoredKv::new(key, &[], 0, mod_revision, 0, 0)
    }

    /// The same revision as `kv`.
    pub fn from_kv(kv: &KeyValue) -> StoredKv {
        StoredKv::new(
            &kv.key,
            &kv.value,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease,
        )
    }

    fn header(&self) -> &Header {
        // SAFETY: the header was written when the allocation was made and lives as long as
        // any `StoredKv` pointing at it.
        unsafe { self.ptr.as_ref() }
    }

    /// The key's and the value's bytes, back to back.
    fn bytes(&self) -> &[u8] {
        let h = self.header();
        let len = h.key_len as usize + h.value_len as usize;
        // SAFETY: `len` bytes follow the header in the same allocation, all written by `new`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(HEADER), len) }
    }

    pub fn key(&self) -> &[u8] {
        &self.bytes()[..self.header().key_len as usize]
    }

    pub fn value(&self) -> &[u8] {
        &self.bytes()[self.header().key_len as usize..]
    }

    pub fn create_revision(&self) -> i64 {
        self.header().create_revision
    }

    pub fn mod_revision(&self) -> i64 {
        self.header().mod_revision
    }

    pub fn version(&self) -> i64 {
        self.header().version
    }

    pub fn lease(&self) -> i64 {
        self.header().lease
    }

    /// A copy as the API's `KeyValue`.
    pub fn to_kv(&self) -> KeyValue {
        KeyValue {
            key: self.key().to_vec(),
            create_revision: self.create_revision(),
            mod_revision: self.mod_revision(),
            version: self.version(),
            value: self.value().to_vec(),
            lease: self.lease(),
        }
    }

    /// The length of [`StoredKv::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let bytes_len = |tag: u32, b: &[u8]| {
            if b.is_empty() {
                0
            } else {
                encoding::key_len(tag) + encoding::encoded_len_varint(b.len() as u64) + b.len()
            }
        };
        let int_len = |tag: u32, v: i64| {
            if v == 0 {
                0
            } else {
                encoding::int64::encoded_len(tag, &v)
            }
        };
        bytes_len(1, self.key())
            + int_len(2, self.create_revision())
            + int_len(3, self.mod_revision())
            + int_len(4, self.version())
            + bytes_len(5, self.value())
            + int_len(6, self.lease())
    }

    /// Appends the protobuf encoding of [`StoredKv::to_kv`] (the same bytes, field by field and
    /// defaults left out as prost does) without making the copy.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        fn bytes_field(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
            if !b.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, buf);
                encoding::encode_varint(b.len() as u64, buf);
                buf.extend_from_slice(b);
            }
        }
        fn int_field(tag: u32, v: i64, buf: &mut Vec<u8>) {
            if v != 0 {
                encoding::int64::encode(tag, &v, buf);
            }
        }
        buf.reserve(self.encoded_len());
        bytes_field(1, self.key(), buf);
        int_field(2, self.create_revision(), buf);
        int_field(3, self.mod_revision(), buf);
        int_field(4, self.version(), buf);
        bytes_field(5, self.value(), buf);
        int_field(6, self.lease(), buf);
    }
}

/// The allocation of a revision with these lengths.
fn layout(key_len: usize, value_len: usize) -> Layout {
    let size = HEADER
        .checked_add(key_len)
        .and_then(|s| s.checked_add(value_len))
        .expect("the lengths are below u32::MAX each");
    Layout::from_size_align(size, std::mem::align_of::<Header>()).expect("a valid layout")
}

impl Clone for StoredKv {
    fn clone(&self) -> StoredKv {
        // Relaxed, as `Arc` does: a new reference is made from an existing one, which already
        // keeps the allocation alive.
        let before = self.header().refs.fetch_add(1, Ordering::Relaxed);
        if before > isize::MAX as usize {
            // Only reachable by leaking references on purpose; as `Arc`, stop rather than wrap.
            std::process::abort();
        }
        StoredKv { ptr: self.ptr }
    }
}

impl Drop for StoredKv {
    fn drop(&mut self) {
        if self.header().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other owner's use of the bytes happens before the free (pairs with the Release
        // decrements above).
        atomic::fence(Ordering::Acquire);
        let h = self.header();
        let layout = layout(h.key_len as usize, h.value_len as usize);
        // SAFETY: this was the last reference; the allocation was made with this layout and the
        // header needs no drop of its own (atomics and integers).
        unsafe { alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), layout) }
    }
}

impl std::fmt::Debug for StoredKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKv")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("create_revision", &self.create_revision())
            .field("mod_revision", &self.mod_revision())
            .field("version", &self.version())
            .field("value_len", &self.value().len())
            .field("lease", &self.lease())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample(key: &[u8], value: &[u8], nums: [i64; 4]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: nums[0],
            mod_revision: nums[1],
            version: nums[2],
            value: value.to_vec(),
            lease: nums[3],
        }
    }

    #[test]
    fn a_stored_revision_gives_back_what_it_was_made_of() {
        let kv = sample(b"key", b"some value", [2, 7, 3, 0x1234]);
        let s = StoredKv::from_kv(&kv);
        assert_eq!(s.key(), b"key");
        assert_eq!(s.value(), b"some value");
        assert_eq!(
            (
                s.create_revision(),
                s.mod_revision(),
                s.version(),
                s.lease()
            ),
            (2, 7, 3, 0x1234)
        );
        assert_eq!(s.to_kv(), kv);
        let t = StoredKv::tombstone(b"gone", 9);
        assert_eq!(
            t.to_kv(),
            KeyValue {
                key: b"gone".to_vec(),
                mod_revision: 9,
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_encoding_is_byte_for_byte_prosts() {
        let big = vec![7u8; 300];
        let cases = [
            sample(b"", b"", [0, 0, 0, 0]),
            sample(b"k", b"", [0, 5, 0, 0]),
            sample(b"k", b"v", [1, 1, 1, 0]),
            sample(&big, &big, [i64::MAX, 1 << 40, 128, -1]),
            sample(b"\x00\xff", &big[..128], [-5, 127, 16_384, i64::MIN]),
        ];
        for kv in cases {
            let s = StoredKv::from_kv(&kv);
            let mut ours = vec![0xAA];
            s.encode(&mut ours);
            assert_eq!(&ours[1..], kv.encode_to_vec().as_slice(), "{kv:?}");
            assert_eq!(s.encoded_len(), kv.encoded_len(), "{kv:?}");
            assert_eq!(KeyValue::decode(&ours[1..]).unwrap(), kv);
        }
    }

    #[test]
    fn clones_share_one_revision_across_threads_and_the_last_drop_frees_it() {
        let s = StoredKv::new(b"shared", &[1u8; 1000], 1, 2, 3, 4);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mine = s.clone();
                std::thread::spawn(move || {
                    let copies: Vec<StoredKv> = (0..1000).map(|_| mine.clone()).collect();
                    copies
                        .iter()
                        .all(|c| c.value() == [1u8; 1000] && c.key() == b"shared")
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(s.header().refs.load(Ordering::Relaxed), 1);
        assert_eq!(s.to_kv().lease, 4);
    }

    #[test]
    fn a_revision_takes_one_allocation_of_header_key_and_value() {
        assert_eq!(HEADER, 48);
        assert_eq!(std::mem::size_of::<StoredKv>(), 8);
        assert_eq!(std::mem::size_of::<Option<StoredKv>>(), 8);
        assert_eq!(layout(8, 256).size(), 312);
    }
}
