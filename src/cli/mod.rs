//! The command line: `serve`, `check-config`, and the admin verbs (a client of the admin API,
//! in `admin.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

mod admin;

#[derive(Debug, Parser)]
#[command(
    name = "tokengate",
    version,
    about = "An authenticating reverse proxy for HTTP APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    admin: admin::Global,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy and the admin listener.
    Serve {
        /// The config file.
        #[arg(short, long, default_value = "config/tokengate.toml")]
        config: PathBuf,
    },
    /// Check a config file and list every problem in it.
    CheckConfig {
        #[arg(short, long, default_value = "config/tokengate.toml")]
        config: PathBuf,
    },
    #[command(flatten)]
    Admin(admin::AdminCommand),
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path, std::env::vars()).map_err(|errors| {
        eprintln!("{}: {} problem(s):", path.display(), errors.0.len());
        for e in &errors.0 {
            eprintln!("  - {e}");
        }
        ExitCode::from(2)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::logging::init(&config.log_level);
            match crate::server::run(config, None) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tokengate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} routes)",
                    config.display(),
                    c.routes.iter().count()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Admin(command) => admin::run(command, &cli.admin),
    }
}
