//! Property test: random trees go through the writer and come back out of the
//! reader (verification) and out of `tar` unchanged.

use backstop_core::stores::Location;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use backstop_core::archive::Codec;
use backstop_core::archive::reader::verify_archive;
use backstop_core::encryption::NO_KEYS;
use backstop_core::progress::{Cancel, NoProgress};
use backstop_test_support::{Compare, assert_same_tree};
use proptest::prelude::*;

use crate::support::{Env, tar_extract};

#[derive(Debug, Clone)]
enum Node {
    File {
        name: Vec<u8>,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        name: Vec<u8>,
        children: Vec<Node>,
    },
    Link {
        name: Vec<u8>,
        target: Vec<u8>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but NUL and '/', avoiding the names `.` and `..`.
    prop::collection::vec(prop_oneof![1u8..=46, 48u8..=255], 1..40)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            name(),
            prop::collection::vec(any::<u8>(), 0..5000),
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o400)]
        )
            .prop_map(|(name, data, mode)| Node::File { name, data, mode }),
        (name(), prop::collection::vec(1u8..=255, 1..60))
            .prop_map(|(name, target)| Node::Link { name, target }),
        name().prop_map(|name| Node::Dir {
            name,
            children: vec![]
        }),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        (name(), prop::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Node::Dir { name, children })
    })
}

fn build(dir: &Path, nodes: &[Node]) {
    use std::os::unix::ffi::OsStrExt;
    let mut used = std::collections::HashSet::new();
    for n in nodes {
        let name = match n {
            Node::File { name, .. } | Node::Dir { name, .. } | Node::Link { name, .. } => name,
        };
        if !used.insert(name.clone()) {
            continue;
        }
        let path: PathBuf = dir.join(std::ffi::OsStr::from_bytes(name));
        match n {
            Node::File { data, mode, .. } => {
                fs::write(&path, data).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Dir { children, .. } => {
                fs::create_dir(&path).unwrap();
                build(&path, children);
            }
            Node::Link { target, .. } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(nodes in prop::collection::vec(node(), 0..8), codec in prop_oneof![Just(Codec::Zstd), Just(Codec::Gzip), Just(Codec::None)]) {
        let env = Env::new();
        let src = env.path("tree");
        fs::create_dir(&src).unwrap();
        build(&src, &nodes);
        let report = env.backup(&src, codec);
        let archive = PathBuf::from(report.backup.location.clone().unwrap());
        let run = verify_archive(&Location::file(archive.clone()), (&NoProgress, &Cancel::default()), &NO_KEYS);
        let verified = run.result.unwrap();
        prop_assert_eq!(verified.files, report.backup.files.unwrap());
        prop_assert_eq!(Some(verified.sha256), report.backup.sha256.clone());
        let out = env.path("out");
        tar_extract(&archive, &out);
        // Directories restored with mode 0o400 files inside still compare.
        assert_same_tree(&src, &out.join("tree"), Compare { dir_mtimes: true, xattrs: false, sparse: false });
    }
}
