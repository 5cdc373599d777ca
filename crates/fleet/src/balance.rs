//! Choosing a worker for one request: power of two choices over peak-EWMA load, weighted by
//! measured capacity, in capacity-class tiers (elastic-first fills opportunistic workers up to
//! their capacity before guaranteed ones take the rest).
//!
//! The cost of a worker is its utilisation — outstanding requests over what it holds at its
//! capacity (capacity × its usual latency, by Little's law) — times how far its peak-EWMA
//! latency is above its usual latency. Equal costs then mean equal utilisation, so a worker
//! that measured twice the capacity gets twice the traffic; a worker whose latency jumps (a
//! straggler, a pause) is avoided at once. Idle workers tie at zero: the capacity-weighted draw
//! decides, which again splits by capacity. (Peak-EWMA alone, latency × outstanding, counts a
//! slow worker's slowness twice — in its latency and, through Little's law, in its queue — and
//! gives a half-speed worker a quarter of the traffic.)
//!
//! A pure function over [`Snapshot`]s, so the rules are tested without a network. tower's
//! `balance::p2c` compares unweighted loads among the endpoints of one service; the router
//! needs capacity weights, class tiers, per-model eligibility and per-request exclusion of the
//! workers a retry already tried, so the choice is written here.

use crate::record::CapacityClass;

/// How traffic is spread over capacity classes (`flotilla route --policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Opportunistic workers first, up to their measured capacity while the latency target
    /// holds; guaranteed workers take the rest.
    #[default]
    ElasticFirst,
    /// Every worker by its weighted load, whatever its class.
    Balanced,
    /// Guaranteed workers first, opportunistic ones take the rest (the baseline elastic-first
    /// is measured against).
    GuaranteedFirst,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::ElasticFirst => "elastic-first",
            Policy::Balanced => "balanced",
            Policy::GuaranteedFirst => "guaranteed-first",
        }
    }
}

/// A worker's state for one model, as the router sees it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub class: CapacityClass,
    /// Peak-EWMA latency, nanoseconds.
    pub latency_ns: f64,
    /// Usual latency (a plain moving average), nanoseconds.
    pub base_ns: f64,
    /// The usual latency decayed for the time nothing was observed (what the latency target is
    /// checked against: a worker that was slow once is tried again after a quiet spell).
    pub recent_ns: f64,
    /// Requests the router has sent it and not had back.
    pub outstanding: usize,
    /// Requests per second the router sends it now.
    pub rate: f64,
    /// Requests per second it sustains within the latency target (measured, or a stand-in).
    pub capacity: f64,
    /// The model's latency target, nanoseconds.
    pub target_ns: f64,
    /// Most requests the router keeps outstanding on it; at this it is saturated.
    pub limit: usize,
}

/// Share of its measured capacity up to which a worker counts as having room in its tier.
pub const FILL: f64 = 0.9;

impl Snapshot {
    /// Utilisation times the latency peak: the P2C cost.
    pub fn cost(&self) -> f64 {
        let base = self.base_ns.max(1.0);
        let held_at_capacity = self.capacity.max(1e-9) * base;
        self.outstanding as f64 / held_at_capacity * (self.latency_ns / base).max(1.0)
    }

    fn has_room(&self) -> bool {
        self.outstanding < self.limit
    }

    /// Below its capacity and latency target: the tier above may fill it further. The rate
    /// (smoothed over a second) keeps it under capacity; the outstanding count (instant) keeps
    /// a burst from piling onto it (a worker that just joined has no rate yet): by Little's
    /// law, at its capacity it holds capacity × latency, counted here at a latency halfway
    /// between its usual one and the target.
    fn under_capacity(&self) -> bool {
        let latency_s = (self.base_ns.min(self.target_ns) + self.target_ns) / 2e9;
        self.has_room()
            && self.rate < FILL * self.capacity
            && (self.outstanding as f64) < (FILL * self.capacity * latency_s).max(1.0)
            && self.recent_ns <= self.target_ns
    }
}

/// The outcome of a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Index into the snapshots.
    Worker(usize),
    /// Every candidate is at its outstanding limit: shed the request (429).
    Saturated,
}

/// Picks a worker among `candidates` (already filtered to those that serve the model and were
/// not tried by this request). `random()` returns a uniform number in [0, 1).
///
/// The two candidates are drawn with probability proportional to capacity, so when costs tie
/// (an idle fleet) traffic still splits by capacity; the lower cost of the two wins.
pub fn choose(candidates: &[Snapshot], policy: Policy, mut random: impl FnMut() -> f64) -> Choice {
    let tier = |want: &dyn Fn(&Snapshot) -> bool| -> Vec<usize> {
        candidates.iter().enumerate().filter(|(_, s)| want(s)).map(|(i, _)| i).collect()
    };
    let opportunistic = |s: &Snapshot| s.class == CapacityClass::Opportunistic;
    let tiers: Vec<Vec<usize>> = match policy {
        Policy::ElasticFirst => vec![
            tier(&|s| opportunistic(s) && s.under_capacity()),
            tier(&|s| !opportunistic(s) && s.has_room()),
            tier(&|s| s.has_room()),
        ],
        Policy::GuaranteedFirst => vec![
            tier(&|s| !opportunistic(s) && s.under_capacity()),
            tier(&|s| opportunistic(s) && s.has_room()),
            tier(&|s| s.has_room()),
        ],
        Policy::Balanced => vec![tier(&|s| s.has_room())],
    };
    for t in tiers {
        match t.len() {
            0 => continue,
            1 => return Choice::Worker(t[0]),
            _ => {
                let weight = |i: &usize| candidates[*i].capacity.max(1e-9);
                let a = weighted(&t, weight, random(), None);
                let b = weighted(&t, weight, random(), Some(a));
                let (ca, cb) = (candidates[a].cost(), candidates[b].cost());
                return Choice::Worker(if cb < ca { b } else { a });
            }
        }
    }
    Choice::Saturated
}

