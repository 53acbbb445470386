//! The server's behaviour through its byte interface, as domains see it.

mod common;

use common::{ev, strs, H};
use xen::abi::xs_wire::XsdSockmsgType as T;
use xenstored::conn::message;
use xenstored::{Config, ConnError, Quotas};

fn e(name: &str) -> Result<(), String> {
    Err(name.into())
}

/// dom0 sets up a domain's home as the toolstack does: owned by the
/// domain, readable by dom0 only.
fn home(h: &mut H, d: u16) {
    let p = format!("/local/domain/{d}");
    h.mkdir(0, &p).unwrap();
    h.set_perms(0, &p, &format!("n{d}")).unwrap();
    h.intro(d);
}

#[test]
fn read_write_mkdir_rm_directory() {
    let mut h = H::new();
    assert_eq!(h.read(0, "/a"), Err("ENOENT".into()));
    h.write(0, "/a/b/c", "v").unwrap();
    assert_eq!(h.read(0, "/a/b/c").unwrap(), "v");
    assert_eq!(h.read(0, "/a/b").unwrap(), "");
    assert_eq!(h.dir(0, "/").unwrap(), ["tool", "a"]);
    h.write(0, "/a/b/d", "").unwrap();
    h.write(0, "/a/b/c", "w").unwrap();
    assert_eq!(h.dir(0, "/a/b").unwrap(), ["c", "d"]);
    h.mkdir(0, "/a/b").unwrap();
    assert_eq!(h.read(0, "/a/b/c").unwrap(), "w");
    h.rm(0, "/a/b").unwrap();
    assert_eq!(h.dir(0, "/a").unwrap(), Vec::<String>::new());
    h.rm(0, "/a/nothing").unwrap();
    assert_eq!(h.rm(0, "/nothing/either"), e("ENOENT"));
    assert_eq!(h.rm(0, "/"), e("EINVAL"));
    // Binary values with NULs round-trip.
    let mut p = strs(&["/bin"]);
    p.extend_from_slice(b"a\0b\0");
    h.call(0, T::Write, 0, &p).unwrap();
    assert_eq!(h.call(0, T::Read, 0, &strs(&["/bin"])).unwrap(), b"a\0b\0");
    assert_eq!(h.s.store().len(), 5);
}

#[test]
fn the_permission_matrix_through_requests() {
    let mut h = H::new();
    for d in [1, 2, 3] {
        home(&mut h, d);
    }
    h.write(0, "/shared", "x").unwrap();
    // Owner 1, others none, 2 reads, 3 writes.
    h.set_perms(0, "/shared", "n1 r2 w3").unwrap();
    assert_eq!(h.get_perms(0, "/shared").unwrap(), "n1 r2 w3");
    assert_eq!(h.read(1, "/shared").unwrap(), "x");
    assert_eq!(h.read(2, "/shared").unwrap(), "x");
    assert_eq!(h.read(3, "/shared"), Err("EACCES".into()));
    assert_eq!(h.write(2, "/shared", "y"), e("EACCES"));
    h.write(3, "/shared", "z").unwrap();
    h.write(1, "/shared", "o").unwrap();
    // Only the owner (or dom0) sets permissions; the owner cannot give
    // the node away.
    assert_eq!(h.set_perms(2, "/shared", "n2"), e("EACCES"));
    assert_eq!(h.set_perms(3, "/shared", "n3"), e("EACCES"));
    assert_eq!(h.set_perms(1, "/shared", "n2"), e("EPERM"));
    h.set_perms(1, "/shared", "r1").unwrap();
    assert_eq!(h.read(2, "/shared").unwrap(), "o");
    assert_eq!(h.read(3, "/shared").unwrap(), "o");
    // A domain's home: its own, nobody else's.
    h.write(1, "data", "mine").unwrap();
    assert_eq!(h.read(2, "/local/domain/1/data"), Err("EACCES".into()));
    assert_eq!(h.read(0, "/local/domain/1/data").unwrap(), "mine");
    // Whether a node exists is hidden from who cannot read its parent.
    assert_eq!(h.read(2, "/local/domain/1/nothing"), Err("EACCES".into()));
    assert_eq!(h.read(1, "/local/domain/1/nothing"), Err("ENOENT".into()));
    // Creating needs write on the nearest existing ancestor.
    assert_eq!(h.write(2, "/local/domain/1/x/y", "v"), e("EACCES"));
    assert_eq!(h.write(2, "/newtop", "v"), e("EACCES"));
    assert_eq!(h.rm(2, "/local/domain/1/data"), e("EACCES"));
}

