//! A set of order ids kept as ranges: the orders the polling source has published. Ids come
//! from a sequence, so the set stays a handful of ranges (one more per gap the sequence leaves,
//! e.g. a rolled-back insert), whatever the number of orders.

use std::collections::BTreeMap;
use std::fmt;

/// Order ids as disjoint, non-adjacent inclusive ranges `first → last`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdRanges(BTreeMap<i64, i64>);

impl IdRanges {
    /// Adds one id, merging it with the ranges it touches.
    pub fn insert(&mut self, id: i64) {
        self.insert_range(id, id);
    }

    /// Adds the ids `first..=last`, merging them with the ranges they overlap or touch.
    pub fn insert_range(&mut self, first: i64, last: i64) {
        let (lo, hi) = (first.saturating_sub(1), last.saturating_add(1));
        // Disjoint and sorted: walking down from `hi`, the touching ranges come first.
        let touching: Vec<(i64, i64)> =
            self.0.range(..=hi).rev().take_while(|(_, end)| **end >= lo).map(|(a, b)| (*a, *b)).collect();
        let (mut a, mut b) = (first, last);
        for (start, end) in touching {
            self.0.remove(&start);
            a = a.min(start);
            b = b.max(end);
        }
        self.0.insert(a, b);
    }

    /// PostgreSQL's text form of the set as an `int8multirange` (`{[1,101),[105,201)}`).
    pub fn to_multirange(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(a, b)| match b.checked_add(1) {
                Some(end) => format!("[{a},{end})"),
                None => format!("[{a},)"),
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// Parses [`Display`](fmt::Display)'s form: `1-100,105,110-200` (empty: no id).
    pub fn parse(s: &str) -> Result<IdRanges, String> {
        let mut set = IdRanges::default();
        let mut previous: Option<i64> = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // A range of negative ids reads `-5--1`: the separator is the `-` after a digit.
            let split = part
                .char_indices()
                .skip(1)
                .find(|(i, c)| *c == '-' && part.as_bytes()[i - 1].is_ascii_digit());
            let (a, b) = match split {
                Some((i, _)) => (&part[..i], &part[i + 1..]),
                None => (part, part),
            };
            let num =
                |v: &str| v.parse::<i64>().map_err(|_| format!("`{part}` is not an id or a range of ids"));
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range `{part}` ends before it starts"));
            }
            // Written in order, apart and merged: anything else is not this program's.
            if previous.is_some_and(|last| last.checked_add(1).is_none_or(|next| a <= next)) {
                return Err(format!("range `{part}` is not after the one before it"));
            }
            previous = Some(b);
            set.0.insert(a, b);
        }
        Ok(set)
    }
}

impl fmt::Display for IdRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b { write!(f, "{a}")? } else { write!(f, "{a}-{b}")? }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_merge_into_ranges_in_any_order() {
        let mut s = IdRanges::default();
        for id in [5, 3, 4, 10, 1, 9, 11, 4] {
            s.insert(id);
        }
        assert_eq!(s.to_string(), "1,3-5,9-11");
        s.insert(2);
        assert_eq!(s.to_string(), "1-5,9-11");
        assert_eq!(s.to_multirange(), "{[1,6),[9,12)}");
        s.insert_range(20, 30);
        s.insert_range(6, 8);
        assert_eq!(s.to_string(), "1-11,20-30");
        s.insert_range(0, 40);
        assert_eq!(s.to_string(), "0-40");
    }

    #[test]
    fn the_text_form_round_trips_including_extremes() {
        let mut s = IdRanges::default();
        for id in [-7, -6, -1, 0, 1, i64::MAX, i64::MAX - 1, i64::MIN] {
            s.insert(id);
        }
        let text = s.to_string();
        assert_eq!(text, format!("{},-7--6,-1-1,{}-{}", i64::MIN, i64::MAX - 1, i64::MAX));
        assert_eq!(IdRanges::parse(&text).unwrap(), s);
        assert!(s.to_multirange().ends_with(&format!("[{},)}}", i64::MAX - 1)));
        assert_eq!(IdRanges::parse("").unwrap(), IdRanges::default());
    }

    #[test]
    fn bad_text_is_named() {
        assert!(IdRanges::parse("1-x").unwrap_err().contains("`1-x`"));
        assert!(IdRanges::parse("5-1").unwrap_err().contains("ends before it starts"));
        assert!(IdRanges::parse("1-5,3-9").unwrap_err().contains("not after"));
        assert!(IdRanges::parse("1-5,6").unwrap_err().contains("not after"));
        assert!(IdRanges::parse("9-11,1-8").unwrap_err().contains("not after"));
    }
}
