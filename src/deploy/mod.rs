//! Model deployments of a consumer group: one champion and zero or more shadows, changed by
//! `vaxpulse models deploy|promote|rollback|retire` and published as one record per change on a
//! compacted control topic that every replica follows ([`control`]). This module owns the
//! record and the rules of a change; it guarantees every change yields a valid deployment (a
//! champion, distinct versions, a strictly larger epoch) or an error that says what to do.

pub mod control;
pub mod ops;
pub mod sign;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ModelId;

/// The group's deployment, as published on the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Increases by one with every change; replicas ignore records not newer than theirs.
    pub epoch: u64,
    /// The version whose results are published and counted.
    pub champion: ModelId,
    /// Versions scored on the same batches, stored for comparison only.
    pub shadows: Vec<ModelId>,
    /// The champion before the last promotion: what `rollback` returns to.
    pub previous_champion: Option<ModelId>,
    /// The change that produced this record (`deploy`, `promote`, ...).
    pub action: String,
    /// Who made it (`user@host`, or the CI job).
    pub actor: String,
    /// Free text given with the change.
    pub reason: String,
    pub changed_at: DateTime<Utc>,
    /// sha256 of each version's `manifest.json` by `NAME@VERSION` (champion, shadows, previous
    /// champion). The manifest lists every file's sha256, so this pins the whole version —
    /// weights, tokenizer, labels — where the id's hash pins 48 bits of the weights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manifests: BTreeMap<String, String>,
    /// Who vouches for this record (`vaxpulse models` signs when given a key; see [`sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<sign::RecordSignature>,
}

/// A change an operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add a shadow, or (`champion`) replace the champion directly (first deployment).
    Deploy { model: ModelId, champion: bool },
    /// Make a shadow the champion; the old champion stays on as a shadow.
    Promote(ModelId),
    /// Return to the champion before the last promotion; the demoted one stays as a shadow.
    Rollback,
    /// Stop scoring a shadow.
    Retire(ModelId),
}

impl Change {
    pub fn action(&self) -> &'static str {
        match self {
            Change::Deploy {
                champion: false, ..
            } => "deploy-shadow",
            Change::Deploy { champion: true, .. } => "deploy-champion",
            Change::Promote(_) => "promote",
            Change::Rollback => "rollback",
            Change::Retire(_) => "retire",
        }
    }
}

/// Why a change cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChangeError {
    #[error("{0} is already deployed (as {1}); nothing to do")]
    AlreadyDeployed(ModelId, &'static str),
    #[error("{0} is not a shadow of this deployment (shadows: {1}); deploy it as a shadow first: vaxpulse models deploy {0}")]
    NotAShadow(ModelId, String),
    #[error("{0} is the champion; promote another version first, or roll back")]
    IsChampion(ModelId),
    #[error("nothing to roll back to: no promotion has been made since the first deployment")]
    NoPrevious,
}

/// Largest epoch step a replica takes in one record. `vaxpulse models` adds one per change, so
/// a real history never comes near it; a record far ahead (written by hand, `u64::MAX`) would
/// freeze every later change, so it is refused.
pub const MAX_EPOCH_STEP: u64 = 1_000_000;

/// Why a replica refuses a deployment record before opening anything it names.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("epoch {got} is not newer than the served epoch {current}; ignored")]
    NotNewer { got: u64, current: u64 },
    #[error("epoch {got} jumps more than {MAX_EPOCH_STEP} past the served epoch {current}; refused (publish changes with vaxpulse models, which takes the next epoch)")]
    EpochJump { got: u64, current: u64 },
    #[error("{0} carries no weights hash of {len} hex digits; refused (vaxpulse models pins every version it publishes)", len = ModelId::HASH_LEN)]
    Unpinned(ModelId),
    #[error("{0} has no manifest sha256 of 64 hex digits in the record's `manifests`; refused (publish with vaxpulse models, which pins every version's manifest)")]
    ManifestUnpinned(ModelId),
    #[error("the record pins a manifest for {0}, which it does not deploy; refused")]
    StrayPin(String),
    #[error("{0} is named twice; refused (a version is a shadow at most once)")]
    Duplicate(ModelId),
    #[error("{0} is both the champion and a shadow; refused")]
    ChampionAsShadow(ModelId),
    #[error("{got} shadows, more than deploy.max_shadows = {max}; refused (retire some, or raise the limit on every replica)")]
    TooManyShadows { got: usize, max: usize },
    #[error("unsigned, but this replica trusts only signed records (deploy.trusted_keys); refused (publish with vaxpulse models and deploy.signing_key_file)")]
    Unsigned,
    #[error("signed by key {0}, which this replica does not trust; refused (add its public key to deploy.trusted_keys, or sign with a trusted key)")]
    UnknownKey(String),
    #[error("the signature of key {0} does not match the record; refused (a record changed after it was signed, or signed for another group)")]
    BadSignature(String),
}