#[test]
fn created_nodes_inherit_permissions_and_belong_to_their_creator() {
    let mut h = H::new();
    home(&mut h, 1);
    h.set_perms(0, "/local/domain/1", "n1 r0 b2").unwrap();
    h.write(1, "a/b", "v").unwrap();
    assert_eq!(h.get_perms(1, "a").unwrap(), "n1 r0 b2");
    assert_eq!(h.get_perms(1, "a/b").unwrap(), "n1 r0 b2");
    // dom0 creating keeps the parent's owner.
    h.write(0, "/local/domain/1/c", "").unwrap();
    assert_eq!(h.get_perms(0, "/local/domain/1/c").unwrap(), "n1 r0 b2");
    // A domain with write on another's directory owns what it creates.
    home(&mut h, 2);
    h.write(2, "/local/domain/1/from2", "").unwrap();
    assert_eq!(h.get_perms(0, "/local/domain/1/from2").unwrap(), "n2 r0 b2");
    assert_eq!(h.s.store().owned(2), 2); // its home and the node
}

#[test]
fn a_target_acts_for_the_domain_it_targets() {
    let mut h = H::new();
    home(&mut h, 5);
    home(&mut h, 6);
    h.write(5, "secret", "s").unwrap();
    assert_eq!(h.read(6, "/local/domain/5/secret"), Err("EACCES".into()));
    assert_eq!(
        h.call(6, T::SetTarget, 0, &strs(&["6", "5"])),
        Err("EACCES".into())
    );
    h.call(0, T::SetTarget, 0, &strs(&["6", "5"])).unwrap();
    assert_eq!(h.read(6, "/local/domain/5/secret").unwrap(), "s");
    assert_eq!(
        h.call(0, T::SetTarget, 0, &strs(&["6", "9"])),
        Err("ENOENT".into())
    );
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let mut h = H::new();
    h.write(0, "/a", "1").unwrap();
    let t = h.start(0).unwrap();
    assert_eq!(h.read_tx(0, t, "/a").unwrap(), "1");
    h.write_tx(0, t, "/a", "2").unwrap();
    h.write_tx(0, t, "/n/m", "new").unwrap();
    assert_eq!(h.read_tx(0, t, "/a").unwrap(), "2");
    assert_eq!(h.read(0, "/a").unwrap(), "1");
    assert_eq!(h.read(0, "/n/m"), Err("ENOENT".into()));
    h.end(0, t, true).unwrap();
    assert_eq!(h.read(0, "/a").unwrap(), "2");
    assert_eq!(h.read(0, "/n/m").unwrap(), "new");
    // Aborted: nothing changes.
    let t = h.start(0).unwrap();
    h.rm_tx(0, t, "/n").unwrap();
    h.end(0, t, false).unwrap();
    assert_eq!(h.read(0, "/n/m").unwrap(), "new");
    // A node read in the transaction changed outside: EAGAIN, nothing
    // applied, the transaction gone.
    let t = h.start(0).unwrap();
    h.read_tx(0, t, "/a").unwrap();
    h.write_tx(0, t, "/b", "from-tx").unwrap();
    h.write(0, "/a", "3").unwrap();
    assert_eq!(h.end(0, t, true), e("EAGAIN"));
    assert_eq!(h.read(0, "/b"), Err("ENOENT".into()));
    assert_eq!(h.end(0, t, true), e("ENOENT"));
    // Two transactions creating children of the same directory conflict
    // on the directory; unrelated ones do not.
    let t1 = h.start(0).unwrap();
    let t2 = h.start(0).unwrap();
    let t3 = h.start(0).unwrap();
    h.write_tx(0, t1, "/n/x", "1").unwrap();
    h.write_tx(0, t2, "/n/y", "2").unwrap();
    h.write_tx(0, t3, "/other", "3").unwrap();
    h.end(0, t1, true).unwrap();
    assert_eq!(h.end(0, t2, true), e("EAGAIN"));
    h.end(0, t3, true).unwrap();
    // A node created meanwhile conflicts with a transaction that saw it
    // missing.
    let t = h.start(0).unwrap();
    assert_eq!(h.read_tx(0, t, "/late"), Err("ENOENT".into()));
    h.write(0, "/late", "x").unwrap();
    assert_eq!(h.end(0, t, true), e("EAGAIN"));
    h.s.store().check().unwrap();
}

