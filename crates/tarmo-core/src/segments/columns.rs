//! Event facts in columns: one [`EventTable`] per event name, a row per
//! event (the person's index, the time, and each property some rule reads
//! as an id into that property's dictionary of distinct values). A person's
//! events are a list of row numbers in time order ([`Events`]); a count over
//! everyone is one pass over a table's columns.
//!
//! Plaintext: kept in memory only, never written anywhere.

use std::collections::HashMap;

use serde_json::Value;

use super::eval::number;

/// A property the event does not have.
pub const MISSING: u32 = u32::MAX;
/// The person index of a row nobody holds any more (the person was read
/// again, merged or erased).
pub const DEAD: u32 = u32::MAX;

/// The distinct values of one property, each kept once, with its number.
#[derive(Debug, Default, Clone)]
pub struct Dict {
    values: Vec<Value>,
    nums: Vec<f64>,
    index: HashMap<String, u32>,
}

impl Dict {
    pub fn intern(&mut self, v: Value) -> u32 {
        let key = v.to_string();
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.values.len() as u32;
        self.nums.push(number(&v).unwrap_or(f64::NAN));
        self.values.push(v);
        self.index.insert(key, i);
        i
    }

    pub fn get(&self, id: u32) -> Option<&Value> {
        self.values.get(id as usize)
    }

    /// The value as a number ([`number`]), `NaN` when it is none.
    pub fn num(&self, id: u32) -> f64 {
        self.nums.get(id as usize).copied().unwrap_or(f64::NAN)
    }

    pub fn values(&self) -> &[Value] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// One property's column: a dictionary id per row, or [`MISSING`].
#[derive(Debug, Default, Clone)]
pub struct PropCol {
    pub name: Box<str>,
    pub ids: Vec<u32>,
    pub dict: Dict,
}

impl PropCol {
    pub fn get(&self, row: u32) -> Option<&Value> {
        match self.ids.get(row as usize) {
            Some(&MISSING) | None => None,
            Some(&id) => self.dict.get(id),
        }
    }
}

/// The events of one name, a row each, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct EventTable {
    /// The person's index, or [`DEAD`].
    pub person: Vec<u32>,
    pub ts: Vec<i64>,
    /// Columns appear when a property is first seen.
    pub props: Vec<PropCol>,
}

impl EventTable {
    /// Append a row; its number.
    pub fn push(&mut self, person: u32, ts: i64, props: Vec<(String, Value)>) -> u32 {
        let row = self.ts.len() as u32;
        self.person.push(person);
        self.ts.push(ts);
        for (name, v) in props {
            let at = match self.props.iter().position(|c| *c.name == *name) {
                Some(i) => i,
                None => {
                    self.props.push(PropCol {
                        name: name.into_boxed_str(),
                        ids: vec![MISSING; row as usize],
                        dict: Dict::default(),
                    });
                    self.props.len() - 1
                }
            };
            let c = &mut self.props[at];
            let id = c.dict.intern(v);
            c.ids.push(id);
        }
        for c in &mut self.props {
            if c.ids.len() <= row as usize {
                c.ids.push(MISSING);
            }
        }
        row
    }

    pub fn col(&self, name: &str) -> Option<&PropCol> {
        self.props.iter().find(|c| &*c.name == name)
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Insert `row` into a person's list of rows, kept in time order (a
    /// row of the same time goes after those already there).
    pub fn insert_sorted(&self, rows: &mut Vec<u32>, row: u32) {
        let t = self.ts[row as usize];
        let at = rows.partition_point(|&r| self.ts[r as usize] <= t);
        rows.insert(at, row);
    }
}

/// One person's events of one name, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    table: Option<&'a EventTable>,
    rows: &'a [u32],
}

impl<'a> Events<'a> {
    pub const EMPTY: Events<'static> = Events {
        table: None,
        rows: &[],
    };

    pub fn new(table: &'a EventTable, rows: &'a [u32]) -> Self {
        Self {
            table: Some(table),
            rows,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The time of the `i`th event.
    pub fn ts(&self, i: usize) -> i64 {
        match self.table {
            Some(t) => t.ts[self.rows[i] as usize],
            None => unreachable!("no events"),
        }
    }

    /// A property of the `i`th event.
    pub fn prop(&self, i: usize, name: &str) -> Option<&'a Value> {
        let t = self.table?;
        t.col(name)?.get(self.rows[i])
    }

    pub fn first_ts(&self) -> Option<i64> {
        (!self.is_empty()).then(|| self.ts(0))
    }

    pub fn last_ts(&self) -> Option<i64> {
        (!self.is_empty()).then(|| self.ts(self.len() - 1))
    }

    /// The sum of a property's numbers over the events (in any order the
    /// same: [`super::eval::ExactSum`]).
    pub fn sum(&self, name: &str) -> f64 {
        let Some(c) = self.table.and_then(|t| t.col(name)) else {
            return 0.0;
        };
        let mut s = super::eval::ExactSum::default();
        for &r in self.rows {
            let id = c.ids[r as usize];
            if id != MISSING {
                s.add(c.dict.num(id));
            }
        }
        s.value()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_appear_and_rows_stay_in_time_order() {
        let mut t = EventTable::default();
        let mut rows = Vec::new();
        let a = t.push(0, 30, vec![("sku".into(), json!("a"))]);
        t.insert_sorted(&mut rows, a);
        let b = t.push(0, 10, vec![("revenue".into(), json!(12.5))]);
        t.insert_sorted(&mut rows, b);
        let c = t.push(1, 20, vec![("sku".into(), json!("a"))]);
        let e = Events::new(&t, &rows);
        assert_eq!(e.len(), 2);
        assert_eq!((e.ts(0), e.ts(1)), (10, 30));
        assert_eq!(e.prop(0, "sku"), None, "added before the column existed");
        assert_eq!(e.prop(1, "sku"), Some(&json!("a")));
        assert_eq!(e.prop(0, "revenue"), Some(&json!(12.5)));
        assert_eq!(e.sum("revenue"), 12.5);
        // The same value is kept once.
        assert_eq!(t.col("sku").unwrap().dict.len(), 1);
        assert_eq!(t.col("sku").unwrap().get(c), Some(&json!("a")));
    }
}
