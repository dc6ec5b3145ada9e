//! `weft up --prometheus`: Prometheus (when installed) scraping every sidecar and the control
//! plane, with the project's alert rules.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::mesh::{Children, Instance, Ports};

/// The alert rules, written beside the Prometheus config with `--prometheus`.
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");

/// Starts Prometheus beside the mesh; `None` (and a message) when it is not installed.
pub fn start(
    dir: &Path,
    ports: &mut Ports,
    instances: &[Instance],
    cp_admin: SocketAddr,
    children: &mut Children,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(bin) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    }) else {
        eprintln!("prometheus is not installed (apt-get install prometheus); going on without it");
        return Ok(None);
    };
    let pdir = dir.join("prometheus");
    std::fs::create_dir_all(&pdir)?;
    std::fs::write(pdir.join("alerts.yml"), ALERTS)?;
    let mut targets = String::new();
    for i in instances {
        targets.push_str(&format!(
            "      - targets: [\"{}\"]\n        labels: {{sidecar: {}}}\n",
            i.admin, i.name
        ));
    }
    std::fs::write(
        pdir.join("prometheus.yml"),
        format!(
            "# Written by `weft up`.\nglobal: {{scrape_interval: 5s, evaluation_interval: 5s}}\n\
             rule_files: [alerts.yml]\nscrape_configs:\n  - job_name: weft-local\n    static_configs:\n{targets}\
             \x20 - job_name: weft-control-plane\n    static_configs:\n      - targets: [\"{cp_admin}\"]\n"
        ),
    )?;
    let listen = ports.next()?;
    children.spawn(
        "prometheus",
        Command::new(bin)
            .arg(format!(
                "--config.file={}",
                pdir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                pdir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}")),
        &pdir.join("prometheus.log"),
    )?;
    Ok(Some(listen))
}
