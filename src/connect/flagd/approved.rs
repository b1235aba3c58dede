//! The approved configuration: the newest approved-flag record of every flag, read from
//! the compacted approved-flags topic (`kafka.topics.approved_flags`) and followed.
//!
//! OWNER: helper "flagd-serve". Skeleton: the types are the interface the other parts use.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::FlagdError;
use crate::config::{Config, FlagdConfig};
use crate::contract::ApprovedFlag;

/// One flag set: a project and an environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selection {
    /// Project.
    pub project: String,
    /// Environment.
    pub environment: String,
}

impl Selection {
    /// The set `[flagd]` proposes to and serves by default.
    pub fn of(flagd: &FlagdConfig) -> Selection {
        Selection {
            project: flagd.project.clone(),
            environment: flagd.environment.clone(),
        }
    }
}

/// Everything approved so far: per set, per flag key, the newest record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approved {
    /// The newest approved record of each flag, per set.
    pub sets: BTreeMap<Selection, BTreeMap<String, ApprovedFlag>>,
}

impl Approved {
    /// The newest approved record of one flag.
    pub fn flag(&self, set: &Selection, flag: &str) -> Option<&ApprovedFlag> {
        self.sets.get(set).and_then(|flags| flags.get(flag))
    }
}

/// Follows the approved configuration: every replica sees the same sequence.
pub type ApprovedWatch = watch::Receiver<Arc<Approved>>;

/// Reads the approved-flags topic to its end (as it stood at the call), then keeps
/// following it in a task until `shutdown`; returns once caught up.
pub async fn follow(
    _config: &Config,
    _shutdown: CancellationToken,
) -> Result<ApprovedWatch, FlagdError> {
    let (_sender, receiver) = watch::channel(Arc::new(Approved::default()));
    Ok(receiver)
}
