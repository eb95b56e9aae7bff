//! A profile's traits, merged last-write-wins by the time the sender says each
//! value was set, so that a late-arriving old event cannot overwrite a newer
//! value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraitSet(BTreeMap<String, (i64, Value)>);

impl TraitSet {
    /// Apply traits observed at `ts_ms`. Equal timestamps: the later call wins,
    /// as it was committed later.
    pub fn observe(&mut self, traits: &Map<String, Value>, ts_ms: i64) -> bool {
        let mut changed = false;
        for (k, v) in traits {
            match self.0.get(k) {
                Some((t, old)) if *t > ts_ms || (*t == ts_ms && old == v) => {}
                _ => {
                    self.0.insert(k.clone(), (ts_ms, v.clone()));
                    changed = true;
                }
            }
        }
        changed
    }

    /// Merge another profile's traits into this one, value by value.
    pub fn absorb(&mut self, other: TraitSet) {
        for (k, (t, v)) in other.0 {
            match self.0.get(&k) {
                Some((mine, _)) if *mine >= t => {}
                _ => {
                    self.0.insert(k, (t, v));
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keep only the traits whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|k, _| keep(k));
    }

    /// The traits as a plain JSON object, for the API.
    pub fn to_object(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of JSON values serialises")
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn newer_values_win_older_ones_do_not() {
        let mut t = TraitSet::default();
        t.observe(&obj(json!({"plan": "free", "name": "Ann"})), 100);
        t.observe(&obj(json!({"plan": "pro"})), 200);
        t.observe(&obj(json!({"plan": "trial", "city": "Oulu"})), 150);
        let o = t.to_object();
        assert_eq!(o["plan"], "pro");
        assert_eq!(o["city"], "Oulu");
        assert_eq!(o["name"], "Ann");
    }

    #[test]
    fn absorb_keeps_the_newest_per_trait() {
        let mut a = TraitSet::default();
        a.observe(&obj(json!({"plan": "free", "x": 1})), 100);
        let mut b = TraitSet::default();
        b.observe(&obj(json!({"plan": "pro", "x": 2})), 200);
        b.observe(&obj(json!({"x": 0})), 50);
        let mut c = TraitSet::default();
        c.observe(&obj(json!({"x": 9})), 300);
        a.absorb(b);
        a.absorb(c);
        assert_eq!(a.to_object()["plan"], "pro");
        assert_eq!(a.to_object()["x"], 9);
        let round = TraitSet::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(round, a);
    }
}
