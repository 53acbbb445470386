//! A service's configuration from xenstore: one directory, written by dom0
//! with the stock tools (`xenstore-write`, `xenstore-rm`), watched by the
//! runtime and read whole, in one transaction, each time it changes. The
//! service gets a [`Snapshot`] (paths relative to the directory, raw
//! values) and interprets it; nothing here knows what the keys mean.
//!
//! The read is bounded ([`MAX_NODES`], [`MAX_DEPTH`]): a directory beyond
//! that is an error, and the service keeps its previous configuration.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen::xenstore::{Transaction, XenStore, XsError, XsTransport};

/// Most nodes read from a configuration directory.
pub const MAX_NODES: usize = 4096;
/// Deepest level read below the directory.
pub const MAX_DEPTH: usize = 4;

/// A configuration directory as read: every node below it (not the
/// directory itself), by its path relative to the directory
/// (`a/b/c`), with its value (empty for pure directories).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The nodes.
    pub nodes: BTreeMap<String, Vec<u8>>,
}

/// A service's configuration may hold secrets (the VPN VM's wg-quick file
/// and its private key): the values are zeroed when a snapshot is dropped.
impl Drop for Snapshot {
    fn drop(&mut self) {
        for v in self.nodes.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

impl Snapshot {
    /// The value of `key` (relative path), if the node exists.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.nodes.get(key).map(Vec::as_slice)
    }

    /// The names of the children of `dir` (relative path; `""` for the
    /// top), in order.
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes.keys().filter_map(move |k| {
            let rest = k.strip_prefix(prefix.as_str())?;
            (!rest.is_empty() && !rest.contains('/')).then_some(rest)
        })
    }
}

/// What changed since the last [`Snapshot`]: the nodes the watch reported,
/// relative to the directory, in the order written. A service that follows
/// a write protocol (QubesDB's "the rules of a client are reloaded when
/// `/qubes-firewall/<ip>` itself is written") needs the written nodes, not
/// a difference of values: dom0 rewriting a node with the same value is
/// still a signal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Nodes written or removed (relative paths; `a/b`).
    pub paths: Vec<String>,
    /// The directory itself was written, removed or first read, or more
    /// than [`MAX_CHANGED`] nodes changed at once: treat everything as
    /// changed.
    pub all: bool,
}

/// Most changed paths kept between two reads; more set [`Changed::all`].
pub const MAX_CHANGED: usize = 256;

impl Changed {
    /// Record a watch event's `path` for the directory `dir` (as given to
    /// the watch; the event path may be relative or absolute).
    pub fn add(&mut self, dir: &str, path: &str) {
        if self.all {
            return;
        }
        let dir = dir.trim_end_matches('/');
        let rel = match path.find(dir) {
            Some(at) if at == 0 || path.as_bytes().get(at - 1) == Some(&b'/') => {
                &path[at + dir.len()..]
            }
            _ => {
                self.all = true;
                return;
            }
        };
        if rel.is_empty() {
            self.all = true;
            return;
        }
        let Some(rel) = rel.strip_prefix('/') else {
            // `dirx/...`: not ours
            return;
        };
        if self.paths.len() == MAX_CHANGED {
            self.all = true;
            self.paths.clear();
            return;
        }
        self.paths.push(String::from(rel));
    }

    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }
}

/// Why a configuration directory could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// xenstore said no.
    Xs(XsError),
    /// More than [`MAX_NODES`] nodes.
    TooManyNodes,
}

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReadError::Xs(e) => write!(f, "{e}"),
            ReadError::TooManyNodes => write!(f, "more than {MAX_NODES} nodes"),
        }
    }
}

async fn walk<T: XsTransport>(
    tx: &mut Transaction<'_, T>,
    root: &str,
    nodes: &mut BTreeMap<String, Vec<u8>>,
) -> Result<bool, XsError> {
    // (relative path, depth) still to list
    let mut todo: Vec<(String, usize)> = alloc::vec![(String::new(), 0)];
    while let Some((rel, depth)) = todo.pop() {
        let abs = if rel.is_empty() {
            String::from(root)
        } else {
            format!("{root}/{rel}")
        };
        let children = match tx.directory(&abs).await {
            Ok(c) => c,
            // removed meanwhile (outside a transaction), or never written
            Err(XsError::Enoent) => continue,
            Err(e) => return Err(e),
        };
        for child in children {
            let child_rel = if rel.is_empty() {
                child
            } else {
                format!("{rel}/{child}")
            };
            let value = match tx.read(&format!("{root}/{child_rel}")).await {
                Ok(v) => v,
                Err(XsError::Enoent) => continue,
                Err(e) => return Err(e),
            };
            if nodes.len() == MAX_NODES {
                return Ok(false);
            }
            if depth + 1 < MAX_DEPTH {
                todo.push((child_rel.clone(), depth + 1));
            }
            nodes.insert(child_rel, value);
        }
    }
    Ok(true)
}

/// Read everything below `root` in one transaction (a writer using one
/// `xenstore-write` with several keys, which is one transaction, is seen
/// all or nothing). A missing `root` is an empty snapshot.
pub async fn read<T: XsTransport>(xs: &mut XenStore<T>, root: &str) -> Result<Snapshot, ReadError> {
    let result = xs
        .transaction(async |tx| {
            let mut nodes = BTreeMap::new();
            let complete = walk(tx, root, &mut nodes).await?;
            Ok((complete, nodes))
        })
        .await;
    match result {
        Ok((true, nodes)) => Ok(Snapshot { nodes }),
        Ok((false, _)) => Err(ReadError::TooManyNodes),
        Err(e) => Err(ReadError::Xs(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_paths_are_relative_and_bounded() {
        let mut c = Changed::default();
        c.add("qubesdb", "qubesdb/qubes-firewall/10-137-0-10");
        c.add("qubesdb", "/local/domain/7/qubesdb/qubes-ip");
        c.add("qubesdb", "/local/domain/7/qubesdbx/qubes-ip");
        assert_eq!(c.paths, ["qubes-firewall/10-137-0-10", "qubes-ip"]);
        assert!(!c.all);
        c.add("qubesdb", "/local/domain/7/qubesdb");
        assert!(c.all);
        let mut d = Changed::default();
        for i in 0..=MAX_CHANGED {
            d.add("/x/dir", &format!("/x/dir/k{i}"));
        }
        assert!(d.all && d.paths.is_empty());
    }

    #[test]
    fn children_are_direct_only() {
        let mut s = Snapshot::default();
        for k in ["a", "a/b", "a/b/c", "a/d", "e"] {
            s.nodes.insert(String::from(k), Vec::new());
        }
        assert_eq!(s.children("").collect::<Vec<_>>(), ["a", "e"]);
        assert_eq!(s.children("a").collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(s.children("a/b").collect::<Vec<_>>(), ["c"]);
        assert_eq!(s.children("x").count(), 0);
        assert_eq!(s.get("a/d"), Some(&[][..]));
    }
}
