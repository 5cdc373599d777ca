//! Placement: which workers serve each model the desired state serves from an `artifact`.
//! Guaranteed floors first (`min_guaranteed` replicas on guaranteed workers, which survive losing
//! every opportunistic worker), then opportunistic workers up to `max` to carry the rest, within
//! the allowed hardware kinds; a worker keeps what it has where it still may (no churn), and new
//! replicas go to the workers with the fewest placed models. Re-placed on every control tick,
//! so a preempted worker's models move within a tick of its leaving rotation, and returning
//! capacity is used again. Each worker's assignment and its digest are what the sync serves.

use crate::desired::PlacementSpec;
use crate::record::CapacityClass;
use crate::sync::{self, Assignment, Manifest};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// A worker as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub class: CapacityClass,
    pub hardware: String,
}

/// One model's placement and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Placed {
    pub workers: Vec<String>,
    pub guaranteed: usize,
    pub opportunistic: usize,
    /// Why, in words (floors met or not, what limited it).
    pub reason: String,
}

/// Places `models` (name → spec) on `candidates`, keeping `previous` where it may.
pub fn place(
    models: &BTreeMap<String, PlacementSpec>,
    candidates: &[Candidate],
    previous: &BTreeMap<String, Placed>,
) -> BTreeMap<String, Placed> {
    let mut load: HashMap<&str, usize> = candidates.iter().map(|c| (c.id.as_str(), 0)).collect();
    let mut out = BTreeMap::new();
    for (name, spec) in models {
        let before: BTreeSet<&str> =
            previous.get(name).map(|p| p.workers.iter().map(String::as_str).collect()).unwrap_or_default();
        let eligible: Vec<&Candidate> = candidates.iter().filter(|c| spec.allows(&c.hardware)).collect();
        let pick = |class: CapacityClass, want: usize, load: &mut HashMap<&str, usize>| -> Vec<String> {
            let mut pool: Vec<&Candidate> = eligible.iter().copied().filter(|c| c.class == class).collect();
            // Kept replicas first, then the least loaded; ids break ties (deterministic).
            pool.sort_by_key(|c| {
                (!before.contains(c.id.as_str()), load.get(c.id.as_str()).copied().unwrap_or(0), c.id.clone())
            });
            let chosen: Vec<String> = pool.into_iter().take(want).map(|c| c.id.clone()).collect();
            for id in &chosen {
                if let Some(n) = load.get_mut(id.as_str()) {
                    *n += 1;
                }
            }
            chosen
        };
        let mut guaranteed = pick(CapacityClass::Guaranteed, spec.min_guaranteed, &mut load);
        let room = spec.max.saturating_sub(guaranteed.len());
        let opportunistic = pick(CapacityClass::Opportunistic, room, &mut load);
        // Room left after every opportunistic worker: more guaranteed workers carry the rest.
        let room = spec.max.saturating_sub(guaranteed.len() + opportunistic.len());
        if room > 0 {
            let taken: BTreeSet<String> = guaranteed.iter().cloned().collect();
            let mut pool: Vec<&Candidate> = eligible
                .iter()
                .copied()
                .filter(|c| c.class == CapacityClass::Guaranteed && !taken.contains(&c.id))
                .collect();
            pool.sort_by_key(|c| {
                (!before.contains(c.id.as_str()), load.get(c.id.as_str()).copied().unwrap_or(0), c.id.clone())
            });
            for c in pool.into_iter().take(room) {
                if let Some(n) = load.get_mut(c.id.as_str()) {
                    *n += 1;
                }
                guaranteed.push(c.id.clone());
            }
        }
        let mut reason = Vec::new();
        if guaranteed.len() > spec.min_guaranteed {
            reason.push(format!(
                "{} guaranteed beyond the floor (no opportunistic room left)",
                guaranteed.len() - spec.min_guaranteed
            ));
        }
        if guaranteed.len() < spec.min_guaranteed {
            reason.push(format!(
                "guaranteed floor {} unmet: {} eligible guaranteed workers",
                spec.min_guaranteed,
                guaranteed.len()
            ));
        } else {
            reason.push(format!("guaranteed floor {} met", spec.min_guaranteed));
        }
        let eligible_opp = eligible.iter().filter(|c| c.class == CapacityClass::Opportunistic).count();
        reason.push(format!(
            "{} of {eligible_opp} eligible opportunistic workers (max {})",
            opportunistic.len(),
            if spec.max == usize::MAX { "unbounded".to_string() } else { spec.max.to_string() }
        ));
        if !spec.hardware.is_empty() {
            reason.push(format!("hardware {:?}", spec.hardware));
        }
        let mut workers = guaranteed.clone();
        workers.extend(opportunistic.iter().cloned());
        workers.sort();
        out.insert(
            name.clone(),
            Placed {
                workers,
                guaranteed: guaranteed.len(),
                opportunistic: opportunistic.len(),
                reason: reason.join("; "),
            },
        );
    }
    out
}

