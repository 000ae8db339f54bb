//! The figures of one run: what the table prints and what `summary.json` holds (pure).
//!
//! `summary.json` has one object per benchmark (`announce`, `withdraw`, `shell`,
//! `footprint`, `lb_sync`, `dbhelper`, `haproxy`, `fleet`) whose keys are the figure names of issue 7 and
//! whose values are plain numbers: milliseconds (`_ms`), bytes (`_bytes`), seconds
//! (`_s_...`), counts, or ratios. Beside them, `meta` (machine, date, mode, settings,
//! notes) and `targets` (each target, the value measured, met or not).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// One measured number.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Figure name, e.g. `announce_p99_ms`.
    pub name: String,
    /// The value (milliseconds, bytes, a ratio or a count, as the name says).
    pub value: f64,
}

/// One benchmark's figures and notes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// Benchmark name: the key in `summary.json`.
    pub name: String,
    /// Figures in the order they were measured.
    pub figures: Vec<Figure>,
    /// What a reader needs to know to read the figures (settings, caveats).
    pub notes: Vec<String>,
    /// Goals that depend on the run's settings (the fleet's hosts and TTL), judged like
    /// the fixed ones of [`targets`].
    pub goals: Vec<(String, Goal)>,
}

impl Section {
    /// An empty section.
    #[must_use]
    pub fn new(name: &str) -> Section {
        Section {
            name: name.to_owned(),
            ..Section::default()
        }
    }

    /// Adds a figure; a `None` value (nothing measured) is skipped.
    pub fn add(&mut self, name: &str, value: impl Into<Option<f64>>) {
        if let Some(value) = value.into().filter(|v| v.is_finite()) {
            self.figures.push(Figure {
                name: name.to_owned(),
                value,
            });
        }
    }

    /// Sets the goal of a figure of this section (replacing an earlier one).
    pub fn goal(&mut self, figure: &str, goal: Goal) {
        self.goals.retain(|(f, _)| f != figure);
        self.goals.push((figure.to_owned(), goal));
    }

    /// Adds a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The value of a figure.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.value)
    }
}

/// What a figure should be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// `value <= x`.
    AtMost(f64),
    /// `value < x`.
    Below(f64),
    /// `value >= x`.
    AtLeast(f64),
    /// `value == x`.
    Exactly(f64),
}

impl Goal {
    /// Whether `value` meets the goal.
    #[must_use]
    pub fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(x) => value <= x,
            Goal::Below(x) => value < x,
            Goal::AtLeast(x) => value >= x,
            Goal::Exactly(x) => (value - x).abs() < 1e-9,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtMost(x) => write!(f, "<= {}", number(*x)),
            Goal::Below(x) => write!(f, "< {}", number(*x)),
            Goal::AtLeast(x) => write!(f, ">= {}", number(*x)),
            Goal::Exactly(x) => write!(f, "= {}", number(*x)),
        }
    }
}

/// 8 MiB, the size and memory budget of each binary.
pub const EIGHT_MIB: f64 = 8.0 * 1024.0 * 1024.0;

