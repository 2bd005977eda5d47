//! The terminal side: the same views as the page, printed as text. An application gets it
//! in a few lines, since replaying needs its types (see [`Inspector::run_cli`]).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;

use crate::error::InspectError;
use crate::inspector::{parse_time, Inspector, Until};
use crate::views::{EventView, Pairs};

/// The inspector's command line: `<program> <command> …`.
#[derive(Debug, Parser)]
#[command(about = "Inspect an event store: categories, aggregates, replays, projections")]
pub struct Cli {
    /// What to show.
    #[command(subcommand)]
    pub command: Command,
}

/// One inspector command. Embed it in an application's own CLI as a subcommand, or parse
/// it with [`Cli`].
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Lists the categories, with how many events each holds.
    Categories,
    /// Lists the aggregate ids of a category, in the order they started, in pages.
    Aggregates {
        /// The category.
        category: String,
        /// Continue after this cursor (printed at the end of a full page).
        #[arg(long)]
        after: Option<String>,
        /// How many ids (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Prints an aggregate's events.
    Events {
        /// The category.
        category: String,
        /// The aggregate id.
        id: String,
        /// The first version to print.
        #[arg(long)]
        from: Option<u64>,
        /// The last version to print.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Replays an aggregate: prints each event, then the state after it (`*` marks the
    /// fields it changed).
    Replay {
        /// The category.
        category: String,
        /// The aggregate id.
        id: String,
        /// Stop at the last event stored at or before this time (RFC 3339, or
        /// milliseconds since the epoch).
        #[arg(long, conflicts_with = "version")]
        as_of: Option<String>,
        /// Stop at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Prints the events appended to a category from now on, as they come.
    Tail {
        /// The category.
        category: String,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Lists the registered projections with their lag, pending events and dead letters.
    Projections,
    /// Lists a projection's dead letters with their errors.
    DeadLetters {
        /// The projection.
        projection: String,
    },
    /// Hands a projection's dead letters to it again, after a fix (needs writes allowed).
    Redrive {
        /// The projection.
        projection: String,
    },
    /// Serves the inspector's page and API.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
    },
}

impl Inspector {
    /// Runs the command line `args` (the program name first, as `std::env::args_os`
    /// gives it), printing to stdout; `--help` and malformed arguments print clap's
    /// message and exit the process, as a CLI does.
    ///
    /// ```no_run
    /// # use es_core::{Aggregate, Apply, Event, InMemoryStore};
    /// # #[derive(Event)] struct Registered { name: String }
    /// # #[derive(Event)] enum UserEvent { Registered(Registered) }
    /// # #[derive(Aggregate, Default)] #[aggregate(event = UserEvent)] struct User { name: String }
    /// # impl Apply<Registered> for User { fn apply(&mut self, e: &Registered) { self.name = e.name.clone(); } }
    /// # async fn connect() -> InMemoryStore { InMemoryStore::new() }
    /// #[tokio::main]
    /// async fn main() -> Result<(), es_inspect::InspectError> {
    ///     let store = connect().await; // your store
    ///     es_inspect::Inspector::new(store)
    ///         .aggregate::<User>()
    ///         .run_cli(std::env::args_os())
    ///         .await
    /// }
    /// ```
    pub async fn run_cli<I, T>(self, args: I) -> Result<(), InspectError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::parse_from(args);
        let mut out = std::io::stdout();
        self.run_command(cli.command, &mut out).await
    }

    /// Runs one command, printing to `out`.
    pub async fn run_command(
        self,
        command: Command,
        out: &mut (dyn Write + Send),
    ) -> Result<(), InspectError> {
        match command {
            Command::Categories => {
                for category in self.categories().await? {
                    let mark = if category.replayable {
                        ""
                    } else {
                        "  (no aggregate type registered)"
                    };
                    line(
                        out,
                        format_args!("{:<24} {:>10} events{mark}", category.name, category.events),
                    )?;
                }
            }
            Command::Aggregates {
                category,
                after,
                limit,
            } => {
                let page = self.aggregates(&category, after.as_deref(), limit).await?;
                for id in &page.ids {
                    line(out, format_args!("{id}"))?;
                }
                if let Some(next) = page.next {
                    line(out, format_args!("(more: --after {next:?})"))?;
                }
            }
            Command::Events {
                category,
                id,
                from,
                to,
            } => {
                for event in self.events(&category, &id, from, to).await?.events {
                    print_event(out, &event)?;
                }
            }
            Command::Replay {
                category,
                id,
                as_of,
                version,
            } => {
                let until = match (as_of, version) {
                    (Some(time), _) => Until::Time(parse_time(&time)?),
                    (None, Some(version)) => Until::Version(version),
                    (None, None) => Until::Latest,
                };
                let replay = self.replay(&category, &id, until).await?;
                if replay.replayable {
                    line(out, format_args!("initial state"))?;
                    print_state(out, &replay.initial, &[])?;
                }
                for step in &replay.steps {
                    print_event(out, &step.event)?;
                    if replay.replayable {
                        print_state(out, &step.state, &step.changed)?;
                    }
                }
                if !replay.replayable {
                    line(
                        out,
                        format_args!(
                            "(no aggregate type is registered for `{category}`: events only)"
                        ),
                    )?;
                }
            }
            Command::Tail { category, limit } => {
                let events = self.tail(&category, None).await?;
                let mut events = std::pin::pin!(events.take(limit.unwrap_or(usize::MAX)));
                while let Some(event) = events.next().await {
                    let event = event?;
                    line(out, format_args!("{}", event.id))?;
                    print_event(out, &event.event)?;
                    out.flush()?;
                }
            }
            Command::Projections => {
                for projection in self.projection_views().await? {
                    for category in &projection.categories {
                        let lag = category
                            .lag
                            .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string());
                        line(
                            out,
                            format_args!(
                                "{:<20} {:<16} lag {lag:<8} pending {:<6} dead letters {}",
                                projection.name,
                                category.category,
                                category.pending,
                                category.dead_letters
                            ),
                        )?;
                    }
                }
            }
            Command::DeadLetters { projection } => {
                for letter in self.dead_letters(&projection).await?.dead_letters {
                    line(
                        out,
                        format_args!(
                            "{} {} {} after {} attempt(s): {}",
                            letter.category,
                            letter.position,
                            letter.event_type,
                            letter.attempts,
                            letter.error
                        ),
                    )?;
                }
            }
            Command::Redrive { projection } => {
                let report = self.redrive(&projection).await?;
                line(out, format_args!("re-driven: {}", report.redriven))?;
                for failing in report.still_failing {
                    line(
                        out,
                        format_args!(
                            "still failing: {} {}: {}",
                            failing.category, failing.position, failing.error
                        ),
                    )?;
                }
            }
            Command::Serve { addr } => {
                let bound = self.bind(addr).await?;
                line(
                    out,
                    format_args!("inspector at http://{}/", bound.local_addr()),
                )?;
                out.flush()?;
                bound
                    .run(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

fn line(out: &mut (dyn Write + Send), text: std::fmt::Arguments<'_>) -> Result<(), InspectError> {
    Ok(writeln!(out, "{text}")?)
}

/// `v2  2026-12-02T06:31:07.123Z  EmailUpdated  email="duffy@acme.test"`, then its
/// metadata if it has any.
fn print_event(out: &mut (dyn Write + Send), event: &EventView) -> Result<(), InspectError> {
    let fields: Vec<String> = event
        .fields
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    line(
        out,
        format_args!(
            "v{:<4} {}  {}  {}",
            event.version,
            event.time,
            event.event_type,
            fields.join(" ")
        ),
    )?;
    let meta = &event.metadata;
    let mut parts: Vec<String> = Vec::new();
    if let Some(id) = &meta.correlation_id {
        parts.push(format!("correlation_id={id:?}"));
    }
    if let Some(id) = &meta.causation_id {
        parts.push(format!("causation_id={id:?}"));
    }
    parts.extend(meta.extra.iter().map(|(k, v)| format!("{k}={v:?}")));
    if !parts.is_empty() {
        line(out, format_args!("      metadata: {}", parts.join(" ")))?;
    }
    Ok(())
}

/// The state's fields, one per line, `*` before those in `changed`.
fn print_state(
    out: &mut (dyn Write + Send),
    state: &Pairs,
    changed: &[String],
) -> Result<(), InspectError> {
    for (name, value) in state {
        let mark = if changed.contains(name) { '*' } else { ' ' };
        line(out, format_args!("    {mark} {name} = {value:?}"))?;
    }
    Ok(())
}