/// What a re-placement changed: models whose set of workers changed (with the new placement),
/// and workers whose assignment digest changed (with the new digest).
pub struct Changes {
    pub models: Vec<(String, Placed)>,
    pub workers: Vec<(String, String)>,
}

/// The router's artifacts, placement and per-worker assignments.
#[derive(Default)]
pub struct Placement {
    /// Model → its artifact folder's manifest, rescanned on the control loop.
    manifests: RwLock<BTreeMap<String, (PathBuf, Manifest)>>,
    /// Blob hash → file, for `GET /v2/fleet/blobs/{sha256}`.
    blobs: RwLock<HashMap<String, PathBuf>>,
    hashes: Mutex<BTreeMap<PathBuf, (u64, std::time::SystemTime, String)>>,
    placed: RwLock<BTreeMap<String, Placed>>,
    assignments: RwLock<HashMap<String, Assignment>>,
    /// Artifacts that cannot be read, by model.
    errors: RwLock<BTreeMap<String, String>>,
}

impl Placement {
    /// Rescans the artifacts of `specs` (unchanged files are not hashed again).
    pub fn rescan(&self, specs: &BTreeMap<String, PlacementSpec>) {
        let mut manifests = BTreeMap::new();
        let mut errors = BTreeMap::new();
        {
            let mut hashes = self.hashes.lock();
            for (name, spec) in specs {
                match sync::scan(name, &spec.artifact, &mut hashes) {
                    Ok(m) => {
                        manifests.insert(name.clone(), (spec.artifact.clone(), m));
                    }
                    Err(e) => {
                        // Keep serving the last good manifest of a folder being rewritten.
                        if let Some(old) = self.manifests.read().get(name) {
                            manifests.insert(name.clone(), old.clone());
                        }
                        errors.insert(name.clone(), e.to_string());
                    }
                }
            }
        }
        let mut blobs = HashMap::new();
        for (root, m) in manifests.values() {
            for f in &m.files {
                blobs.insert(f.sha256.clone(), root.join(&f.path));
            }
        }
        *self.blobs.write() = blobs;
        *self.manifests.write() = manifests;
        *self.errors.write() = errors;
    }

    /// Places the models on `candidates` and rebuilds every worker's assignment; returns the
    /// models whose placement changed, with the new one, and the workers whose assignment
    /// digest changed, with the new digest.
    pub fn replace(
        &self,
        specs: &BTreeMap<String, PlacementSpec>,
        candidates: &[Candidate],
        known_workers: &[String],
    ) -> Changes {
        let previous = self.placed.read().clone();
        let placed = place(specs, candidates, &previous);
        let changed: Vec<(String, Placed)> = placed
            .iter()
            .filter(|(name, p)| previous.get(*name).map(|q| q.workers != p.workers).unwrap_or(true))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let manifests = self.manifests.read();
        let mut per_worker: HashMap<String, BTreeMap<String, String>> =
            known_workers.iter().map(|w| (w.clone(), BTreeMap::new())).collect();
        for (model, p) in &placed {
            let Some((_, m)) = manifests.get(model) else { continue };
            for w in &p.workers {
                per_worker.entry(w.clone()).or_default().insert(model.clone(), m.leaf.clone());
            }
        }
        let assignments: HashMap<String, Assignment> = per_worker
            .into_iter()
            .map(|(w, models)| (w, Assignment { digest: sync::assignment_digest(&models), models }))
            .collect();
        let moved: Vec<(String, String)> = {
            let old = self.assignments.read();
            assignments
                .iter()
                .filter(|(w, a)| old.get(*w).map(|o| o.digest != a.digest).unwrap_or(!a.models.is_empty()))
                .map(|(w, a)| (w.clone(), a.digest.clone()))
                .collect()
        };
        *self.assignments.write() = assignments;
        *self.placed.write() = placed;
        Changes { models: changed, workers: moved }
    }