#[test]
fn transaction_ids_and_errors() {
    let mut h = H::new();
    assert_eq!(h.read_tx(0, 77, "/"), Err("ENOENT".into()));
    assert_eq!(h.end(0, 0, true), e("ENOENT"));
    let t = h.start(0).unwrap();
    assert_ne!(t, 0);
    // Starting inside a transaction is EBUSY.
    assert_eq!(
        h.call(0, T::TransactionStart, t, b"\0"),
        Err("EBUSY".into())
    );
    assert_eq!(
        h.call(0, T::TransactionEnd, t, &strs(&["X"])),
        Err("EINVAL".into())
    );
    // Another domain cannot use this domain's transaction.
    home(&mut h, 1);
    assert_eq!(h.read_tx(1, t, "/"), Err("ENOENT".into()));
    h.end(0, t, false).unwrap();
    let t2 = h.start(0).unwrap();
    assert_ne!(t2, t);
    // Watch and unwatch ignore the transaction id.
    h.call(0, T::Watch, 999, &strs(&["/w", "tok"])).unwrap();
    // Reset drops transactions and watches.
    h.call(0, T::ResetWatches, 0, b"\0").unwrap();
    assert_eq!(h.s.watch_count(0), 0);
    assert_eq!(h.s.transaction_count(0), 0);
}

#[test]
fn watches_fire_for_the_node_and_its_children_once_set() {
    let mut h = H::new();
    h.watch(0, "/w", "tok").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/w", "tok")]));
    h.write(0, "/w/a/b", "1").unwrap();
    h.write(0, "/wx", "1").unwrap();
    h.write(0, "/w", "1").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/w/a/b", "tok"), ("/w", "tok")]));
    // Removing a parent: the watch fires with its own path (the removed
    // children), and with the removed root for watches above.
    h.watch(0, "/w/a/b", "deep").unwrap();
    h.take_events(0);
    h.rm(0, "/w/a").unwrap();
    let mut got = h.take_events(0);
    got.sort();
    // The removed child matches exactly: "/w" hears of the removed root only.
    assert_eq!(got, ev(&[("/w/a", "tok"), ("/w/a/b", "deep")]));
    // A duplicate watch is EEXIST; the same path with another token is
    // another watch.
    assert_eq!(h.watch(0, "/w", "tok"), e("EEXIST"));
    h.watch(0, "/w", "tok2").unwrap();
    h.take_events(0);
    h.write(0, "/w", "2").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/w", "tok"), ("/w", "tok2")]));
    h.unwatch(0, "/w", "tok").unwrap();
    assert_eq!(h.unwatch(0, "/w", "tok"), e("ENOENT"));
    h.write(0, "/w", "3").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/w", "tok2")]));
    // Setting permissions fires too.
    h.set_perms(0, "/w", "n0").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/w", "tok2")]));
    // A watch on the root sees everything.
    h.watch(0, "/", "all").unwrap();
    h.take_events(0);
    h.write(0, "/q", "").unwrap();
    assert_eq!(h.take_events(0), ev(&[("/q", "all")]));
}