/// What a replica admits from the control topic: signed by a trusted key (when any is
/// trusted), then [`Deployment::check`].
#[derive(Clone)]
pub struct Admission {
    pub group: String,
    pub max_shadows: usize,
    pub trust: sign::Trust,
}

impl Admission {
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, String> {
        Ok(Admission {
            group: cfg.kafka.group_id.clone(),
            max_shadows: cfg.deploy.max_shadows,
            trust: sign::Trust::from_config(&cfg.deploy)?,
        })
    }

    /// Verifies then checks `d` against the served epoch; the signing key's id, if any.
    pub fn admit(&self, d: &Deployment, current_epoch: u64) -> Result<Option<String>, RecordError> {
        // Cheap checks first: an old record is ignored without a signature check.
        if d.epoch <= current_epoch {
            return Err(RecordError::NotNewer {
                got: d.epoch,
                current: current_epoch,
            });
        }
        let key = self.trust.verify(&self.group, d)?;
        d.check(current_epoch, self.max_shadows)?;
        Ok(key)
    }
}

impl RecordError {
    /// Not worth an alarm: an old record read again (replay, compaction lag).
    pub fn is_stale(&self) -> bool {
        matches!(self, RecordError::NotNewer { .. })
    }
}

fn list(ids: &[ModelId]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Versions are the same deployment slot when name and version agree (whatever the hash: a
/// re-export replaces the old weights of that version).
fn same_version(a: &ModelId, b: &ModelId) -> bool {
    a.name == b.name && a.version == b.version
}

impl Deployment {
    /// The deployment a group has before anything was published: the configured model alone.
    pub fn bootstrap(champion: ModelId) -> Self {
        Deployment {
            epoch: 0,
            champion,
            shadows: Vec::new(),
            previous_champion: None,
            action: "bootstrap".into(),
            actor: "config model.dir".into(),
            reason: String::new(),
            changed_at: DateTime::<Utc>::UNIX_EPOCH,
            manifests: BTreeMap::new(),
            signature: None,
        }
    }

    /// The manifest sha256 the record pins for `id` (empty when none).
    pub fn manifest_sha256(&self, id: &ModelId) -> &str {
        self.manifests
            .get(&id.version_label())
            .map_or("", String::as_str)
    }

    /// Keeps the pins of the versions this record names, drops the others.
    pub fn retain_pins(&mut self) {
        let named: Vec<String> = self
            .versions()
            .chain(&self.previous_champion)
            .map(ModelId::version_label)
            .collect();
        self.manifests.retain(|k, _| named.contains(k));
    }

    /// Checks a record read from the control topic against the epoch a replica serves, before
    /// any file it names is opened: a newer epoch within [`MAX_EPOCH_STEP`], every version
    /// pinned to its weights hash, shadows distinct, none the champion, at most `max_shadows`.
    /// (Names and versions are plain directory names already: [`ModelId`] checks them when the
    /// record is parsed.)
    pub fn check(&self, current_epoch: u64, max_shadows: usize) -> Result<(), RecordError> {
        if self.epoch <= current_epoch {
            return Err(RecordError::NotNewer {
                got: self.epoch,
                current: current_epoch,
            });
        }
        if self.epoch - current_epoch > MAX_EPOCH_STEP {
            return Err(RecordError::EpochJump {
                got: self.epoch,
                current: current_epoch,
            });
        }
        if self.shadows.len() > max_shadows {
            return Err(RecordError::TooManyShadows {
                got: self.shadows.len(),
                max: max_shadows,
            });
        }
        let mut seen: Vec<&ModelId> = Vec::with_capacity(self.shadows.len() + 1);
        for v in self.versions() {
            if v.hash.len() != ModelId::HASH_LEN {
                return Err(RecordError::Unpinned(v.clone()));
            }
            let pin = self.manifest_sha256(v);
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RecordError::ManifestUnpinned(v.clone()));
            }
            if seen.iter().any(|s| same_version(s, v)) {
                return Err(if same_version(&self.champion, v) {
                    RecordError::ChampionAsShadow(v.clone())
                } else {
                    RecordError::Duplicate(v.clone())
                });
            }
            seen.push(v);
        }
        let prev = self.previous_champion.as_ref().map(ModelId::version_label);
        if let Some(stray) = self
            .manifests
            .keys()
            .find(|k| prev.as_ref() != Some(*k) && !seen.iter().any(|v| v.version_label() == **k))
        {
            let shown: String = stray.chars().take(ModelId::PART_MAX * 2 + 1).collect();
            return Err(RecordError::StrayPin(shown));
        }
        Ok(())
    }

    /// Every version this deployment scores, champion first.
    pub fn versions(&self) -> impl Iterator<Item = &ModelId> {
        std::iter::once(&self.champion).chain(&self.shadows)
    }

    /// The deployment after `change`, with the next epoch. `model` ids must carry their hash;
    /// the manifests of versions kept are still pinned, a deployed `model`'s pin is left to the
    /// caller (see [`store::pin_missing`]).
    pub fn apply(
        &self,
        change: &Change,
        actor: &str,
        reason: &str,
    ) -> Result<Deployment, ChangeError> {
        let mut next = Deployment {
            // `check` keeps epochs far below u64::MAX; saturate rather than wrap regardless.
            epoch: self.epoch.saturating_add(1),
            action: change.action().into(),
            actor: actor.into(),
            reason: reason.into(),
            changed_at: Utc::now(),
            signature: None,
            ..self.clone()
        };
        match change {
            Change::Deploy { model, champion } => {
                if self.champion == *model {
                    return Err(ChangeError::AlreadyDeployed(model.clone(), "champion"));
                }
                if !champion && self.shadows.contains(model) {
                    return Err(ChangeError::AlreadyDeployed(model.clone(), "shadow"));
                }
                // A re-export of a deployed version replaces it (its new manifest is pinned by
                // whoever resolved `model` from the store: `ops::change`).
                next.shadows.retain(|s| !same_version(s, model));
                next.manifests.remove(&model.version_label());
                if *champion {
                    next.previous_champion = Some(self.champion.clone());
                    if !same_version(&self.champion, model) {
                        next.shadows.push(self.champion.clone());
                    }
                    next.champion = model.clone();
                } else if same_version(&self.champion, model) {
                    return Err(ChangeError::AlreadyDeployed(
                        self.champion.clone(),
                        "champion (a re-export of the champion must be deployed with --champion)",
                    ));
                } else {
                    next.shadows.push(model.clone());
                }
            }
            Change::Promote(model) => {
                if self.champion == *model {
                    return Err(ChangeError::IsChampion(model.clone()));
                }
                let Some(pos) = self.shadows.iter().position(|s| s == model) else {
                    return Err(ChangeError::NotAShadow(model.clone(), list(&self.shadows)));
                };
                next.shadows[pos] = self.champion.clone();
                next.previous_champion = Some(self.champion.clone());
                next.champion = model.clone();
            }
            Change::Rollback => {
                let Some(prev) = self.previous_champion.clone() else {
                    return Err(ChangeError::NoPrevious);
                };
                next.shadows.retain(|s| *s != prev);
                if !same_version(&self.champion, &prev) {
                    next.shadows.insert(0, self.champion.clone());
                }
                next.previous_champion = None;
                next.champion = prev;
            }
            Change::Retire(model) => {
                if self.champion == *model {
                    return Err(ChangeError::IsChampion(model.clone()));
                }
                let before = next.shadows.len();
                next.shadows.retain(|s| s != model);
                if next.shadows.len() == before {
                    return Err(ChangeError::NotAShadow(model.clone(), list(&self.shadows)));
                }
            }
        }
        next.retain_pins();
        Ok(next)
    }

    /// One line: `epoch 3: champion a@2#…, shadows b@1#…` (a refused record may name
    /// thousands of shadows: the line names the first few and counts the rest).
    pub fn summary(&self) -> String {
        const SHOWN: usize = 8;
        let mut shadows = list(&self.shadows[..self.shadows.len().min(SHOWN)]);
        if self.shadows.len() > SHOWN {
            shadows.push_str(&format!(" and {} more", self.shadows.len() - SHOWN));
        }
        format!(
            "epoch {}: champion {}, shadows {shadows}",
            self.epoch, self.champion
        )
    }

    /// The shadows as strings (for ClickHouse rows).
    pub fn shadow_names(&self) -> Vec<String> {
        self.shadows.iter().map(ToString::to_string).collect()
    }
}

