//! The `orderstream` command line: parse, load the configuration, call the library, map errors
//! to exit codes (0 success, 1 runtime failure, 2 usage or configuration error).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use orderstream::metrics::Metrics;
use orderstream::shutdown::Shutdown;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the orders table with its ten seed orders, and the topics (idempotent).
    Init,
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
    /// Show the monitoring points of every stage.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; RUST_LOG refines them. PostgreSQL's NOTICEs ("already exists,
    // skipping"), librdkafka's own retry chatter and delta-rs's per-request lines are not worth a line
    // each.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,tokio_postgres=warn,rdkafka=off,librdkafka=off,deltalake_core=warn,deltalake_aws=warn,\
             buoyant_kernel=warn,buoyant_kernel_engine=warn,object_store=warn,aws_config=warn",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderstream: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The signal handlers and the metrics endpoint every long-running command has.
async fn serve(cfg: &Config) -> Result<(Arc<Metrics>, Shutdown), Error> {
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(|e| Error::Storage(format!("cannot handle signals: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    orderstream::http::start(cfg.metrics.port, metrics.clone(), shutdown.clone()).await?;
    Ok((metrics, shutdown))
}

fn run(cli: Cli) -> Result<(), Error> {
    let mut cfg = match cli.command {
        Command::Status { .. } | Command::Vacuum { .. } => Config::load_to_read(&cli.config)?,
        _ => Config::load(&cli.config)?,
    };
    if let Command::Consume { from_beginning: true } | Command::Run { from_beginning: true } = cli.command {
        cfg.streaming.from_beginning = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Storage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        match cli.command {
            Command::Init => {
                let report = orderstream::init::init(&cfg).await?;
                print!("{report}");
                Ok(())
            }
            Command::Produce => {
                let (metrics, shutdown) = serve(&cfg).await?;
                orderstream::producer::produce(&cfg, metrics, shutdown).await
            }
            Command::Consume { .. } => {
                let (metrics, shutdown) = serve(&cfg).await?;
                let cfg = cfg.clone();
                tokio::task::spawn_blocking(move || orderstream::sink::consume(&cfg, metrics, shutdown))
                    .await
                    .map_err(|e| Error::Storage(format!("the consumer thread failed: {e}")))?
            }
            Command::Run { .. } => {
                let (metrics, shutdown) = serve(&cfg).await?;
                orderstream::pipeline::run(&cfg, metrics, shutdown).await
            }
            Command::Vacuum { dry_run } => {
                if cfg.datalake.format != orderstream::config::LakeFormat::Delta {
                    return Err(Error::Setup(
                        "vacuum needs datalake.format: delta (a Parquet lake has no log saying which files are live)"
                            .into(),
                    ));
                }
                let cfg = cfg.clone();
                let files = tokio::task::spawn_blocking(move || {
                    orderstream::sink::delta::vacuum(&cfg.datalake, cfg.datalake.retention, dry_run)
                })
                .await
                .map_err(|e| Error::Storage(format!("the vacuum thread failed: {e}")))??;
                let verb = if dry_run { "would delete" } else { "deleted" };
                for f in &files {
                    println!("{f}");
                }
                eprintln!("{verb} {} files", files.len());
                Ok(())
            }
            Command::Status { json } => {
                let status = orderstream::status::status(&cfg).await;
                if json {
                    let text = serde_json::to_string_pretty(&status)
                        .map_err(|e| Error::Storage(format!("cannot encode the status: {e}")))?;
                    println!("{text}");
                } else {
                    print!("{}", status.render());
                }
                Ok(())
            }
        }
    })
}