/// The targets of issue 7: `(benchmark, figure, goal)`.
#[must_use]
pub fn targets() -> Vec<(&'static str, &'static str, Goal)> {
    vec![
        // What the announcer adds, over the bare transaction (issue 18): the end-to-end
        // `announce_over_bare_p99` and `withdraw_p99_ms` stay reported figures (they hold
        // Docker's event delivery and the service starting to listen).
        ("announce", "announcer_added_over_bare_p99", Goal::AtMost(1.5)),
        ("withdraw", "withdraw_added_over_bare_p99", Goal::AtMost(1.5)),
        ("shell", "speedup_p50", Goal::AtLeast(100.0)),
        ("footprint", "rss_500_bytes", Goal::AtMost(EIGHT_MIB)),
        ("footprint", "idle_writes_per_ttl", Goal::Exactly(0.0)),
        ("footprint", "binary_bytes_announcer", Goal::AtMost(EIGHT_MIB)),
        ("footprint", "binary_bytes_lb_sync", Goal::AtMost(EIGHT_MIB)),
        ("footprint", "binary_bytes_dbhelper", Goal::AtMost(EIGHT_MIB)),
        ("lb_sync", "scale_0_to_10_calls_over_min", Goal::Exactly(0.0)),
        ("lb_sync", "scale_10_to_3_calls_over_min", Goal::Exactly(0.0)),
        ("dbhelper", "seed_speedup", Goal::AtLeast(5.0)),
        ("haproxy", "rolling_requests_failed", Goal::Exactly(0.0)),
        // 100 ms plus lb-sync's debounce MIN (haproxy.rs runs it with 100 ms).
        (
            "haproxy",
            "withdraw_to_drain_p99_ms",
            Goal::Below(100.0 + crate::haproxy::DEBOUNCE_MIN_MS),
        ),
        ("dbhelper", "gen_speedup", Goal::AtLeast(3.0)),
        (
            "dbhelper",
            "gen_seed_peak_rss_bytes",
            Goal::AtMost(64.0 * 1024.0 * 1024.0),
        ),
    ]
}

/// One target checked against a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Benchmark.
    pub section: String,
    /// Figure.
    pub figure: String,
    /// The goal.
    pub goal: Goal,
    /// The value measured (`None`: not measured in this run).
    pub value: Option<f64>,
}

impl Verdict {
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    #[must_use]
    pub fn met(&self) -> Option<bool> {
        self.value.map(|v| self.goal.met(v))
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Machine, date, mode and settings.
    pub meta: BTreeMap<String, Value>,
    /// The benchmarks, in the order they ran.
    pub sections: Vec<Section>,
}

impl Summary {
    /// The section named `name`.
    #[must_use]
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Every target with the value of this run: the fixed ones, then those the sections
    /// set for themselves.
    #[must_use]
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut out: Vec<Verdict> = targets()
            .into_iter()
            .map(|(section, figure, goal)| Verdict {
                section: section.to_owned(),
                figure: figure.to_owned(),
                goal,
                value: self.section(section).and_then(|s| s.get(figure)),
            })
            .collect();
        for s in &self.sections {
            for (figure, goal) in &s.goals {
                if !out.iter().any(|v| v.section == s.name && v.figure == *figure) {
                    out.push(Verdict {
                        section: s.name.clone(),
                        figure: figure.clone(),
                        goal: *goal,
                        value: s.get(figure),
                    });
                }
            }
        }
        out
    }

    /// The goal of a figure, if it has one: a fixed target first, else the section's own.
    fn goal_of(section: &Section, figure: &str) -> Option<Goal> {
        targets()
            .into_iter()
            .find(|(s, f, _)| *s == section.name && *f == figure)
            .map(|(_, _, g)| g)
            .or_else(|| section.goals.iter().find(|(f, _)| f == figure).map(|(_, g)| *g))
    }