/// The member of `tier` (other than `skip`) at `u` ∈ [0, 1) of the cumulative weights.
fn weighted(tier: &[usize], weight: impl Fn(&usize) -> f64, u: f64, skip: Option<usize>) -> usize {
    let total: f64 = tier.iter().filter(|i| Some(**i) != skip).map(&weight).sum();
    let mut at = u * total;
    let mut last = tier[0];
    for i in tier.iter().filter(|i| Some(**i) != skip) {
        last = *i;
        at -= weight(i);
        if at < 0.0 {
            return *i;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-instance worker: its latency is its service time, 1/capacity.
    fn snap(class: CapacityClass, capacity: f64) -> Snapshot {
        Snapshot {
            class,
            latency_ns: 1e9 / capacity,
            base_ns: 1e9 / capacity,
            recent_ns: 1e9 / capacity,
            outstanding: 0,
            rate: 0.0,
            capacity,
            target_ns: 100e6,
            limit: 64,
        }
    }

    /// Simulates `rate` requests per second for `seconds` in 1 ms ticks: each pick adds work
    /// that drains at the worker's capacity; returns the share of picks per worker.
    fn shares(mut fleet: Vec<Snapshot>, policy: Policy, rate: f64, seconds: usize) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut picks = vec![0usize; fleet.len()];
        let mut backlog = vec![0.0f64; fleet.len()];
        let mut due = 0.0;
        for _ in 0..seconds * 1000 {
            for (i, s) in fleet.iter_mut().enumerate() {
                backlog[i] = (backlog[i] - s.capacity / 1000.0).max(0.0);
                s.outstanding = backlog[i].ceil() as usize;
            }
            due += rate / 1000.0;
            while due >= 1.0 {
                due -= 1.0;
                if let Choice::Worker(i) = choose(&fleet, policy, || rng.f64()) {
                    picks[i] += 1;
                    backlog[i] += 1.0;
                    fleet[i].outstanding = backlog[i].ceil() as usize;
                }
            }
        }
        let total: usize = picks.iter().sum();
        picks.iter().map(|p| *p as f64 / total as f64).collect()
    }

    #[test]
    fn share_follows_capacity() {
        let g = CapacityClass::Guaranteed;
        let fleet = vec![snap(g, 400.0), snap(g, 400.0), snap(g, 200.0), snap(g, 40.0)];
        // 60% of the fleet's capacity
        let s = shares(fleet, Policy::Balanced, 0.6 * 1040.0, 30);
        let half = s[2] / ((s[0] + s[1]) / 2.0);
        assert!((0.35..=0.7).contains(&half), "half-speed worker gets about half: {s:?}");
        assert!(s[3] <= 0.05, "a 1/10 straggler gets at most 5%: {s:?}");
    }

    #[test]
    fn elastic_first_fills_opportunistic_before_guaranteed() {
        let (g, o) = (CapacityClass::Guaranteed, CapacityClass::Opportunistic);
        let mut fleet = vec![snap(g, 100.0), snap(o, 100.0), snap(o, 100.0)];
        let pick = |fleet: &[Snapshot]| {
            let mut rng = fastrand::Rng::with_seed(1);
            choose(fleet, Policy::ElasticFirst, || rng.f64())
        };
        assert_ne!(pick(&fleet), Choice::Worker(0), "opportunistic workers with room come first");
        // opportunistic workers at their capacity: the guaranteed one takes the spill
        fleet[1].rate = 95.0;
        fleet[2].rate = 95.0;
        assert_eq!(pick(&fleet), Choice::Worker(0));
        // ... or over their latency target
        fleet[1].rate = 0.0;
        fleet[1].recent_ns = 200e6;
        assert_eq!(pick(&fleet), Choice::Worker(0));
        // guaranteed-first mirrors it
        let mut rng = fastrand::Rng::with_seed(3);
        let fresh = vec![snap(g, 100.0), snap(o, 100.0)];
        assert_eq!(choose(&fresh, Policy::GuaranteedFirst, || rng.f64()), Choice::Worker(0));
    }

    #[test]
    fn saturated_when_every_worker_is_at_its_limit() {
        let g = CapacityClass::Guaranteed;
        let mut fleet = vec![snap(g, 100.0), snap(CapacityClass::Opportunistic, 100.0)];
        for s in &mut fleet {
            s.outstanding = s.limit;
        }
        assert_eq!(choose(&fleet, Policy::ElasticFirst, || 0.0), Choice::Saturated);
        assert_eq!(choose(&fleet, Policy::Balanced, || 0.0), Choice::Saturated);
        assert_eq!(choose(&[], Policy::Balanced, || 0.0), Choice::Saturated);
        fleet[1].outstanding = 0;
        assert_eq!(choose(&fleet, Policy::Balanced, || 0.0), Choice::Worker(1));
    }
}
