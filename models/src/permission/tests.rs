use super::*;

fn org(id: &str) -> OrganizationId {
    OrganizationId::from(id)
}

fn private_of(ids: &[&str]) -> Permission {
    Permission {
        public: false,
        authorized_ids: ids.iter().map(|id| org(id)).collect(),
    }
}

#[test]
fn owner_is_added_to_a_private_permission() {
    let permission = Permission::new(&org("owner"), false, [org("b"), org("a"), org("b")]);
    assert_eq!(permission, private_of(&["a", "b", "owner"]));
}

#[test]
fn owner_is_recorded_on_a_public_permission() {
    let permission = Permission::new(&org("owner"), true, []);
    assert!(permission.public);
    assert_eq!(permission.authorized_ids, vec![org("owner")]);
}

#[test]
fn can_process_public_allowed_and_refused() {
    assert!(Permission::public(&org("a")).allows(&org("z")));
    assert!(private_of(&["a", "b"]).allows(&org("b")));
    assert!(!private_of(&["a", "b"]).allows(&org("c")));
}

#[test]
fn intersection_matches_substra_and_commutes() {
    let public = Permission {
        public: true,
        authorized_ids: vec![],
    };
    let cases = [
        (public.clone(), private_of(&["org1"]), private_of(&["org1"])),
        (
            private_of(&["org1"]),
            private_of(&["org2"]),
            private_of(&[]),
        ),
        (
            private_of(&["org1", "org2"]),
            private_of(&["org2"]),
            private_of(&["org2"]),
        ),
        (public.clone(), public.clone(), public.clone()),
    ];
    for (a, b, expected) in cases {
        assert_eq!(a.intersection(&b), expected);
        assert_eq!(b.intersection(&a), expected);
    }
}

#[test]
fn union_matches_substra_and_commutes() {
    let public = Permission {
        public: true,
        authorized_ids: vec![],
    };
    let cases = [
        (public.clone(), private_of(&["x"]), public.clone()),
        (
            private_of(&["org1"]),
            private_of(&["org2"]),
            private_of(&["org1", "org2"]),
        ),
        (
            private_of(&["org1", "org2"]),
            private_of(&["org2"]),
            private_of(&["org1", "org2"]),
        ),
    ];
    for (a, b, expected) in cases {
        assert_eq!(a.union(&b), expected);
        assert_eq!(b.union(&a), expected);
    }
}

#[test]
fn download_follows_process() {
    let permissions = Permissions::new(private_of(&["a"]));
    assert!(permissions.can_download(&org("a")));
    assert!(!permissions.can_download(&org("b")));
}
