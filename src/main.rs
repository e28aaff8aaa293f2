//! Entry point: parse arguments, run, map the result to an exit code.

use clap::Parser;
use foobar_infra::{cli::Cli, exit_code, output::Printer, run};

fn main() {
    let cli = Cli::parse();
    // This binary serves ssh's ProxyCommand (`ssh-connect`) for its own connections.
    foobar_infra::remote::connector::enable();
    let printer = std::sync::Arc::new(Printer::new(&cli.global));
    let result = run(&cli, &printer);
    printer.finish_all();
    if let Err(e) = &result {
        printer.error(format!("{e:#}"));
    }
    std::process::exit(exit_code(&result));
}