#[test]
fn relative_watches_report_relative_paths() {
    let mut h = H::new();
    home(&mut h, 4);
    h.watch(4, "device", "d").unwrap();
    assert_eq!(h.take_events(4), ev(&[("device", "d")]));
    h.write(0, "/local/domain/4/device/vif/0", "x").unwrap();
    assert_eq!(h.take_events(4), ev(&[("device/vif/0", "d")]));
    // The same node watched absolutely reports absolute paths.
    h.watch(4, "/local/domain/4/device", "abs").unwrap();
    h.take_events(4);
    h.write(0, "/local/domain/4/device", "y").unwrap();
    assert_eq!(
        h.take_events(4),
        ev(&[("device", "d"), ("/local/domain/4/device", "abs")])
    );
    // Unwatch by the relative name.
    h.unwatch(4, "device", "d").unwrap();
}

#[test]
fn events_need_read_permission() {
    let mut h = H::new();
    home(&mut h, 1);
    home(&mut h, 2);
    h.watch(2, "/local/domain/1", "spy").unwrap();
    assert_eq!(h.take_events(2), ev(&[("/local/domain/1", "spy")]));
    h.write(1, "secret", "s").unwrap();
    assert_eq!(h.take_events(2), ev(&[]));
    h.write(1, "public", "p").unwrap();
    h.set_perms(1, "public", "r1").unwrap();
    assert_eq!(h.take_events(2), ev(&[("/local/domain/1/public", "spy")]));
    h.write(1, "public", "q").unwrap();
    assert_eq!(h.take_events(2), ev(&[("/local/domain/1/public", "spy")]));
    // Made unreadable: the change that hides it is still seen (old
    // permissions), later ones are not.
    h.set_perms(1, "public", "n1").unwrap();
    h.write(1, "public", "r").unwrap();
    assert_eq!(h.take_events(2), ev(&[("/local/domain/1/public", "spy")]));
}

#[test]
fn transaction_events_fire_at_commit_only() {
    let mut h = H::new();
    h.watch(0, "/t", "tok").unwrap();
    h.take_events(0);
    let t = h.start(0).unwrap();
    h.write_tx(0, t, "/t/a", "1").unwrap();
    assert_eq!(h.take_events(0), ev(&[]));
    h.end(0, t, true).unwrap();
    assert_eq!(h.take_events(0), ev(&[("/t/a", "tok")]));
    let t = h.start(0).unwrap();
    h.write_tx(0, t, "/t/b", "1").unwrap();
    h.end(0, t, false).unwrap();
    assert_eq!(h.take_events(0), ev(&[]));
}

#[test]
fn special_watches_introduce_and_release() {
    let mut h = H::new();
    h.watch(0, "@introduceDomain", "i").unwrap();
    h.watch(0, "@releaseDomain", "r").unwrap();
    assert_eq!(
        h.take_events(0),
        ev(&[("@introduceDomain", "i"), ("@releaseDomain", "r")])
    );
    h.intro(3);
    assert_eq!(h.take_events(0), ev(&[("@introduceDomain", "i")]));
    assert_eq!(h.host.introduced, [(3, 1234, 5)]);
    assert_eq!(
        h.call(0, T::IsDomainIntroduced, 0, &strs(&["3"])).unwrap(),
        b"T\0"
    );
    assert_eq!(
        h.call(0, T::IsDomainIntroduced, 0, &strs(&["4"])).unwrap(),
        b"F\0"
    );
    // A domain may watch the special paths but sees nothing unless it may
    // read them.
    h.watch(3, "@releaseDomain", "r3").unwrap();
    h.take_events(3);
    h.intro(4);
    h.s.domain_shutdown(4);
    assert_eq!(
        h.take_events(0),
        ev(&[("@introduceDomain", "i"), ("@releaseDomain", "r")])
    );
    assert_eq!(h.take_events(3), ev(&[]));
    // Shutdown fires once until resumed.
    h.s.domain_shutdown(4);
    assert_eq!(h.take_events(0), ev(&[]));
    h.call(0, T::Resume, 0, &strs(&["4"])).unwrap();
    h.s.domain_shutdown(4);
    assert_eq!(h.take_events(0), ev(&[("@releaseDomain", "r")]));
    // Given read on @releaseDomain, dom3 sees it.
    h.set_perms(0, "@releaseDomain", "n0 r3").unwrap();
    assert_eq!(h.get_perms(0, "@releaseDomain").unwrap(), "n0 r3");
    h.take_events(0);
    h.take_events(3);
    h.call(0, T::Release, 0, &strs(&["4"])).unwrap();
    assert_eq!(h.take_events(0), ev(&[("@releaseDomain", "r")]));
    assert_eq!(h.take_events(3), ev(&[("@releaseDomain", "r3")]));
    assert_eq!(h.host.released, [4]);
    assert!(!h.s.is_connected(4));
    assert_eq!(
        h.call(0, T::Release, 0, &strs(&["4"])),
        Err("ENOENT".into())
    );
    assert_eq!(
        h.call(0, T::Release, 0, &strs(&["0"])),
        Err("EINVAL".into())
    );
    // Only privileged domains manage domains.
    for kind in [
        T::Introduce,
        T::Release,
        T::Resume,
        T::IsDomainIntroduced,
        T::SetTarget,
        T::Control,
    ] {
        assert_eq!(
            h.call(3, kind, 0, &strs(&["3", "1", "1"])),
            Err("EACCES".into()),
            "{kind:?}"
        );
    }
    assert_eq!(
        h.call(3, T::GetDomainPath, 0, &strs(&["17"])).unwrap(),
        b"/local/domain/17\0"
    );
}

