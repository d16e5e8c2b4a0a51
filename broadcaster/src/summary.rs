//! The JSON summary every upload answers with.

use serde::Serialize;

/// Whether the upload as a whole succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// At least the quorum of targets committed.
    Committed,
    /// Nothing kept the upload.
    Failed,
}

/// Where one target ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    /// The target published the upload.
    Committed,
    /// The target broke, stalled or staged a wrong copy, and was detached.
    Failed,
    /// The target was told to discard its copy because the upload as a whole did not succeed.
    Aborted,
}

/// One target's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// The target as configured.
    pub target: String,
    /// Final state.
    pub state: TargetState,
    /// Bytes handed to the target's connection.
    pub bytes: u64,
    /// Why it failed or was aborted.
    pub error: Option<String>,
}

/// The answer to an upload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The upload's name.
    pub name: String,
    /// Bytes received from the client.
    pub size: u64,
    /// SHA-256 of the bytes received, hex.
    pub sha256: String,
    /// Whether the upload was kept.
    pub outcome: Outcome,
    /// Targets that committed.
    pub committed: usize,
    /// Targets that had to commit.
    pub required: usize,
    /// Wall time of the whole upload.
    pub duration_ms: u64,
    /// Why the upload failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per target.
    pub targets: Vec<TargetReport>,
}
