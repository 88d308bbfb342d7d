//! The `hospes` command.

mod conformance;
mod demo;
mod img;
mod monitor;
mod net;
mod run;
mod screen;
mod window;

use clap::{Parser, Subcommand};
use hospes_jit::Tier;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hospes",
    version,
    about = "A full-system x86 PC emulator. With no arguments, runs the built-in demo guest."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run SingleStepTests-format CPU test vectors (.json or .json.gz files in a directory).
    Conformance {
        /// Directory holding the vector files.
        #[arg(long, required_unless_present = "list_differences")]
        suite: Option<PathBuf>,
        #[command(flatten)]
        tier: run::TierArg,
        /// Only opcode files whose name starts with this (e.g. `F6` or `D3.4`).
        #[arg(long)]
        filter: Option<String>,
        /// Print up to N failing vectors per opcode in full.
        #[arg(long, default_value_t = 0, value_name = "N")]
        show_failures: usize,
        /// Print the documented 80286-versus-P6 differences that are masked or skipped.
        #[arg(long)]
        list_differences: bool,
    },
    /// Run a PC: boot a kernel, a disk, a CD or a floppy.
    Run(Box<run::RunArgs>),
    /// Run the built-in demo guest (the same as running hospes with no arguments).
    Demo(DemoArgs),
    /// Replay a recording made with `run --record`, checking every state digest.
    Replay(run::ReplayArgs),
    /// Disk images: info, create, convert, check, import-ova.
    #[command(subcommand)]
    Img(img::ImgCommand),
}

#[derive(clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    screen: screen::DisplayArgs,
    #[command(flatten)]
    tier: run::TierArg,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(run::qemu_aliases(std::env::args())) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line, not clap's multi-line usage dump.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("hospes: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None => demo::run(
            &screen::DisplayArgs {
                display: None,
                screenshot_on_exit: None,
                screen_text_on_exit: None,
            },
            Tier::Auto,
        ),
        Some(Command::Demo(args)) => demo::run(&args.screen, args.tier.tier),
        Some(Command::Run(args)) => match run::run(*args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code as u8),
            Err(e) => Err(e),
        },
        Some(Command::Replay(args)) => match run::replay(args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code as u8),
            Err(e) => Err(e),
        },
        Some(Command::Img(command)) => match img::run(command) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Some(Command::Conformance {
            suite,
            tier,
            filter,
            show_failures,
            list_differences,
        }) => {
            if list_differences {
                print!("{}", conformance::differences_text());
                Ok(())
            } else {
                run_conformance(suite.unwrap_or_default(), tier.tier, filter, show_failures)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hospes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_conformance(
    suite: PathBuf,
    tier: Tier,
    filter: Option<String>,
    show_failures: usize,
) -> Result<(), String> {
    let opts = conformance::Options {
        tier,
        filter,
        show_failures,
    };
    let report = conformance::run_suite(&suite, &opts)?;
    print!("{}", conformance::format_report(&report));
    Ok(())
}
