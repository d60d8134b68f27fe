//! The chaos campaign's driver (`bench/chaos.sh` runs it; docs/chaos.md says what it
//! does): `chaos run` carries out one seeded run of one fault and prints its outcome as a
//! JSON line; `chaos table` turns a file of those lines into the table per fault;
//! `chaos sweep` removes what a run that died left under its directory.

mod fault;
mod fleet;
mod run;
mod sample;
mod table;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

const USAGE: &str = "usage: chaos run --fault <name> --seed <u64> --dir <dir> --bin <meshdrain> \
[--volumes 2] [--size-mib 64] [--seed-mib 24] [--rate 4M] [--deadline-s 60]\n       chaos table <results.jsonl>\n       chaos sweep <dir>\n       chaos faults";

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdout = std::io::stdout().lock();
    match args.first().map(String::as_str) {
        Some("run") => {
            let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
            let need = |name: &str| flag(name).with_context(|| format!("{name} is missing\n{USAGE}"));
            let num = |name: &str, default: u64| -> anyhow::Result<u64> {
                flag(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v}: not a number")))
            };
            anyhow::ensure!(
                nix::unistd::geteuid().is_root(),
                "the campaign builds namespaces, loop devices and mounts: run it as root"
            );
            let fault = fault::Fault::parse(&need("--fault")?)?;
            let seed: u64 = need("--seed")?.parse().context("--seed: not a u64")?;
            let settings = run::Settings {
                bin: PathBuf::from(need("--bin")?),
                dir: PathBuf::from(need("--dir")?),
                volumes: num("--volumes", 2)? as usize,
                size_mib: num("--size-mib", 64)?,
                seed_mib: num("--seed-mib", 24)? as usize,
                rate: flag("--rate").unwrap_or_else(|| "4M".to_owned()),
                deadline: Duration::from_secs(num("--deadline-s", 60)?),
            };
            std::fs::create_dir_all(&settings.dir)?;
            // Our namespaces are named md<pid>-...: the script cleans up after a driver that
            // died by this file.
            let mut pid_file = settings.dir.clone().into_os_string();
            pid_file.push(".pid");
            std::fs::write(&pid_file, std::process::id().to_string())?;
            let out = run::run(&settings, fault, seed);
            writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("table") => {
            let path = args.get(1).context(USAGE)?;
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            let outcomes: Vec<run::Outcome> =
                text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
            write!(stdout, "{}", table::render(&outcomes))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("sweep") => {
            fleet::sweep(&PathBuf::from(args.get(1).context(USAGE)?));
            Ok(ExitCode::SUCCESS)
        }
        Some("faults") => {
            let names: Vec<&str> = fault::ALL.iter().map(|f| f.name()).collect();
            writeln!(stdout, "{}", names.join(","))?;
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}
