//! Reads of etcd that stay bounded whatever others wrote: a value longer than
//! [`MAX_VALUE`] is never used and never held whole.
//!
//! Anyone with write access to a prefix can put a value of etcd's request limit there
//! (1.5 MiB by default, up to `--max-request-bytes`). The client decodes gRPC messages of
//! at most 4 MiB (tonic's default, kept on purpose): a range read whose answer is larger
//! fails as a whole with `OutOfRange` before anything is buffered. [`read_prefix`] then
//! reads the keys alone and each value on its own at the same revision, so one oversized
//! value costs its own key and not the whole prefix. Values that did arrive but are longer
//! than [`MAX_VALUE`] (no record field comes near it) are dropped the same way. The
//! caller logs each dropped key once ([`Oversized`]'s `Display` quotes the key short).

use etcd_client::{GetOptions, KeyValue, KvClient};

/// The longest value a binary uses: a record's field is a few bytes, a JSON record some
/// hundreds; 64 KiB is far past any of them.
pub const MAX_VALUE: usize = 64 << 10;

/// How many bytes of a key a message quotes.
const QUOTED_KEY: usize = 120;

/// A key whose value was not used because it is too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// The key, as stored (not necessarily UTF-8).
    pub key: Vec<u8>,
    /// The value's length when it arrived; `None` when it was larger than the client
    /// accepts (4 MiB) and was never read.
    pub len: Option<usize>,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.len {
            Some(n) => write!(
                f,
                "the value of {} is {n} bytes, over the {MAX_VALUE}-byte limit: ignored",
                quote_key(&self.key)
            ),
            None => write!(
                f,
                "the value of {} is over the 4 MiB the client reads (and the {MAX_VALUE}-byte limit): ignored",
                quote_key(&self.key)
            ),
        }
    }
}

/// `key` for a message: escaped (NUL, bytes that are not UTF-8, control characters) and
/// cut after [`QUOTED_KEY`] bytes.
#[must_use]
pub fn quote_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(QUOTED_KEY)];
    let more = if key.len() > QUOTED_KEY { "…" } else { "" };
    format!("\"{}\"{more}", cut.escape_ascii())
}

/// What [`read_prefix`] got.
#[derive(Debug, Default)]
pub struct PrefixRead {
    /// The keys and values used, in key order.
    pub kvs: Vec<KeyValue>,
    /// The keys whose values were too long.
    pub oversized: Vec<Oversized>,
    /// The revision of the read.
    pub revision: i64,
}

/// Whether `e` is the client refusing an answer over its message size (4 MiB).
#[must_use]
pub fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
}

/// Reads every key under `prefix` (`with_prefix`), values bounded as the module says.
///
/// # Errors
/// The etcd error of the read (other than an answer too large, which is handled).
pub async fn read_prefix(kv: &mut KvClient, prefix: &[u8]) -> Result<PrefixRead, etcd_client::Error> {
    match kv.get(prefix, Some(GetOptions::new().with_prefix())).await {
        Ok(mut resp) => {
            let revision = resp.header().map_or(0, |h| h.revision());
            let mut out = PrefixRead {
                revision,
                ..PrefixRead::default()
            };
            for kv in resp.take_kvs() {
                keep(&mut out, kv);
            }
            Ok(out)
        }
        Err(e) if too_large(&e) => read_one_by_one(kv, prefix).await,
        Err(e) => Err(e),
    }
}

fn keep(out: &mut PrefixRead, kv: KeyValue) {
    if kv.value().len() > MAX_VALUE {
        out.oversized.push(Oversized {
            key: kv.key().to_vec(),
            len: Some(kv.value().len()),
        });
    } else {
        out.kvs.push(kv);
    }
}

/// The keys alone, then each value at the revision of that read.
async fn read_one_by_one(kv: &mut KvClient, prefix: &[u8]) -> Result<PrefixRead, etcd_client::Error> {
    let keys = kv
        .get(prefix, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    let revision = keys.header().map_or(0, |h| h.revision());
    let mut out = PrefixRead {
        revision,
        ..PrefixRead::default()
    };
    for k in keys.kvs() {
        match kv.get(k.key(), Some(GetOptions::new().with_revision(revision))).await {
            Ok(mut one) => {
                for kv in one.take_kvs() {
                    keep(&mut out, kv);
                }
            }
            Err(e) if too_large(&e) => out.oversized.push(Oversized {
                key: k.key().to_vec(),
                len: None,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_escaped_and_short() {
        assert_eq!(quote_key(b"/services/web/a"), "\"/services/web/a\"");
        assert_eq!(quote_key(b"/s/\0/\xff../x"), "\"/s/\\x00/\\xff../x\"");
        let long = vec![b'k'; 10_000];
        let q = quote_key(&long);
        assert!(q.len() < 130 && q.ends_with('…'), "{q}");
        let o = Oversized {
            key: b"/services/web/big".to_vec(),
            len: Some(10_000_000),
        };
        assert_eq!(
            o.to_string(),
            "the value of \"/services/web/big\" is 10000000 bytes, over the 65536-byte limit: ignored"
        );
    }
}