    /// Whether the desired state serves any model from an artifact (else workers are not told
    /// a digest at all).
    pub fn active(&self) -> bool {
        !self.manifests.read().is_empty() || !self.placed.read().is_empty()
    }

    /// The digest `worker` should have applied (what heartbeat answers carry), without copying
    /// its assignment.
    pub fn desired_digest(&self, worker: &str) -> String {
        match self.assignments.read().get(worker) {
            Some(a) => a.digest.clone(),
            None => sync::assignment_digest(&BTreeMap::new()),
        }
    }

    pub fn assignment(&self, worker: &str) -> Assignment {
        self.assignments.read().get(worker).cloned().unwrap_or_else(|| Assignment {
            digest: sync::assignment_digest(&BTreeMap::new()),
            models: BTreeMap::new(),
        })
    }

    pub fn manifest(&self, model: &str) -> Option<Manifest> {
        self.manifests.read().get(model).map(|(_, m)| m.clone())
    }

    pub fn blob(&self, sha256: &str) -> Option<PathBuf> {
        self.blobs.read().get(sha256).cloned()
    }

    pub fn placed(&self) -> BTreeMap<String, Placed> {
        self.placed.read().clone()
    }

    pub fn errors(&self) -> BTreeMap<String, String> {
        self.errors.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min_guaranteed: usize, max: usize, hardware: &[&str]) -> PlacementSpec {
        PlacementSpec {
            artifact: PathBuf::new(),
            min_guaranteed,
            max,
            hardware: hardware.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn worker(id: &str, class: CapacityClass, hw: &str) -> Candidate {
        Candidate { id: id.into(), class, hardware: hw.into() }
    }

    #[test]
    fn floors_first_then_opportunistic_within_max_and_hardware() {
        use CapacityClass::*;
        let ws = vec![
            worker("g0", Guaranteed, "cpu-2c"),
            worker("g1", Guaranteed, "cpu-2c"),
            worker("s0", Opportunistic, "cpu-2c"),
            worker("s1", Opportunistic, "l4"),
            worker("s2", Opportunistic, "cpu-8c"),
        ];
        let models = BTreeMap::from([("a".to_string(), spec(1, 3, &["cpu-*"])), ("b".to_string(), spec(2, 2, &[]))]);
        let p = place(&models, &ws, &BTreeMap::new());
        assert_eq!(p["a"].workers, vec!["g0", "s0", "s2"], "{:?}", p["a"]);
        assert_eq!((p["a"].guaranteed, p["a"].opportunistic), (1, 2));
        assert_eq!(p["b"].workers, vec!["g0", "g1"]);
        // Every opportunistic worker preempted: the floors stay.
        let only_g: Vec<Candidate> = ws.iter().filter(|c| c.class == Guaranteed).cloned().collect();
        let q = place(&models, &only_g, &p);
        assert_eq!(q["a"].workers, vec!["g0", "g1"], "guaranteed workers carry what opportunistic ones did");
        assert_eq!(q["b"].workers, vec!["g0", "g1"]);
        // They come back: used again.
        assert_eq!(
            place(&models, &ws, &q)["a"].workers,
            vec!["g0", "s0", "s2"],
            "opportunistic before guaranteed beyond the floor"
        );
        // No guaranteed worker: the floor is unmet and says so.
        let none = place(&models, &ws[2..], &BTreeMap::new());
        assert!(none["b"].reason.contains("unmet"), "{}", none["b"].reason);
    }

    #[test]
    fn placement_keeps_what_workers_have() {
        use CapacityClass::*;
        let ws = vec![worker("g0", Guaranteed, "x"), worker("g1", Guaranteed, "x")];
        let models = BTreeMap::from([("a".to_string(), spec(1, 1, &[]))]);
        let prev = BTreeMap::from([("a".to_string(), Placed { workers: vec!["g1".into()], ..Placed::default() })]);
        assert_eq!(place(&models, &ws, &prev)["a"].workers, vec!["g1"]);
    }
}
