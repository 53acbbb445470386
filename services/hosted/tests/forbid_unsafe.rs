//! Every crate root of the hosted platform (its library and each binary)
//! forbids unsafe code, as the project's service crates do: the TAP
//! devices are opened through `tun-tap`, whose C shim holds the ioctl.

use std::path::Path;

fn roots() -> Vec<std::path::PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut roots = vec![src.join("lib.rs")];
    for entry in std::fs::read_dir(src.join("bin")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            roots.push(path);
        }
    }
    roots
}

#[test]
fn every_crate_root_forbids_unsafe_code() {
    let roots = roots();
    assert!(roots.len() >= 3, "lib and the two binaries: {roots:?}");
    for root in roots {
        let text = std::fs::read_to_string(&root).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]"),
            "{} does not forbid unsafe code",
            root.display()
        );
    }
}
