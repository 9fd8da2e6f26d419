//! What the benchmarks share: their knobs, the median and percentiles they report, and a
//! watcher that sees when each order becomes readable in the lake.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::Int64Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Customers of the benchmarks' generated orders.
pub const CUSTOMERS: [&str; 8] = [
    "John Doe",
    "Jane Smith",
    "Amit Kumar",
    "Sara Lee",
    "Li Wei",
    "Maria Garcia",
    "Omar Haddad",
    "Zoë Müller",
];
/// Their restaurants.
pub const RESTAURANTS: [&str; 5] =
    ["Burger Junction", "Pizza Palace", "Sushi Central", "Curry House", "Taco Town"];
/// Their items.
pub const ITEMS: [&str; 6] =
    ["Veg Burger", "Margherita", "California Roll", "Butter Chicken", "Tacos", "Fries"];

/// The value of the environment variable `name`, or `default` when unset or unparsable.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median (the upper middle one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The value at fraction `p` (0..=1) of an ascending list (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Rows committed by a consumer, from its checkpoint's partition states.
pub fn committed_rows(checkpoints: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(checkpoints.join("state")) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["rows_written"].as_u64().unwrap_or(0))
        .sum()
}

/// Committed Parquet files under the lake.
pub fn lake_files(lake: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dates) = std::fs::read_dir(lake) else { return out };
    for d in dates.filter_map(|e| e.ok()) {
        if !d.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else { continue };
        out.extend(
            files
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "parquet")),
        );
    }
    out
}

/// The `order_id` column of one lake file.
pub fn order_ids(file: &Path) -> Vec<i64> {
    let f = std::fs::File::open(file).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("order_id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        ids.extend(col.values().iter().copied());
    }
    ids
}

/// Watches a lake (listing it every 10 ms) and records when each order id first became
/// readable, until stopped.
pub struct LakeWatcher {
    /// Order id → the moment the watcher first found a file holding it.
    pub seen: Arc<Mutex<HashMap<i64, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl LakeWatcher {
    /// Starts watching `lake`.
    pub fn start(lake: PathBuf) -> LakeWatcher {
        let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut known = HashSet::new();
                while !stop.load(Ordering::SeqCst) {
                    for f in lake_files(&lake) {
                        if known.insert(f.clone()) {
                            let now = Instant::now();
                            let mut seen = seen.lock().unwrap();
                            for id in order_ids(&f) {
                                seen.entry(id).or_insert(now);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                known.len()
            })
        };
        LakeWatcher { seen, stop, thread: Some(thread) }
    }

    /// Starts watching a local Delta table: a row is readable once the commit that adds its
    /// file exists (`_delta_log/<version>.json`), which is what a Delta reader goes by.
    pub fn start_delta(table: PathBuf) -> LakeWatcher {
        let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut known = HashSet::new();
                let mut files = 0;
                while !stop.load(Ordering::SeqCst) {
                    let log = table.join("_delta_log");
                    let names: Vec<String> = std::fs::read_dir(&log)
                        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                        .unwrap_or_default();
                    for name in names {
                        if !name.ends_with(".json") || name.len() != 25 || !known.insert(name.clone()) {
                            continue;
                        }
                        let now = Instant::now();
                        let text = std::fs::read_to_string(log.join(&name)).unwrap_or_default();
                        for line in text.lines() {
                            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                            let Some(path) = v["add"]["path"].as_str() else { continue };
                            files += 1;
                            let mut seen = seen.lock().unwrap();
                            for id in order_ids(&table.join(path)) {
                                seen.entry(id).or_insert(now);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                files
            })
        };
        LakeWatcher { seen, stop, thread: Some(thread) }
    }

    /// Stops watching and returns the number of files seen.
    pub fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for LakeWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}