    /// `summary.json`'s document.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        let mut meta: Map<String, Value> = self.meta.clone().into_iter().collect();
        let notes: Map<String, Value> = self
            .sections
            .iter()
            .filter(|s| !s.notes.is_empty())
            .map(|s| (s.name.clone(), json!(s.notes)))
            .collect();
        meta.insert("notes".into(), Value::Object(notes));
        root.insert("meta".into(), Value::Object(meta));
        for s in &self.sections {
            let figures: Map<String, Value> = s
                .figures
                .iter()
                .map(|f| (f.name.clone(), json_number(f.value)))
                .collect();
            root.insert(s.name.clone(), Value::Object(figures));
        }
        let verdicts: Vec<Value> = self
            .verdicts()
            .iter()
            .map(|v| {
                json!({
                    "benchmark": v.section,
                    "figure": v.figure,
                    "target": v.goal.to_string(),
                    "value": v.value.map(json_number),
                    "met": v.met(),
                })
            })
            .collect();
        root.insert("targets".into(), Value::Array(verdicts));
        Value::Object(root)
    }

    /// The table printed at the end of a run (plain text, aligned columns).
    #[must_use]
    pub fn table(&self) -> String {
        let rows = self.rows();
        let w: [usize; 4] = [0, 1, 2, 3].map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0));
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            );
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let rule: usize = w.iter().sum::<usize>() + 8 + 6;
                out.push_str(&"-".repeat(rule));
                out.push('\n');
            }
        }
        out
    }

    /// The same table in Markdown, for BENCHMARKS.md.
    #[must_use]
    pub fn markdown(&self) -> String {
        let rows = self.rows();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let _ = writeln!(out, "| {} | `{}` | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
            if i == 0 {
                out.push_str("|---|---|---:|---|---|\n");
            }
        }
        // The header's figure column is not code.
        out.replacen("| `figure` |", "| figure |", 1)
    }

    fn rows(&self) -> Vec<[String; 5]> {
        let mut rows = vec![["benchmark", "figure", "value", "target", "met"].map(String::from)];
        for s in &self.sections {
            for f in &s.figures {
                let goal = Summary::goal_of(s, &f.name);
                rows.push([
                    s.name.clone(),
                    f.name.clone(),
                    display_value(&f.name, f.value),
                    goal.map(|g| display_goal(&f.name, g)).unwrap_or_default(),
                    match goal {
                        Some(g) if g.met(f.value) => "yes".into(),
                        Some(_) => "MISSED".into(),
                        None => String::new(),
                    },
                ]);
            }
        }
        rows
    }
}

/// A JSON number: integers stay integers, others keep 3 decimals.
fn json_number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!((v * 1000.0).round() / 1000.0)
    }
}

/// A number for people: integers plain, small values with 2-3 significant decimals.
#[must_use]
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A value with a unit suffix people read at a glance (`7.2 MiB` beside the bytes).
fn display_value(name: &str, v: f64) -> String {
    if name.contains("bytes") && v >= 1024.0 * 1024.0 {
        format!("{} ({:.2} MiB)", number(v), v / 1024.0 / 1024.0)
    } else {
        number(v)
    }
}

