//! The `orderstream` command line: parse, load the configuration, call the library, map errors
//! to exit codes (0 success or a clean stop, 1 runtime failure, 2 usage or configuration error,
//! 3 stopped before the in-flight batch was done: the next start redoes it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use orderstream::logs::LogFormat;
use orderstream::metrics::Metrics;
use orderstream::shutdown::{EXIT_ABANDONED, Shutdown};
use orderstream::{Config, Error};

/// jemalloc for the whole process, librdkafka's C allocations included (see Cargo.toml).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exactly-once CDC from PostgreSQL through Kafka into a date-partitioned Parquet lake.
#[derive(Parser)]
#[command(name = "orderstream", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "configs/orders_stream.yml")]
    config: PathBuf,
    /// Log lines as `text` (default) or `json` (one object per line, for log shippers); also
    /// ORDERSTREAM_LOG_FORMAT.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the orders table, its publication and the topics (idempotent). The ten demo
    /// orders (101-110) go only into a table this run creates, unless --seed-orders.
    Init {
        /// Also insert the ten demo orders into a table that already exists (never twice).
        #[arg(long)]
        seed_orders: bool,
    },
    /// Check the configuration and everything the pipeline needs (wal_level, REPLICATION,
    /// publication rights, slot, topics, folders) without creating anything; exit 0 or 1.
    Check,
    /// Capture new orders from PostgreSQL and publish them to Kafka.
    Produce,
    /// Read the topic and write the date-partitioned Parquet lake.
    Consume {
        /// Read a partition from its first offset where the checkpoint cannot be used: none
        /// while the lake already holds files, or one below the partition's start.
        #[arg(long)]
        from_beginning: bool,
    },
    /// Producer and consumer together in one process.
    Run {
        /// As `consume --from-beginning`.
        #[arg(long)]
        from_beginning: bool,
    },
    /// Delete the data files of a Delta lake that no commit references any more (replaced, or
    /// left by a batch that crashed before its commit), once older than
    /// `datalake.retention_hours`.
    Vacuum {
        /// Only list them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewrite the small files of a Delta lake's date partitions into files of about
    /// `datalake.target_file_size`, one commit per date; readers never see a row twice or miss
    /// one. The consumer also does it by itself (`datalake.compact_min_files`).
    Compact {
        /// Only this date partition (YYYY-MM-DD).
        #[arg(long)]
        date: Option<String>,
    },
    /// Show the monitoring points of every stage, each read within 2.5 s; exit 0 only when
    /// every part answered and the producer and the consumer run, else 1 naming the others.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.log_format {
        Some(f) => f.clone(),
        None => std::env::var("ORDERSTREAM_LOG_FORMAT").unwrap_or_default(),
    };
    let format = match format.as_str() {
        "" => LogFormat::Text,
        f => match f.parse() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("orderstream: {e} (--log-format or ORDERSTREAM_LOG_FORMAT)");
                return ExitCode::from(2);
            }
        },
    };
    orderstream::logs::init(format);
    let shutdown = Shutdown::new();
    match run(cli, &shutdown) {
        Ok(()) if shutdown.abandoned() => {
            eprintln!("orderstream: stopped before the in-flight batch was done; the next start redoes it");
            ExitCode::from(EXIT_ABANDONED)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderstream: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The signal handlers and the metrics endpoint every long-running command has.
async fn serve(cfg: &Config, shutdown: &Shutdown) -> Result<(Arc<Metrics>, Shutdown), Error> {
    shutdown.on_signals().map_err(|e| Error::Internal(format!("cannot handle signals: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    orderstream::http::start(cfg.metrics.listen, metrics.clone(), shutdown.clone()).await?;
    Ok((metrics, shutdown.clone()))
}

/// `vacuum`: the files both tables no longer need, listed, and deleted unless `dry_run`.
async fn vacuum(cfg: &Config, dry_run: bool) -> Result<(), Error> {
    if cfg.datalake.format != orderstream::config::LakeFormat::Delta {
        return Err(Error::Setup(
            "vacuum needs datalake.format: delta (a Parquet lake has no log saying which files are live)"
                .into(),
        ));
    }
    let cfg = cfg.clone();
    let files = tokio::task::spawn_blocking(move || {
        orderstream::sink::compact::vacuum(&cfg.datalake, cfg.datalake.retention, dry_run)
    })
    .await
    .map_err(|e| Error::Internal(format!("the vacuum thread failed: {e}")))??;
    for f in &files {
        println!("{f}");
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    eprintln!("{verb} {} files", files.len());
    Ok(())
}

/// `compact`: every date partition with small files, or `date` only.
async fn compact(cfg: &Config, date: Option<String>) -> Result<(), Error> {
    if cfg.datalake.format != orderstream::config::LakeFormat::Delta {
        return Err(Error::Setup(
            "compact needs datalake.format: delta (a Parquet lake cannot be rewritten atomically for its \
             readers)"
                .into(),
        ));
    }
    if let Some(d) = &date
        && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()
    {
        return Err(Error::Config(orderstream::error::ConfigError(format!(
            "compact --date: expected a date YYYY-MM-DD, got `{d}`"
        ))));
    }
    let cfg = cfg.clone();
    let done = tokio::task::spawn_blocking(move || {
        orderstream::sink::compact::compact(&cfg.datalake, date.as_deref())
    })
    .await
    .map_err(|e| Error::Internal(format!("the compaction thread failed: {e}")))??;
    for c in &done {
        println!("{c}");
    }
    eprintln!("{} date partitions compacted", done.len());
    Ok(())
}

/// `status`: every stage, as text or JSON; exit 1 when a part does not answer or run.
async fn status(cfg: &Config, json: bool) -> Result<(), Error> {
    let status = orderstream::status::status(cfg).await;
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| Error::Internal(format!("cannot encode the status: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", status.render());
    }
    let failures = status.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "status: not answering or not running: {} (see each part's error)",
            failures.join(", ")
        )))
    }
}

fn run(cli: Cli, shutdown: &Shutdown) -> Result<(), Error> {
    let mut cfg = Config::load(&cli.config)?;
    if !matches!(
        cli.command,
        Command::Status { .. } | Command::Check | Command::Vacuum { .. } | Command::Compact { .. }
    ) {
        cfg.create_folders()?;
    }
    if let Command::Consume { from_beginning: true } | Command::Run { from_beginning: true } = cli.command {
        cfg.streaming.from_beginning = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init { seed_orders } => {
                let report = orderstream::init::init(&cfg, seed_orders).await?;
                print!("{report}");
                Ok(())
            }
            Command::Check => {
                let report = orderstream::check::check(&cfg).await;
                print!("{report}");
                let failed = report.checks.iter().filter(|c| !c.ok).count();
                if failed == 0 {
                    Ok(())
                } else {
                    Err(Error::Setup(format!("check: {failed} of {} checks failed", report.checks.len())))
                }
            }
            Command::Produce => {
                let (metrics, shutdown) = serve(&cfg, shutdown).await?;
                orderstream::producer::produce(&cfg, metrics, shutdown).await
            }
            Command::Consume { .. } => {
                let (metrics, shutdown) = serve(&cfg, shutdown).await?;
                let cfg = cfg.clone();
                tokio::task::spawn_blocking(move || orderstream::sink::consume(&cfg, metrics, shutdown))
                    .await
                    .map_err(|e| Error::Internal(format!("the consumer thread failed: {e}")))?
            }
            Command::Run { .. } => {
                let (metrics, shutdown) = serve(&cfg, shutdown).await?;
                orderstream::pipeline::run(&cfg, metrics, shutdown).await
            }
            Command::Vacuum { dry_run } => vacuum(&cfg, dry_run).await,
            Command::Compact { date } => compact(&cfg, date).await,
            Command::Status { json } => status(&cfg, json).await,
        }
    });
    // A blocking call a stop left behind (a broker that does not answer) is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
