//! The node's identity: a random id created at first start and kept in the data directory, so the ring
//! knows a node by what it is, not by the address it was reached at (`localhost:P` and `127.0.0.1:P` are
//! one node). A wiped data directory is a new node. With a cluster secret the node proves its id by
//! answering a broadcaster's nonce with an HMAC only a member of the cluster can compute.

use std::io;
use std::path::Path;

use common::cluster::ClusterSecret;
use serde::{Deserialize, Serialize};

/// File under the data directory holding the id.
pub const IDENTITY_FILE: &str = "node-id";

/// This node's identity and what it proves it with.
#[derive(Debug, Clone)]
pub struct Identity {
    id: String,
    secret: Option<ClusterSecret>,
}

/// `GET /v1/identity` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityProof {
    /// The node's id.
    pub node_id: String,
    /// HMAC of the caller's nonce and the id under the cluster secret, hex; empty without a secret.
    pub proof: String,
}

impl Identity {
    /// Loads the id from `data_dir`, creating it (durably) at first start.
    pub fn load_or_create(data_dir: &Path, secret: Option<ClusterSecret>) -> io::Result<Self> {
        let path = data_dir.join(IDENTITY_FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(s) => {
                let id = s.trim().to_owned();
                if !common::cluster::valid_token(&id) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{IDENTITY_FILE} in the data directory is damaged; \
                             move the directory aside to start as a new node"
                        ),
                    ));
                }
                id
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(&path)?,
            Err(e) => return Err(e),
        };
        Ok(Self { id, secret })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The answer to `nonce`.
    pub fn prove(&self, nonce: &str) -> IdentityProof {
        IdentityProof {
            node_id: self.id.clone(),
            proof: self
                .secret
                .as_ref()
                .map(|s| s.identity_proof(nonce, &self.id))
                .unwrap_or_default(),
        }
    }
}

fn create(path: &Path) -> io::Result<String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.sync_all()?;
    }
    common::durable::publish(&tmp, path)?;
    tracing::info!(node_id = %id, "created a new node identity");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_a_wiped_directory_is_a_new_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path(), None).expect("create");
        let b = Identity::load_or_create(dir.path(), None).expect("reload");
        assert_eq!(a.id(), b.id());
        std::fs::remove_file(dir.path().join(IDENTITY_FILE)).expect("wipe");
        let c = Identity::load_or_create(dir.path(), None).expect("new");
        assert_ne!(a.id(), c.id());
        std::fs::write(dir.path().join(IDENTITY_FILE), "../etc").expect("damage");
        assert!(Identity::load_or_create(dir.path(), None).is_err());
    }

    #[test]
    fn proofs_need_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = ClusterSecret::new(&[1u8; 32]).expect("secret");
        let id = Identity::load_or_create(dir.path(), Some(secret.clone())).expect("create");
        let p = id.prove("abc");
        assert!(secret.verify_identity("abc", id.id(), &p.proof));
        let open = Identity::load_or_create(dir.path(), None).expect("load");
        assert_eq!(open.prove("abc").proof, "");
    }
}