#[test]
fn a_released_domain_leaves_nothing_behind() {
    let mut h = H::new();
    home(&mut h, 7);
    h.write(7, "x", "1").unwrap();
    h.watch(7, "/local/domain/7", "w").unwrap();
    let _t = h.start(7).unwrap();
    h.write(0, "/shared", "").unwrap();
    h.set_perms(0, "/shared", "n0 b7").unwrap();
    h.s.domain_destroyed(7, &mut h.host);
    assert!(!h.s.is_connected(7));
    assert_eq!(h.s.watch_count(7), 0);
    assert_eq!(h.s.transaction_count(7), 0);
    // Its nodes pass to dom0, its grants elsewhere are gone: a new domain
    // 7 inherits nothing.
    assert_eq!(h.get_perms(0, "/local/domain/7/x").unwrap(), "n0");
    assert_eq!(h.get_perms(0, "/shared").unwrap(), "n0");
    assert_eq!(h.s.store().owned(7), 0);
    h.intro(7);
    assert_eq!(h.read(7, "/shared"), Err("EACCES".into()));
    assert_eq!(h.read(7, "x"), Err("EACCES".into()));
}

#[test]
fn quotas_for_unprivileged_domains() {
    let q = Quotas {
        nodes: 5,
        watches: 3,
        transactions: 2,
        perms: 2,
        node_size: 100,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    // Nodes: its home plus four.
    h.write(1, "a", "").unwrap();
    h.write(1, "b/c", "").unwrap();
    assert_eq!(h.write(1, "d/e", ""), e("ENOSPC"));
    assert_eq!(h.read(1, "d"), Err("ENOENT".into()));
    h.write(1, "d", "").unwrap();
    assert_eq!(h.write(1, "e", ""), e("ENOSPC"));
    assert_eq!(h.mkdir(1, "e"), e("ENOSPC"));
    h.rm(1, "b").unwrap();
    h.write(1, "e", "").unwrap();
    // dom0 has no quota.
    for i in 0..20 {
        h.write(0, &format!("/local/domain/1/z{i}"), "").unwrap();
    }
    // Node size: 24 + 8 per perm + value + children.
    assert_eq!(h.write(1, "a", &"x".repeat(100 - 24 - 8)), e("ENOSPC"));
    h.write(1, "a", &"x".repeat(100 - 24 - 8 - 1)).unwrap();
    h.write(0, "/local/domain/1/a", &"x".repeat(1000)).unwrap();
    // Permission entries.
    assert_eq!(h.set_perms(1, "a", "n1 r2 r3"), e("ENOSPC"));
    h.set_perms(1, "e", "n1 r2").unwrap();
    // Watches.
    for i in 0..3 {
        h.watch(1, &format!("w{i}"), "t").unwrap();
    }
    assert_eq!(h.watch(1, "w9", "t"), e("ENOSPC"));
    // Transactions.
    let t1 = h.start(1).unwrap();
    h.start(1).unwrap();
    assert_eq!(h.start(1), Err("ENOSPC".into()));
    h.end(1, t1, false).unwrap();
    h.start(1).unwrap();
}

#[test]
fn the_node_quota_holds_across_transactions() {
    let q = Quotas {
        nodes: 3,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    let t1 = h.start(1).unwrap();
    let t2 = h.start(1).unwrap();
    h.write_tx(1, t1, "a", "").unwrap();
    h.write_tx(1, t1, "b", "").unwrap();
    assert_eq!(h.write_tx(1, t1, "c", ""), e("ENOSPC"));
    h.write_tx(1, t2, "x", "").unwrap();
    h.end(1, t2, true).unwrap();
    // t1 would now own 4: refused at commit (it would conflict anyway,
    // the home changed; quota is checked first, as C does).
    assert_eq!(h.end(1, t1, true), e("ENOSPC"));
    assert_eq!(h.s.store().owned(1), 2);
}

#[test]
fn transaction_node_quota() {
    let q = Quotas {
        transaction_nodes: 4,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    let t = h.start(1).unwrap();
    // Touched: a and the home, then b, then c: four.
    h.write_tx(1, t, "a", "").unwrap();
    h.write_tx(1, t, "b", "").unwrap();
    h.write_tx(1, t, "c", "").unwrap();
    assert_eq!(h.write_tx(1, t, "d", ""), e("ENOSPC"));
    assert_eq!(h.read_tx(1, t, "/local/domain/1/c").unwrap(), "");
    h.end(1, t, true).unwrap();
    assert_eq!(h.dir(1, "/local/domain/1").unwrap(), ["a", "b", "c"]);
}

#[test]
fn path_limits() {
    let mut h = H::new();
    home(&mut h, 1);
    // 2048 bytes after the home's prefix (in short components: a long
    // name would break the node-size quota of its parent).
    let long = format!("{}abcdefgh", "abcdefg/".repeat(255));
    assert_eq!(long.len(), 2048);
    h.write(1, &long, "").unwrap();
    assert_eq!(h.write(1, &format!("{long}y"), ""), e("EINVAL"));
    assert_eq!(h.write(1, &"x".repeat(2100), ""), e("EINVAL"));
    assert_eq!(h.write(1, &"x".repeat(2048), ""), e("ENOSPC"));
    let abs = format!("/{}", "y".repeat(2047));
    h.write(0, &abs, "").unwrap();
    assert_eq!(h.write(0, &format!("{abs}y"), ""), e("EINVAL"));
    for bad in ["/a//b", "/a/", "", "/a b", "@foo"] {
        assert_eq!(h.write(0, bad, ""), e("EINVAL"), "{bad:?}");
    }
    // The directory of a node with too many children for one reply is
    // E2BIG; DIRECTORY_PART pages through it.
    for i in 0..40 {
        h.write(0, &format!("/big/{}{i:03}", "n".repeat(200)), "")
            .unwrap();
    }
    assert_eq!(h.dir(0, "/big"), Err("E2BIG".into()));
    let mut names = Vec::new();
    let mut offset = 0usize;
    let mut gen = None;
    loop {
        let part = h
            .call(
                0,
                T::DirectoryPart,
                0,
                &strs(&["/big", &offset.to_string()]),
            )
            .unwrap();
        assert!(part.len() <= 4096);
        let mut fields = part.split(|b| *b == 0);
        let g = String::from_utf8(fields.next().unwrap().to_vec()).unwrap();
        assert!(gen.is_none() || gen.as_deref() == Some(g.as_str()));
        gen = Some(g);
        let body = &part[gen.as_ref().unwrap().len() + 1..];
        let done = body.ends_with(b"\0\0") || body == b"\0";
        for n in body.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            names.push(String::from_utf8(n.to_vec()).unwrap());
            offset += n.len() + 1;
        }
        if done {
            break;
        }
    }
    assert_eq!(names.len(), 40);
    assert_eq!(names[39], format!("{}039", "n".repeat(200)));
}

#[test]
fn malformed_requests() {
    let mut h = H::new();
    home(&mut h, 1);
    assert_eq!(h.call(1, T::Read, 0, b"/a"), Err("EINVAL".into()));
    assert_eq!(h.call(1, T::Write, 0, b"nonul"), Err("EINVAL".into()));
    assert_eq!(h.call(1, T::Watch, 0, &strs(&["a"])), Err("EINVAL".into()));
    assert_eq!(
        h.call(1, T::SetPerms, 0, &strs(&["a", "q1"])),
        Err("EINVAL".into())
    );
    assert_eq!(h.call(1, T::Error, 0, b""), Err("ENOSYS".into()));
    assert_eq!(h.call(1, T::WatchEvent, 0, b""), Err("ENOSYS".into()));
    // Unknown types, including the retired 20.
    for kind in [20u32, 23, 0xffff, 0xdead_beef] {
        let mut msg = message(T::Read, 9, 0, &[b"/\0"]);
        msg[..4].copy_from_slice(&kind.to_ne_bytes());
        h.send_raw(1, &msg).unwrap();
        h.drain(1);
        let r = h.replies.get_mut(&1).unwrap().pop().unwrap();
        assert_eq!(
            (r.kind, r.req_id, r.payload.as_slice()),
            (T::Error as u32, 9, &b"ENOSYS\0"[..])
        );
    }
    // A header over XENSTORE_PAYLOAD_MAX cuts the connection; others are
    // served.
    let mut msg = message(T::Read, 1, 0, &[]);
    msg[12..16].copy_from_slice(&4097u32.to_ne_bytes());
    assert_eq!(h.send_raw(1, &msg), Err(ConnError::PayloadTooLarge(4097)));
    assert_eq!(
        h.send_raw(1, b"more"),
        Err(ConnError::PayloadTooLarge(4097))
    );
    assert_eq!(h.s.stats().broken, 1);
    h.write(0, "/still", "fine").unwrap();
    // A full 4096-byte payload is fine.
    let mut p = strs(&["/full"]);
    p.resize(4096, b'v');
    h.call(0, T::Write, 0, &p).unwrap();
    assert_eq!(
        h.call(0, T::Read, 0, &strs(&["/full"])).unwrap().len(),
        4090
    );
}

#[test]
fn a_client_that_does_not_read_replies_is_throttled() {
    let q = Quotas {
        outstanding: 3,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    let mut flood = Vec::new();
    for i in 0..10 {
        flood.extend_from_slice(&message(T::Read, 100 + i, 0, &[b"/local/domain/1\0"]));
    }
    let used = h.send_raw(1, &flood).unwrap();
    assert_eq!(used, flood.len() * 3 / 10);
    assert_eq!(h.s.connection(1).unwrap().outstanding(), 3);
    assert_eq!(h.send_raw(1, &flood[used..]).unwrap(), 0);
    // dom0 is served meanwhile.
    h.write(0, "/x", "").unwrap();
    // Taking the replies lets the rest in.
    h.drain(1);
    let used2 = h.send_raw(1, &flood[used..]).unwrap();
    assert_eq!(used2, flood.len() * 3 / 10);
    assert!(h.s.stats().throttled >= 2);
}

#[test]
fn a_watcher_that_does_not_read_loses_events_not_memory() {
    let q = Quotas {
        output_bytes: 1000,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    h.set_perms(0, "/local/domain/1", "n1 r0").unwrap();
    h.watch(1, "/local/domain/1", "w").unwrap();
    for i in 0..100 {
        h.write(0, &format!("/local/domain/1/k{i}"), "v").unwrap();
    }
    let c = h.s.connection(1).unwrap();
    assert!(c.queued_bytes() <= 1000, "{}", c.queued_bytes());
    assert!(h.s.stats().events_dropped > 50);
    // Identical pending events are folded.
    let before = h.s.connection(1).unwrap().queued_messages();
    h.drain(1);
    h.events.clear();
    h.write(0, "/local/domain/1/k0", "v").unwrap();
    h.write(0, "/local/domain/1/k0", "v").unwrap();
    assert_eq!(h.s.connection(1).unwrap().queued_messages(), 1);
    assert!(before > 1);
}

#[test]
fn control_commands() {
    let mut h = H::new();
    assert_eq!(
        h.call(0, T::Control, 0, &strs(&["check"])).unwrap(),
        b"OK\0"
    );
    h.call(0, T::Control, 0, &strs(&["print", "hello"]))
        .unwrap();
    assert_eq!(h.host.log, ["hello"]);
    h.call(0, T::Control, 0, &strs(&["quota", "watches", "7"]))
        .unwrap();
    assert_eq!(
        h.call(0, T::Control, 0, &strs(&["quota", "watches"]))
            .unwrap(),
        b"7\0"
    );
    assert_eq!(h.s.config().quotas.watches, 7);
    let list = h.call(0, T::Control, 0, &strs(&["quota"])).unwrap();
    assert!(String::from_utf8(list).unwrap().contains("nodes 1000\n"));
    assert_eq!(
        h.call(0, T::Control, 0, &strs(&["quota", "bogus"])),
        Err("EINVAL".into())
    );
    assert_eq!(
        h.call(0, T::Control, 0, &strs(&["nonsense"])),
        Err("EINVAL".into())
    );
    assert!(h.call(0, T::Control, 0, &strs(&["help"])).is_ok());
}

#[test]
fn introduce_refused_by_the_host_and_again() {
    let mut h = H::new();
    h.host.refuse = true;
    assert_eq!(
        h.call(0, T::Introduce, 0, &strs(&["3", "1", "2"])),
        Err("EIO".into())
    );
    assert!(!h.s.is_connected(3));
    h.host.refuse = false;
    h.intro(3);
    h.watch(3, "x", "t").unwrap();
    // Introduced again (a resumed domain): a fresh connection.
    h.intro(3);
    assert_eq!(h.s.watch_count(3), 0);
    assert_eq!(
        h.call(0, T::Introduce, 0, &strs(&["3", "1", "0"])),
        Err("EINVAL".into())
    );
    assert_eq!(
        h.call(0, T::Introduce, 0, &strs(&["32752", "1", "1"])),
        Err("EINVAL".into())
    );
}

#[test]
fn the_memory_quota_bounds_what_a_domain_makes_the_server_hold() {
    let q = Quotas {
        memory: 3000,
        ..Quotas::default()
    };
    let mut h = H::with(Config {
        quotas: q,
        ..Config::default()
    });
    home(&mut h, 1);
    let v = "x".repeat(900);
    let mut written = 0;
    let err = loop {
        match h.write(1, &format!("k{written}"), &v) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10);
    };
    // Each node costs 24 + 8 + 900 + its path (18): three fit beside the
    // home.
    assert_eq!(err, "ENOMEM");
    assert_eq!(written, 3);
    assert!(h.s.usage(1) <= 3000, "{}", h.s.usage(1));
    // Shrinking is always allowed; the room comes back.
    h.write(1, "k0", "").unwrap();
    h.write(1, "k3", &v).unwrap();
    // Transactions hold what they write until they end.
    let t = h.start(1).unwrap();
    assert_eq!(h.write_tx(1, t, "k0", &v), e("ENOMEM"));
    h.end(1, t, false).unwrap();
    // Watches count their path and token.
    assert_eq!(h.watch(1, "w", &"t".repeat(1000)), e("ENOMEM"));
    h.watch(1, "w", "t").unwrap();
    // dom0 has no quota.
    h.write(0, "/big", &"y".repeat(4000)).unwrap();
    assert!(h.s.usage(1) <= 3000);
}
