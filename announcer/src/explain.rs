//! `announcer explain NAME`: the decision for one container, as text (for a person) or as
//! JSON (`--output json`, for a script). Both are renderings of one [`Explanation`].

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::args::{ExplainArgs, Output};
use crate::health::{self, Check};
use crate::record::{self, Mode, Rules};
use crate::{Args, Error, docker, owner, reconcile, registry};

/// Everything `explain` found out about one container.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The container's name.
    pub container: String,
    /// Its id.
    pub id: String,
    /// Docker's state (`running`, `exited`, ...).
    pub state: String,
    /// Docker's health verdict (`healthy`, `unhealthy`, `starting`), when it has a healthcheck.
    pub docker_health: Option<String>,
    /// `container` (with --service) or `host` (labels).
    pub mode: ExplainMode,
    /// Why it is not announced at all (`None`: it is, see `records`).
    pub not_announced: Option<String>,
    /// Ports left out and similar remarks.
    pub notes: Vec<String>,
    /// The records it would become.
    pub records: Vec<RecordExplanation>,
}

/// How the container was explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainMode {
    /// As `announcer container` would follow it.
    Container,
    /// As `announcer host` would (labels, registrator's variables).
    Host,
}

/// One record of an [`Explanation`].
#[derive(Clone, Debug, Serialize)]
pub struct RecordExplanation {
    /// Service name.
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// One line per decision.
    pub why: Vec<String>,
    /// Key layout (`fields`, `value`, `json`).
    pub layout: String,
    /// The lease's TTL it would be written on, in seconds.
    pub ttl_seconds: f64,
    /// The same, for the text.
    #[serde(skip)]
    pub ttl: Duration,
    /// The keys and values it would write, in order.
    pub keys: Vec<KeyValue>,
    /// The check that gates it (`tcp`, `http:/path`, `docker`, `none`).
    pub check: String,
    /// Whether the check passes now.
    pub check_passes: bool,
    /// Why it does not (when it does not).
    pub check_error: Option<String>,
    /// Who holds the record's keys in etcd now.
    pub etcd: Holder,
}