fn display_goal(name: &str, g: Goal) -> String {
    let mib = |x: f64| format!("{} MiB", number(x / 1024.0 / 1024.0));
    match g {
        Goal::AtMost(x) if name.contains("bytes") => format!("<= {}", mib(x)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let mut a = Section::new("announce");
        a.add("announce_p50_ms", 4.25);
        a.add("announce_p99_ms", 12.0);
        a.add("bare_txn_p99_ms", 3.0);
        a.add("announcer_added_over_bare_p99", 4.0);
        a.add("not_measured_ms", None);
        a.add("nan_is_dropped", f64::NAN);
        a.note("200 containers");
        let mut f = Section::new("footprint");
        f.add("rss_500_bytes", 5.0 * 1024.0 * 1024.0);
        f.add("idle_writes_per_ttl", 0.0);
        Summary {
            meta: BTreeMap::from([("mode".to_owned(), json!("full"))]),
            sections: vec![a, f],
        }
    }

    #[test]
    fn json_has_one_object_per_benchmark_with_figure_names_as_keys() {
        let j = sample().to_json();
        assert_eq!(j["announce"]["announce_p50_ms"], json!(4.25));
        assert_eq!(j["announce"]["announce_p99_ms"], json!(12));
        assert_eq!(j["footprint"]["rss_500_bytes"], json!(5_242_880));
        assert!(j["announce"].get("not_measured_ms").is_none());
        assert!(j["announce"].get("nan_is_dropped").is_none());
        assert_eq!(j["meta"]["mode"], json!("full"));
        assert_eq!(j["meta"]["notes"]["announce"], json!(["200 containers"]));
        // Every benchmark object holds numbers only.
        for name in ["announce", "footprint"] {
            assert!(j[name].as_object().unwrap().values().all(Value::is_number), "{name}");
        }
    }

    #[test]
    fn targets_are_judged_and_unmeasured_ones_say_so() {
        let j = sample().to_json();
        let targets = j["targets"].as_array().unwrap();
        let find = |fig: &str| targets.iter().find(|t| t["figure"] == fig).unwrap().clone();
        assert_eq!(find("announcer_added_over_bare_p99")["met"], json!(false));
        assert_eq!(find("announcer_added_over_bare_p99")["target"], json!("<= 1.50"));
        assert_eq!(find("rss_500_bytes")["met"], json!(true));
        assert_eq!(find("idle_writes_per_ttl")["met"], json!(true));
        assert_eq!(find("seed_speedup")["met"], Value::Null);
        assert_eq!(find("seed_speedup")["value"], Value::Null);
    }

    #[test]
    fn a_sections_own_goals_are_judged_beside_the_fixed_ones() {
        let mut s = sample();
        let mut fleet = Section::new("fleet");
        fleet.add("keepalives_per_s", 28.0);
        fleet.add("host_death_to_drained_ms", 11_000.0);
        fleet.goal("keepalives_per_s", Goal::AtMost(30.0));
        fleet.goal("host_death_to_drained_ms", Goal::AtMost(12_000.0));
        // A later goal replaces an earlier one.
        fleet.goal("host_death_to_drained_ms", Goal::AtMost(10_700.0));
        fleet.goal("records_missing_during_leader_kill", Goal::Exactly(0.0));
        s.sections.push(fleet);
        let j = s.to_json();
        let targets = j["targets"].as_array().unwrap();
        let find = |fig: &str| targets.iter().find(|t| t["figure"] == fig).unwrap().clone();
        assert_eq!(find("keepalives_per_s")["met"], json!(true));
        assert_eq!(find("keepalives_per_s")["benchmark"], json!("fleet"));
        assert_eq!(find("host_death_to_drained_ms")["met"], json!(false));
        assert_eq!(find("host_death_to_drained_ms")["target"], json!("<= 10700"));
        assert_eq!(find("records_missing_during_leader_kill")["met"], Value::Null);
        assert_eq!(
            targets
                .iter()
                .filter(|t| t["figure"] == "host_death_to_drained_ms")
                .count(),
            1
        );
        // The fixed targets are all still there.
        assert_eq!(targets.len(), super::targets().len() + 3);
        let t = s.table();
        let line = t.lines().find(|l| l.contains("host_death_to_drained_ms")).unwrap();
        assert!(line.contains("<= 10700") && line.contains("MISSED"), "{line}");
        let line = t.lines().find(|l| l.contains("keepalives_per_s")).unwrap();
        assert!(line.contains("<= 30") && line.contains("yes"), "{line}");
    }

    #[test]
    fn goals() {
        let cases = [
            (Goal::AtMost(3.0), 3.0, true),
            (Goal::AtMost(3.0), 3.01, false),
            (Goal::Below(50.0), 50.0, false),
            (Goal::Below(50.0), 49.9, true),
            (Goal::AtLeast(100.0), 100.0, true),
            (Goal::AtLeast(100.0), 99.0, false),
            (Goal::Exactly(0.0), 0.0, true),
            (Goal::Exactly(0.0), 1.0, false),
        ];
        for (g, v, want) in cases {
            assert_eq!(g.met(v), want, "{g} with {v}");
        }
    }

    #[test]
    fn table_and_markdown_show_values_targets_and_misses() {
        let s = sample();
        let t = s.table();
        let line = t.lines().find(|l| l.contains("announcer_added_over_bare_p99")).unwrap();
        assert!(line.contains("<= 1.50") && line.contains("MISSED"), "{line}");
        let rss = t.lines().find(|l| l.contains("rss_500_bytes")).unwrap();
        assert!(
            rss.contains("5.00 MiB") && rss.contains("<= 8 MiB") && rss.contains("yes"),
            "{rss}"
        );
        let md = s.markdown();
        assert!(
            md.starts_with("| benchmark | figure | value | target | met |\n|---|"),
            "{md}"
        );
        assert!(md.contains("| announce | `announce_p50_ms` | 4.25 |  |  |"), "{md}");
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.4567), "0.46");
        assert_eq!(number(0.04567), "0.046");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1234.4), "1234");
    }
}
