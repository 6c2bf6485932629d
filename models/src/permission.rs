//! Substra's asset permissions: who may process (and so download) a function, dataset or model.
//!
//! The owner is always among `authorized_ids`; when `public`, the ids are kept but not needed
//! (SPEC.md §3; reference/semantics.md §7).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::OrganizationId;

/// Who may use an asset: everyone when `public`, else the listed organizations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Permission {
    /// Every organization may use the asset.
    pub public: bool,
    /// The organizations allowed when not public: sorted, without duplicates.
    pub authorized_ids: Vec<OrganizationId>,
}

impl Permission {
    /// The permission of an asset owned by `owner`, as given by its creator: `owner` is added to
    /// `authorized_ids`, which are sorted and deduplicated.
    pub fn new(
        owner: &OrganizationId,
        public: bool,
        authorized_ids: impl IntoIterator<Item = OrganizationId>,
    ) -> Permission {
        let mut ids: Vec<OrganizationId> = authorized_ids.into_iter().collect();
        ids.push(owner.clone());
        Permission::normalized(public, ids)
    }

    /// Only `owner` may use the asset.
    pub fn private(owner: &OrganizationId) -> Permission {
        Permission::new(owner, false, [])
    }

    /// Everyone may use the asset; `owner` is still recorded.
    pub fn public(owner: &OrganizationId) -> Permission {
        Permission::new(owner, true, [])
    }

    fn normalized(public: bool, mut ids: Vec<OrganizationId>) -> Permission {
        ids.sort();
        ids.dedup();
        Permission {
            public,
            authorized_ids: ids,
        }
    }

    /// Whether `organization` may process (and download) the asset.
    pub fn allows(&self, organization: &OrganizationId) -> bool {
        self.public || self.authorized_ids.contains(organization)
    }

    /// The permission allowing whoever either side allows (Substra's `UnionPermission`):
    /// public if either is; otherwise the union of the ids.
    pub fn union(&self, other: &Permission) -> Permission {
        if self.public || other.public {
            return Permission {
                public: true,
                authorized_ids: Vec::new(),
            };
        }
        let ids = self
            .authorized_ids
            .iter()
            .chain(&other.authorized_ids)
            .cloned()
            .collect();
        Permission::normalized(false, ids)
    }

    /// The permission allowing only whoever both sides allow (Substra's `IntersectPermission`).
    pub fn intersection(&self, other: &Permission) -> Permission {
        match (self.public, other.public) {
            (true, true) => Permission {
                public: true,
                authorized_ids: Vec::new(),
            },
            (true, false) => Permission::normalized(false, other.authorized_ids.clone()),
            (false, true) => Permission::normalized(false, self.authorized_ids.clone()),
            (false, false) => {
                let ids = self
                    .authorized_ids
                    .iter()
                    .filter(|id| other.authorized_ids.contains(id))
                    .cloned()
                    .collect();
                Permission::normalized(false, ids)
            }
        }
    }
}

/// The permissions stored on an asset. Download permission equals process permission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Permissions {
    /// Who may process the asset (and so download it).
    pub process: Permission,
}

impl Permissions {
    /// Permissions whose process permission is `process`.
    pub fn new(process: Permission) -> Permissions {
        Permissions { process }
    }

    /// Only `owner` may use the asset.
    pub fn private(owner: &OrganizationId) -> Permissions {
        Permissions::new(Permission::private(owner))
    }

    /// Whether `organization` may process the asset.
    pub fn can_process(&self, organization: &OrganizationId) -> bool {
        self.process.allows(organization)
    }

    /// Whether `organization` may download the asset: the same as processing (SPEC.md §3).
    pub fn can_download(&self, organization: &OrganizationId) -> bool {
        self.can_process(organization)
    }
}

#[cfg(test)]
mod tests;