/// One key to write.
#[derive(Clone, Debug, Serialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// Who holds a record's keys (one owner per record).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "holder", rename_all = "snake_case")]
pub enum Holder {
    /// Nobody: it would be written.
    Free {
        /// The record's key.
        key: String,
    },
    /// This host's record of this unit: it would be taken over.
    Ours {
        /// The record's key.
        key: String,
    },
    /// Another announcer.
    Conflict {
        /// The record's key.
        key: String,
        /// Who, and what to do about it.
        detail: String,
    },
    /// Not checked (etcd not reachable).
    Unchecked {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Free { key } => write!(f, "etcd: {key} is free: it would be written"),
            Holder::Ours { key } => write!(
                f,
                "etcd: {key} holds this host's record of this unit: it would be taken over"
            ),
            Holder::Conflict { detail, .. } => write!(f, "etcd: conflict: {detail}"),
            Holder::Unchecked { reason } => f.write_str(reason),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let health = self
            .docker_health
            .as_ref()
            .map(|h| format!(", docker health {h}"))
            .unwrap_or_default();
        let how = match self.mode {
            ExplainMode::Container => "container mode",
            ExplainMode::Host => "host mode (labels)",
        };
        writeln!(
            f,
            "container {} ({}): {}{health}; explained as {how}",
            self.container,
            docker::short(&self.id),
            self.state
        )?;
        if let Some(why) = &self.not_announced {
            return writeln!(f, "not announced: {why}");
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for r in &self.records {
            writeln!(f, "record {}/{}:", r.service, r.instance)?;
            for line in &r.why {
                writeln!(f, "  {line}")?;
            }
            writeln!(f, "would write ({} layout, on a lease of {:?}):", r.layout, r.ttl)?;
            for kv in &r.keys {
                writeln!(f, "  {} = {}", kv.key, kv.value)?;
            }
            match &r.check_error {
                None => writeln!(f, "check {} passes now: it would be announced", r.check)?,
                Some(reason) => writeln!(f, "check {} fails now ({reason}): it would wait", r.check)?,
            }
            writeln!(f, "{}", r.etcd)?;
        }
        Ok(())
    }
}

/// Runs `explain` and prints the answer in the `--output` format.
///
/// # Errors
/// Docker unreachable, no such container, a record that cannot be built.
pub async fn run(args: &Args, e: &ExplainArgs) -> Result<(), Error> {
    let x = explain(args, e).await?;
    match e.output {
        Output::Text => print!("{x}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&x).unwrap_or_default()),
    }
    Ok(())
}

/// The decision for one container.
///
/// # Errors
/// As [`run`].
pub async fn explain(args: &Args, e: &ExplainArgs) -> Result<Explanation, Error> {
    let machine = args.machine()?;
    let docker = docker::connect(&args.docker_host).await?;
    // Only to show who holds the record's keys: explain works without etcd.
    let mut etcd = match args.etcd.resolve().await {
        Ok(config) => config.connect().await.ok(),
        Err(_) => None,
    };
    let facts = docker::inspect(&docker, &e.name)
        .await?
        .ok_or_else(|| Error::NoContainer(e.name.clone()))?;
    let mode = e.mode();
    let mut x = Explanation {
        container: facts.name.clone(),
        id: facts.id.clone(),
        state: facts.state.name().to_owned(),
        docker_health: facts.health.map(|h| format!("{h:?}").to_lowercase()),
        mode: match mode {
            Mode::Container(_) => ExplainMode::Container,
            Mode::Host(_) => ExplainMode::Host,
        },
        not_announced: None,
        notes: Vec::new(),
        records: Vec::new(),
    };
    if !facts.is_up() {
        x.not_announced = Some(format!("the container is {}", facts.state.name()));
        return Ok(x);
    }
    let rules = Rules {
        mode,
        check: args.check.clone(),
    };
    let (planned, notes) = match record::record_for(&facts, &machine, &rules)? {
        record::Decision::Skip(skip) => {
            x.not_announced = Some(skip.to_string());
            return Ok(x);
        }
        record::Decision::Announce { planned, notes } => (planned, notes),
    };
    x.notes = notes.iter().map(ToString::to_string).collect();
    for plan in &planned {
        let verdict = match &plan.check {
            Check::Docker => match facts.health {
                Some(docker::Health::Healthy) => Ok(()),
                other => Err(format!("Docker health is {other:?}")),
            },
            check => health::probe(check, &plan.target, args.check_timeout, &mut false).await,
        };
        x.records.push(RecordExplanation {
            service: plan.record.service.clone(),
            instance: plan.record.instance.clone(),
            why: plan.why.clone(),
            layout: plan.layout.to_string(),
            ttl_seconds: args.ttl.as_secs_f64(),
            ttl: args.ttl,
            keys: plan
                .record
                .entries_with_meta(&args.prefix, plan.layout, &plan.meta)
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
            check: plan.check.to_string(),
            check_passes: verdict.is_ok(),
            check_error: verdict.err(),
            etcd: holder(&mut etcd, &args.prefix, plan).await,
        });
    }
    Ok(x)
}

/// Who holds the record's keys in etcd now.
async fn holder(etcd: &mut Option<etcd_client::Client>, prefix: &str, plan: &record::Planned) -> Holder {
    let Some(client) = etcd else {
        return Holder::Unchecked {
            reason: "etcd not reachable: who holds the record was not checked".to_owned(),
        };
    };
    let ann = reconcile::Announcement {
        record: plan.record.clone(),
        layout: plan.layout,
        meta: plan.meta.clone(),
    };
    match registry::holder_of(client, prefix, &ann).await {
        Ok((key, owner::Holder::Free)) => Holder::Free { key },
        Ok((key, owner::Holder::Ours | owner::Holder::OwnEarlier)) => Holder::Ours { key },
        Ok((key, owner::Holder::Other(conflict))) => Holder::Conflict {
            key,
            detail: conflict.to_string(),
        },
        Err(e) => Holder::Unchecked {
            reason: format!("etcd: who holds the record was not checked: {e}"),
        },
    }
}