/// `user@host` of whoever runs a `vaxpulse models` command (`VAXPULSE_ACTOR` overrides, e.g. a
/// CI job name).
pub fn actor() -> String {
    if let Ok(a) = std::env::var("VAXPULSE_ACTOR") {
        if !a.trim().is_empty() {
            return a;
        }
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

/// This machine's (or container's) host name; `unknown-host` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ModelId {
        ModelId::parse(s).unwrap()
    }

    fn start() -> Deployment {
        Deployment::bootstrap(id("demo@1#aaaaaaaaaaaa"))
    }

    #[test]
    fn shadow_promote_rollback_retire_walk() {
        let d0 = start();
        let b = id("mine@2#bbbbbbbbbbbb");
        let d1 = d0
            .apply(
                &Change::Deploy {
                    model: b.clone(),
                    champion: false,
                },
                "me",
                "",
            )
            .unwrap();
        assert_eq!(
            (d1.epoch, &d1.champion, &d1.shadows),
            (1, &d0.champion, &vec![b.clone()])
        );
        let d2 = d1.apply(&Change::Promote(b.clone()), "me", "").unwrap();
        assert_eq!(d2.champion, b);
        assert_eq!(d2.shadows, vec![d0.champion.clone()]);
        assert_eq!(d2.previous_champion.as_ref(), Some(&d0.champion));
        let d3 = d2.apply(&Change::Rollback, "me", "bad").unwrap();
        assert_eq!(d3.champion, d0.champion);
        assert_eq!(
            d3.shadows,
            vec![b.clone()],
            "the demoted version stays a shadow"
        );
        assert_eq!(d3.epoch, 3);
        assert_eq!(
            d3.apply(&Change::Rollback, "me", ""),
            Err(ChangeError::NoPrevious)
        );
        let d4 = d3.apply(&Change::Retire(b.clone()), "me", "").unwrap();
        assert!(d4.shadows.is_empty());
        assert_eq!(d4.action, "retire");
    }

    #[test]
    fn changes_that_make_no_sense_are_refused_with_the_way_out() {
        let d0 = start();
        let b = id("mine@2#bbbbbbbbbbbb");
        let e = d0.apply(&Change::Promote(b.clone()), "me", "").unwrap_err();
        assert!(
            e.to_string().contains("vaxpulse models deploy mine@2"),
            "{e}"
        );
        assert!(matches!(
            d0.apply(&Change::Retire(d0.champion.clone()), "me", ""),
            Err(ChangeError::IsChampion(_))
        ));
        let d1 = d0
            .apply(
                &Change::Deploy {
                    model: b.clone(),
                    champion: false,
                },
                "me",
                "",
            )
            .unwrap();
        assert!(matches!(
            d1.apply(
                &Change::Deploy {
                    model: b,
                    champion: false
                },
                "me",
                ""
            ),
            Err(ChangeError::AlreadyDeployed(..))
        ));
    }

    #[test]
    fn a_reexport_under_the_same_version_replaces_the_old_weights() {
        let d0 = start();
        let old = id("mine@2#bbbbbbbbbbbb");
        let new = id("mine@2#cccccccccccc");
        let d1 = d0
            .apply(
                &Change::Deploy {
                    model: old,
                    champion: false,
                },
                "me",
                "",
            )
            .unwrap();
        let d2 = d1
            .apply(
                &Change::Deploy {
                    model: new.clone(),
                    champion: false,
                },
                "me",
                "",
            )
            .unwrap();
        assert_eq!(d2.shadows, vec![new]);
        let re = id("demo@1#dddddddddddd");
        let d3 = d2
            .apply(
                &Change::Deploy {
                    model: re.clone(),
                    champion: true,
                },
                "me",
                "",
            )
            .unwrap();
        assert_eq!(d3.champion, re);
        assert!(
            !d3.shadows.iter().any(|s| s.name == "demo"),
            "the old weights of the same version are not kept as a shadow"
        );
    }

    #[test]
    fn changes_keep_the_pins_of_the_versions_they_keep_and_only_those() {
        let mut d0 = start();
        d0.manifests.insert("demo@1".into(), "a".repeat(64));
        let b = id("mine@2#bbbbbbbbbbbb");
        let mut d1 = d0
            .apply(
                &Change::Deploy {
                    model: b.clone(),
                    champion: false,
                },
                "me",
                "",
            )
            .unwrap();
        assert_eq!(
            d1.manifest_sha256(&b),
            "",
            "the caller pins a deployed version"
        );
        d1.manifests.insert("mine@2".into(), "b".repeat(64));
        let d2 = d1.apply(&Change::Promote(b.clone()), "me", "").unwrap();
        assert_eq!(d2.manifests.len(), 2);
        let d3 = d2
            .apply(&Change::Retire(d0.champion.clone()), "me", "")
            .unwrap();
        assert_eq!(
            d3.manifests.keys().collect::<Vec<_>>(),
            ["demo@1", "mine@2"],
            "the previous champion keeps its pin for a rollback"
        );
        let re = id("mine@2#cccccccccccc");
        let d4 = d3
            .apply(
                &Change::Deploy {
                    model: re,
                    champion: true,
                },
                "me",
                "",
            )
            .unwrap();
        assert_eq!(
            d4.manifest_sha256(&b),
            "",
            "a re-export's old pin is never carried to its new weights"
        );
    }

    #[test]
    fn records_are_checked_before_anything_they_name_is_opened() {
        let mut d = start();
        d.epoch = 5;
        d.shadows = vec![id("mine@2#bbbbbbbbbbbb")];
        let e = d.check(4, 4).unwrap_err();
        assert!(matches!(e, RecordError::ManifestUnpinned(_)), "{e}");
        for v in ["demo@1", "mine@2"] {
            d.manifests.insert(v.into(), "ab".repeat(32));
        }
        assert_eq!(d.check(4, 4), Ok(()));
        let mut short_pin = d.clone();
        short_pin.manifests.insert("mine@2".into(), "ab".repeat(6));
        let e = short_pin.check(4, 4).unwrap_err();
        assert!(matches!(e, RecordError::ManifestUnpinned(_)), "{e}");
        let mut stray = d.clone();
        stray.manifests.insert("other@9".into(), "ab".repeat(32));
        assert_eq!(
            stray.check(4, 4),
            Err(RecordError::StrayPin("other@9".into()))
        );
        assert!(d.check(5, 4).unwrap_err().is_stale());
        assert!(d.check(9, 4).unwrap_err().is_stale());
        let mut far = d.clone();
        far.epoch = u64::MAX;
        assert!(matches!(
            far.check(4, 4),
            Err(RecordError::EpochJump { .. })
        ));
        far.epoch = 4 + MAX_EPOCH_STEP;
        assert_eq!(far.check(4, 4), Ok(()));
        let mut dup = d.clone();
        dup.shadows = vec![id("mine@2#bbbbbbbbbbbb"); 200];
        assert!(matches!(
            dup.check(4, 4),
            Err(RecordError::TooManyShadows { got: 200, max: 4 })
        ));
        assert!(matches!(dup.check(4, 1000), Err(RecordError::Duplicate(_))));
        assert!(dup.summary().ends_with("and 192 more"), "{}", dup.summary());
        let mut both = d.clone();
        both.shadows = vec![id("demo@1#cccccccccccc")];
        assert!(matches!(
            both.check(4, 4),
            Err(RecordError::ChampionAsShadow(_))
        ));
        let mut unpinned = d.clone();
        unpinned.shadows = vec![id("mine@2")];
        let e = unpinned.check(4, 4).unwrap_err();
        assert!(matches!(e, RecordError::Unpinned(_)), "{e}");
        let mut short = d;
        short.champion = id("demo@1#abc");
        assert!(matches!(short.check(4, 4), Err(RecordError::Unpinned(_))));
    }

    #[test]
    fn the_record_round_trips_as_json() {
        let d = start();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Deployment>(&json).unwrap(), d);
    }
}
