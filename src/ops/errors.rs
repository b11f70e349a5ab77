//! The last errors clients got (drover's refusals and the servers' errors it relayed), kept
//! for the dashboard: a fixed number, newest last.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;

/// The last errors clients were answered with, newest last.
#[derive(Default)]
pub(crate) struct RecentErrors {
    list: Mutex<VecDeque<Value>>,
}

/// How many errors the dashboard shows.
const KEEP: usize = 30;

impl RecentErrors {
    pub(crate) fn push(&self, entry: Value) {
        let mut list = self.list.lock().unwrap();
        if list.len() == KEEP {
            list.pop_front();
        }
        list.push_back(entry);
    }

    pub(crate) fn snapshot(&self) -> Vec<Value> {
        self.list.lock().unwrap().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_last_errors() {
        let r = RecentErrors::default();
        for i in 0..40 {
            r.push(json!(i));
        }
        let s = r.snapshot();
        assert_eq!((s.len(), s[0].clone(), s[29].clone()), (30, json!(10), json!(39)));
    }
}
